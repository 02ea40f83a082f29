//! Keys born in a PKCS#11 token (SoftHSM2, made at test time), end to end with the real binary:
//! `fieldlink keys generate` → `keys csr` → signed by a CA with openssl → `keys install-cert`;
//! then the uplink's mutual TLS to a real mosquitto (`require_certificate true`) and the broker's
//! mutual-TLS listener, both signing with the token's key; `check-config`'s exit 64 for each
//! token problem; `install-cert` refusing what does not fit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::{
    Mosquitto, RabbitMq, SOFTHSM_MODULE, SoftHsm, SoftTpm, Subscriber, free_port, wait_for_port,
};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

/// The token a bench's keys are born in.
enum Token {
    Hsm(SoftHsm),
    Tpm(SoftTpm),
}

impl Token {
    fn command(&self, program: &str) -> Command {
        match self {
            Self::Hsm(hsm) => hsm.command(program),
            Self::Tpm(tpm) => tpm.command(program),
        }
    }

    fn keys_section(&self, ca: &Path) -> String {
        match self {
            Self::Hsm(hsm) => hsm.keys_section(Some(ca)),
            Self::Tpm(tpm) => tpm.keys_section(Some(ca)),
        }
    }

    /// The SoftHSM2 token, for the tests that use its files (PIN, token directory).
    fn hsm(&self) -> &SoftHsm {
        match self {
            Self::Hsm(hsm) => hsm,
            Self::Tpm(_) => panic!("this test needs SoftHSM2's files"),
        }
    }
}

/// A token, a directory, and a gateway CA made with openssl (the factory's CA).
struct Bench {
    token: Token,
    dir: tempfile::TempDir,
    ca: PathBuf,
    ca_key: PathBuf,
}

impl Bench {
    fn new() -> Self {
        Self::on(Token::Hsm(SoftHsm::new("gw-token")))
    }

    /// The same bench with the keys in a software TPM.
    fn with_tpm() -> Self {
        Self::on(Token::Tpm(SoftTpm::new("gw-token")))
    }

    fn on(token: Token) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = openssl_ca(dir.path(), "gw-ca");
        let bench = Self {
            token,
            dir,
            ca,
            ca_key,
        };
        write(bench.dir.path(), "keys.toml", &bench.keys_section());
        bench
    }

    fn keys_section(&self) -> String {
        self.token.keys_section(&self.ca)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `fieldlink --config CONFIG args…` with the token reachable.
    fn fieldlink(&self, config: &str, args: &[&str]) -> Output {
        self.token
            .command(BIN)
            .arg("--config")
            .arg(self.path(config))
            .args(args)
            .output()
            .unwrap()
    }

    /// generate → csr → openssl signs → install-cert --out NAME.pem; returns the certificate.
    fn provision(&self, label: &str, subject: &str, san: &str) -> PathBuf {
        let generated = ok(self.fieldlink(
            "keys.toml",
            &["keys", "generate", "--label", label, "--json"],
        ));
        let key: serde_json::Value = serde_json::from_str(&generated).unwrap();
        assert_eq!(key["sensitive"], true, "{generated}");
        assert_eq!(key["extractable"], false, "{generated}");
        let csr = self.path(&format!("{label}.csr"));
        ok(self.fieldlink(
            "keys.toml",
            &[
                "keys",
                "csr",
                "--label",
                label,
                "--subject",
                subject,
                "--san",
                san,
                "--out",
                csr.to_str().unwrap(),
            ],
        ));
        let issued = self.sign(&csr, &format!("{label}-issued.pem"), None);
        let installed = self.path(&format!("{label}.pem"));
        let out = ok(self.fieldlink(
            "keys.toml",
            &[
                "keys",
                "install-cert",
                "--label",
                label,
                issued.to_str().unwrap(),
                "--out",
                installed.to_str().unwrap(),
                "--json",
            ],
        ));
        assert!(out.contains("\"installed\":true"), "{out}");
        installed
    }

    /// The gateway CA signs `csr` (openssl x509 -req), optionally at another time (faketime).
    fn sign(&self, csr: &Path, name: &str, at: Option<&str>) -> PathBuf {
        sign_with(self.dir.path(), csr, &self.ca, &self.ca_key, name, at)
    }

    fn key_uri(label: &str) -> String {
        format!("pkcs11:token=gw-token;object={label}")
    }
}

/// A cloud mosquitto requiring a client certificate from the gateway CA, an observer of
/// `cloud/#` on its plain port, and `gateway.toml` with the uplink's key in the token.
struct Cloud {
    broker: Option<Mosquitto>,
    extra: String,
    /// What the observers before the last restart saw.
    observed: Vec<String>,
    observer: Subscriber,
    local: u16,
}

impl Cloud {
    fn new(bench: &Bench) -> Self {
        let client_cert = bench.provision("uplink", "gw-7", "gw-7.example");
        let cloud_ca = TestCa::new("cloud CA");
        let server = cloud_ca.issue("cloud", &["localhost"]);
        let cloud_ca_file = write(bench.dir.path(), "cloud-ca.pem", cloud_ca.pem());
        let server_cert = write(bench.dir.path(), "server.pem", &server.cert_pem);
        let server_key = write(bench.dir.path(), "server.key", &server.key_pem);
        let tls = free_port();
        // The cloud trusts the gateway CA only, and names the client by its certificate.
        let extra = format!(
            "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nuse_identity_as_username true\n",
            bench.ca.display(),
            server_cert.display(),
            server_key.display()
        );
        let broker = Mosquitto::start(&extra);
        wait_for_port(([127, 0, 0, 1], tls).into(), Duration::from_secs(10));
        let observer = Self::observe(&broker);
        let local = free_port();
        write(
            bench.dir.path(),
            "gateway.toml",
            &format!(
                "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
                 [[broker.listeners]]\nport = {local}\n\
                 [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\
                 [uplink]\nhost = \"localhost\"\nport = {tls}\nclient_id = \"gw-7\"\n\
                 tls = \"mutual\"\nca_file = \"{cloud_ca}\"\ncert_file = \"{cert}\"\n\
                 key_uri = \"{uri}\"\ntopic_prefix = \"cloud/\"\n\
                 reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n{keys}",
                data = bench.path("data").display(),
                cloud_ca = cloud_ca_file.display(),
                cert = client_cert.display(),
                uri = Bench::key_uri("uplink"),
                keys = bench.keys_section(),
            ),
        );
        Self {
            broker: Some(broker),
            extra,
            observed: Vec::new(),
            observer,
            local,
        }
    }

    /// A subscriber to `cloud/#` on the cloud's plain port, returned once subscribed.
    fn observe(broker: &Mosquitto) -> Subscriber {
        let port = broker.addr().port().to_string();
        Subscriber::start(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "cloud/#",
            "-q",
            "1",
            "-v",
            "-i",
            "observer",
        ])
    }

    fn log(&self) -> String {
        self.broker.as_ref().map(Mosquitto::log).unwrap_or_default()
    }

    /// Publishes `payload` on the gateway's `site/boiler` until the cloud has it.
    fn deliver(&self, bench: &Bench, payload: &str) {
        let start = Instant::now();
        loop {
            let status = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &self.local.to_string()])
                .args(["-t", "site/boiler", "-q", "1", "-m", payload])
                .status()
                .unwrap();
            assert!(status.success());
            if self.has(payload) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{payload} never reached the cloud; gateway log:\n{}\ncloud log:\n{}",
                gateway_log(bench),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn has(&self, payload: &str) -> bool {
        let line = format!("cloud/site/boiler {payload}");
        self.observed.contains(&line) || self.observer.received().contains(&line)
    }

    /// Stops the cloud and starts it again on the same ports: the uplink has to reconnect.
    fn restart(&mut self) {
        let old = self.broker.take().unwrap();
        let port = old.addr().port();
        old.stop();
        let broker = Mosquitto::start_on(port, &self.extra);
        // The cloud keeps no sessions: a new observer, subscribed before anything is sent.
        let new = Self::observe(&broker);
        let old = std::mem::replace(&mut self.observer, new);
        self.observed.extend(old.received());
        self.broker = Some(broker);
    }
}

#[test]
fn a_key_born_in_the_token_carries_the_uplink_over_mutual_tls() {
    let bench = Bench::new();
    let cloud = Cloud::new(&bench);
    let checked = bench.fieldlink("gateway.toml", &["check-config"]);
    assert!(checked.status.success(), "{}", text(&checked));
    let gateway = run_gateway(&bench, "gateway.toml", cloud.local);
    cloud.deliver(&bench, "71.5");
    // The cloud saw the token key's certificate: its CN became the username.
    assert!(cloud.log().contains("u'gw-7'"), "{}", cloud.log());
    stop(gateway);
}

/// The same flow with the key in a TPM 2.0 (swtpm + tpm2-abrmd + tpm2-pkcs11): the code is the
/// same cryptoki code; only the module and its environment differ.
#[test]
fn a_key_born_in_a_tpm_carries_the_uplink_over_mutual_tls() {
    let bench = Bench::with_tpm();
    let cloud = Cloud::new(&bench);
    let listed = ok(bench.fieldlink("keys.toml", &["keys", "list"]));
    assert!(listed.contains("TPM"), "the token is the TPM's: {listed}");
    let checked = bench.fieldlink("gateway.toml", &["check-config"]);
    assert!(checked.status.success(), "{}", text(&checked));
    let gateway = run_gateway(&bench, "gateway.toml", cloud.local);
    cloud.deliver(&bench, "72.5");
    assert!(cloud.log().contains("u'gw-7'"), "{}", cloud.log());
    stop(gateway);
}

/// The uplink's JWTs signed by a key born in the token, checked by RabbitMQ's OAuth 2.0 backend
/// against the public key read from the token's own CSR.
#[test]
fn jwts_signed_by_a_token_key_log_the_uplink_in_to_rabbitmq() {
    const USER: &str = "gw-7";
    const PASSWORD: &str = "observer-s3cret";
    let bench = Bench::new();
    ok(bench.fieldlink("keys.toml", &["keys", "generate", "--label", "jwt"]));
    let csr = bench.path("jwt.csr");
    ok(bench.fieldlink(
        "keys.toml",
        &[
            "keys",
            "csr",
            "--label",
            "jwt",
            "--subject",
            USER,
            "--out",
            csr.to_str().unwrap(),
        ],
    ));
    let public = Command::new("openssl")
        .args(["req", "-in", csr.to_str().unwrap(), "-pubkey", "-noout"])
        .output()
        .unwrap();
    assert!(public.status.success(), "{}", text(&public));

    let ca = TestCa::new("rabbit CA");
    let server = ca.issue("rabbit", &["localhost"]);
    let mut rabbit = RabbitMq::new();
    let ca_file = rabbit.file("ca.pem", ca.pem());
    let cert = rabbit.file("server.pem", &server.cert_pem);
    let key = rabbit.file("server.key", &server.key_pem);
    let public = rabbit.file("token.pub.pem", &String::from_utf8(public.stdout).unwrap());
    let tls_port = rabbit.tls_port;
    rabbit.start(&format!(
        "mqtt.listeners.ssl.default = 127.0.0.1:{tls_port}\n\
         ssl_options.cacertfile = {ca}\nssl_options.certfile = {cert}\n\
         ssl_options.keyfile = {key}\n\
         default_user = {USER}\ndefault_pass = {PASSWORD}\n\
         auth_backends.1 = rabbit_auth_backend_oauth2\nauth_backends.2 = internal\n\
         auth_oauth2.resource_server_id = fieldlink\nauth_oauth2.default_key = gw-key\n\
         auth_oauth2.signing_keys.gw-key = {public}\n",
        ca = ca_file.display(),
        cert = cert.display(),
        key = key.display(),
        public = public.display(),
    ));
    let observer = Subscriber::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &rabbit.mqtt_port.to_string(),
        "-u",
        USER,
        "-P",
        PASSWORD,
        "-t",
        "cloud/#",
        "-q",
        "1",
        "-v",
        "-i",
        "observer",
    ]);
    let local = free_port();
    write(
        bench.dir.path(),
        "jwt.toml",
        &format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
             [[broker.listeners]]\nport = {local}\n\
             [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\
             [uplink]\nhost = \"localhost\"\nport = {tls_port}\nclient_id = \"{USER}\"\n\
             tls = \"server-auth\"\nca_file = \"{ca}\"\ntopic_prefix = \"cloud/\"\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
             [uplink.jwt]\nkey_uri = \"{uri}\"\naudience = \"fieldlink\"\nkey_id = \"gw-key\"\n\
             claims = {{ scope = [\"fieldlink.read:*/*/*\", \"fieldlink.write:*/*/*\", \
             \"fieldlink.configure:*/*\"] }}\n{keys}",
            data = bench.path("data").display(),
            ca = ca_file.display(),
            uri = Bench::key_uri("jwt"),
            keys = bench.keys_section(),
        ),
    );
    let checked = bench.fieldlink("jwt.toml", &["check-config"]);
    assert!(checked.status.success(), "{}", text(&checked));
    let gateway = run_gateway(&bench, "jwt.toml", local);
    let start = Instant::now();
    loop {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &local.to_string()])
            .args(["-t", "site/boiler", "-q", "1", "-m", "74.5"])
            .status()
            .unwrap();
        assert!(status.success());
        if observer
            .received()
            .contains(&"cloud/site/boiler 74.5".to_owned())
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never delivered; gateway log:\n{}\nrabbit log:\n{}",
            gateway_log(&bench),
            rabbit.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = ok(bench.fieldlink("jwt.toml", &["status"]));
    assert!(status.contains("ES256"), "{status}");
    stop(gateway);
}

/// The PIN as a systemd credential (`LoadCredential=token-pin:/etc/fieldlink/token.pin`): read
/// from `$CREDENTIALS_DIRECTORY`, where systemd puts it mode 0400 (any mode is taken there).
#[test]
fn the_pin_can_come_from_a_systemd_credential() {
    let bench = Bench::new();
    let cloud = Cloud::new(&bench);
    let credentials = bench.path("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let pin = credentials.join("token-pin");
    std::fs::copy(bench.token.hsm().pin_file(), &pin).unwrap();
    set_mode(&pin, 0o400);
    let config = std::fs::read_to_string(bench.path("gateway.toml")).unwrap();
    let pin_line = format!("pin_file = \"{}\"", bench.token.hsm().pin_file().display());
    assert!(config.contains(&pin_line));
    let config = config.replace(&pin_line, "pin_credential = \"token-pin\"");
    write(bench.dir.path(), "credential.toml", &config);

    let without = bench.fieldlink("credential.toml", &["check-config"]);
    assert_eq!(without.status.code(), Some(64), "{}", text(&without));
    assert!(
        text(&without).contains("$CREDENTIALS_DIRECTORY is not set"),
        "{}",
        text(&without)
    );
    let check_with_credentials = || {
        bench
            .token
            .command(BIN)
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .args(["--config", bench.path("credential.toml").to_str().unwrap()])
            .arg("check-config")
            .output()
            .unwrap()
    };
    let with = check_with_credentials();
    assert!(with.status.success(), "{}", text(&with));
    // systemd keeps the credentials directory private: a credential's own mode is not judged
    // (the same mode on a file anywhere else is refused: `core::private_fs`'s tests).
    set_mode(&pin, 0o640);
    let group_readable = check_with_credentials();
    assert!(group_readable.status.success(), "{}", text(&group_readable));
    set_mode(&pin, 0o400);

    let log = std::fs::File::create(bench.path("gateway.log")).unwrap();
    let gateway = bench
        .token
        .command(BIN)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .args([
            "--config",
            bench.path("credential.toml").to_str().unwrap(),
            "run",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_port(
        ([127, 0, 0, 1], cloud.local).into(),
        Duration::from_secs(20),
    );
    cloud.deliver(&bench, "73.5");
    stop(gateway);
}

#[test]
fn the_uplink_is_degraded_while_its_token_is_away_and_recovers_without_a_restart() {
    let bench = Bench::new();
    let mut cloud = Cloud::new(&bench);
    let gateway = run_gateway(&bench, "gateway.toml", cloud.local);
    cloud.deliver(&bench, "before");

    // "Unplugged": SoftHSM2's token directory moved away; the cloud restarts, so the uplink
    // must sign a new handshake.
    let away = bench.path("tokens-away");
    std::fs::rename(bench.token.hsm().token_dir(), &away).unwrap();
    cloud.restart();
    let status = status_until(&bench, |s| {
        s.contains("last error: hardware key unavailable: pkcs11:token=gw-token;object=uplink: ")
    });
    assert!(!status.contains("connected  "), "{status}");
    let publish = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &cloud.local.to_string()])
        .args(["-t", "site/boiler", "-q", "1", "-m", "while-away"])
        .status()
        .unwrap();
    assert!(publish.success(), "the local broker still takes readings");

    // Plugged in again: the queued reading goes out, the gateway never restarted.
    std::fs::rename(&away, bench.token.hsm().token_dir()).unwrap();
    let start = Instant::now();
    while !cloud.has("while-away") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing after the token came back; gateway log:\n{}",
            gateway_log(&bench)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(gateway);
}

/// `fieldlink status` once its text satisfies `ok`; panics after 30 s.
fn status_until(bench: &Bench, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let out = bench.fieldlink("gateway.toml", &["status"]);
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        if ok(&shown) {
            return shown;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "status never got there:\n{shown}\ngateway log:\n{}",
            gateway_log(bench)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_brokers_mutual_tls_listener_serves_its_certificate_from_the_token() {
    broker_listener_serves_from(&Bench::new());
}

#[test]
fn the_brokers_mutual_tls_listener_serves_its_certificate_from_a_tpm() {
    broker_listener_serves_from(&Bench::with_tpm());
}

fn broker_listener_serves_from(bench: &Bench) {
    let broker_cert = bench.provision("broker", "gateway-broker", "localhost");
    let devices = TestCa::new("devices CA");
    let sensor = devices.issue("sensor-1", &[]);
    let devices_ca = write(bench.dir.path(), "devices-ca.pem", devices.pem());
    let sensor_cert = write(bench.dir.path(), "sensor.pem", &sensor.cert_pem);
    let sensor_key = write(bench.dir.path(), "sensor.key", &sensor.key_pem);
    let port = free_port();
    write(
        bench.dir.path(),
        "gateway.toml",
        &format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
             [[broker.listeners]]\nname = \"lan\"\nport = {port}\ntls = \"mutual\"\n\
             cert_file = \"{cert}\"\nkey_uri = \"{uri}\"\nca_file = \"{ca}\"\n{keys}",
            data = bench.path("data").display(),
            cert = broker_cert.display(),
            uri = Bench::key_uri("broker"),
            ca = devices_ca.display(),
            keys = bench.keys_section(),
        ),
    );
    let gateway = run_gateway(bench, "gateway.toml", port);
    let publish = |with_cert: bool| {
        let mut command = Command::new("mosquitto_pub");
        command
            .args(["-h", "localhost", "-p", &port.to_string(), "-i", "sensor-1"])
            .args(["-t", "site/sensor-1/t", "-q", "1", "-m", "20.5"])
            .arg("--cafile")
            .arg(&bench.ca);
        if with_cert {
            command
                .arg("--cert")
                .arg(&sensor_cert)
                .arg("--key")
                .arg(&sensor_key);
        }
        command.output().unwrap()
    };
    let out = publish(true);
    assert!(
        out.status.success(),
        "{}\ngateway log:\n{}",
        text(&out),
        gateway_log(bench)
    );
    // The same listener still requires the device's certificate.
    assert!(!publish(false).status.success());
    stop(gateway);
}

#[test]
fn the_web_ui_serves_https_with_its_key_in_the_token() {
    let bench = Bench::new();
    let cert = bench.provision("web", "gateway-web", "localhost");
    let port = free_port();
    write(
        bench.dir.path(),
        "gateway.toml",
        &format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
             [web]\nport = {port}\ncert_file = \"{cert}\"\nkey_uri = \"{uri}\"\n{keys}",
            data = bench.path("data").display(),
            cert = cert.display(),
            uri = Bench::key_uri("web"),
            keys = bench.keys_section(),
        ),
    );
    let gateway = run_gateway(&bench, "gateway.toml", port);
    // A client that trusts the gateway CA only and checks the name: openssl s_client.
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-CAfile",
        ])
        .arg(&bench.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        client.stdin.as_mut().unwrap(),
        b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let out = client.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
        "{answer}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gateway_log(&bench)
    );
    assert!(
        !bench.path("data/web/key.pem").exists(),
        "no self-signed key was made: the token's key serves"
    );
    stop(gateway);
}

#[test]
fn the_brokers_certificate_is_rotated_without_a_restart_and_a_bad_candidate_is_refused() {
    let bench = Bench::new();
    let served = bench.provision("broker", "gateway-broker", "localhost");
    let devices = TestCa::new("devices CA");
    let sensor = devices.issue("sensor-1", &[]);
    let devices_ca = write(bench.dir.path(), "devices-ca.pem", devices.pem());
    let sensor_cert = write(bench.dir.path(), "sensor.pem", &sensor.cert_pem);
    let sensor_key = write(bench.dir.path(), "sensor.key", &sensor.key_pem);
    let port = free_port();
    write(
        bench.dir.path(),
        "gateway.toml",
        &format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
             [[broker.listeners]]\nname = \"lan\"\nport = {port}\ntls = \"mutual\"\n\
             client_id = \"prefix\"\ncert_file = \"{cert}\"\nkey_uri = \"{uri}\"\nca_file = \"{ca}\"\n{keys}",
            data = bench.path("data").display(),
            cert = served.display(),
            uri = Bench::key_uri("broker"),
            ca = devices_ca.display(),
            keys = bench.keys_section(),
        ),
    );
    let gateway = run_gateway(&bench, "gateway.toml", port);
    let tls_args = |command: &mut Command| {
        command
            .args(["-h", "localhost", "-p", &port.to_string()])
            .arg("--cafile")
            .arg(&bench.ca)
            .arg("--cert")
            .arg(&sensor_cert)
            .arg("--key")
            .arg(&sensor_key);
    };
    // A device subscribed over mutual TLS for the whole test: its session must survive.
    let received = bench.path("received.txt");
    let mut subscriber = Command::new("mosquitto_sub");
    tls_args(&mut subscriber);
    let mut subscriber = subscriber
        .args(["-i", "sensor-1:sub", "-t", "site/#", "-v"])
        .stdout(std::fs::File::create(&received).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let publish = |payload: &str| {
        let mut command = Command::new("mosquitto_pub");
        tls_args(&mut command);
        command
            .args([
                "-i",
                "sensor-1:pub",
                "-t",
                "site/sensor-1/t",
                "-q",
                "1",
                "-m",
                payload,
            ])
            .output()
            .unwrap()
    };
    let serial_served = || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername localhost -CAfile {} \
                 -cert {} -key {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
                bench.ca.display(),
                sensor_cert.display(),
                sensor_key.display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let serial_of = |path: &Path| {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let replace = |candidate: &Path| {
        let temp = bench.path("broker.pem.new");
        std::fs::copy(candidate, &temp).unwrap();
        std::fs::rename(&temp, &served).unwrap();
    };
    assert_eq!(serial_served(), serial_of(&served));
    let first = serial_of(&served);

    // A renewed certificate for the same token key: served from the next handshake.
    let csr = bench.path("renew.csr");
    ok(bench.fieldlink(
        "keys.toml",
        &[
            "keys",
            "csr",
            "--label",
            "broker",
            "--subject",
            "gateway-broker",
            "--san",
            "localhost",
            "--out",
            csr.to_str().unwrap(),
        ],
    ));
    let renewed = bench.sign(&csr, "renewed.pem", None);
    replace(&renewed);
    let second = serial_of(&renewed);
    assert_ne!(first, second);
    assert_eq!(serial_served(), second, "{}", gateway_log(&bench));

    // Candidates that do not fit: another key's certificate, an expired one. Refused; the
    // renewed certificate stays in force.
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(bench.path("other.key"))
            .arg("-out")
            .arg(bench.path("other.csr"))
            .args(["-subj", "/CN=other"]),
    );
    let other_key = bench.sign(&bench.path("other.csr"), "other-key.pem", None);
    let expired = bench.sign(&csr, "expired.pem", Some("2020-01-01 00:00:00"));
    for candidate in [other_key, expired] {
        replace(&candidate);
        assert_eq!(serial_served(), second, "{candidate:?}");
        let out = publish("still-served");
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out),
            gateway_log(&bench)
        );
    }
    let log = gateway_log(&bench);
    assert!(log.contains("does not match the private key"), "{log}");
    assert!(log.contains("the new certificate has expired"), "{log}");
    assert!(log.contains("the previous ones stay in force"), "{log}");

    // The subscriber never lost its session: it has what was published after the rotations.
    let out = publish("after-rotation");
    assert!(out.status.success(), "{}", text(&out));
    let start = Instant::now();
    while !std::fs::read_to_string(&received)
        .unwrap_or_default()
        .contains("site/sensor-1/t after-rotation")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the subscriber missed it; log:\n{}",
            gateway_log(&bench)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        subscriber.try_wait().unwrap().is_none(),
        "the subscriber was dropped"
    );
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    stop(gateway);
}

#[test]
fn check_config_exits_64_naming_each_token_problem() {
    let bench = Bench::new();
    let cert = bench.provision("uplink", "gw-7", "gw-7.example");
    let good_pin = bench.token.hsm().pin_file();
    let wrong_pin = bench.path("wrong.pin");
    std::fs::write(&wrong_pin, "00000000\n").unwrap();
    set_mode(&wrong_pin, 0o600);
    let open_pin = bench.path("open.pin");
    std::fs::copy(&good_pin, &open_pin).unwrap();
    set_mode(&open_pin, 0o644);
    let stranger = TestCa::new("other CA").issue("other", &[]);
    let other_cert = write(bench.dir.path(), "other.pem", &stranger.cert_pem);

    let config = |module: &str, pin: &Path, uri: &str, cert: &Path| {
        format!(
            "[uplink]\nhost = \"localhost\"\nclient_id = \"gw-7\"\ntls = \"mutual\"\n\
             cert_file = \"{}\"\nkey_uri = \"{uri}\"\n\
             [keys]\nmodule = \"{module}\"\npin_file = \"{}\"\n",
            cert.display(),
            pin.display()
        )
    };
    let uri = Bench::key_uri("uplink");
    let cases = [
        ("good", config(SOFTHSM_MODULE, &good_pin, &uri, &cert), None),
        (
            "missing module",
            config("/nonexistent/libpkcs11.so", &good_pin, &uri, &cert),
            Some("PKCS#11 module \"/nonexistent/libpkcs11.so\" cannot be used: no such file"),
        ),
        (
            "wrong PIN",
            config(SOFTHSM_MODULE, &wrong_pin, &uri, &cert),
            Some("token \"gw-token\" refused the PIN"),
        ),
        (
            "PIN file others can read",
            config(SOFTHSM_MODULE, &open_pin, &uri, &cert),
            Some("it is readable by other users"),
        ),
        (
            "no token",
            config(
                SOFTHSM_MODULE,
                &good_pin,
                "pkcs11:token=absent;object=uplink",
                &cert,
            ),
            Some("no token labelled \"absent\" (tokens present: \"gw-token\")"),
        ),
        (
            "no key",
            config(
                SOFTHSM_MODULE,
                &good_pin,
                "pkcs11:token=gw-token;object=nope",
                &cert,
            ),
            Some("token \"gw-token\" has no private key \"nope\""),
        ),
        (
            "another key's certificate",
            config(SOFTHSM_MODULE, &good_pin, &uri, &other_cert),
            Some(
                "the certificate does not match the private key pkcs11:token=gw-token;object=uplink",
            ),
        ),
        (
            "a PIN in the URI",
            config(
                SOFTHSM_MODULE,
                &good_pin,
                "pkcs11:token=gw-token;object=uplink?pin-value=1234",
                &cert,
            ),
            Some("the URI carries a PIN"),
        ),
    ];
    for (case, text_of_config, expected) in cases {
        write(bench.dir.path(), "case.toml", &text_of_config);
        let out = bench.fieldlink("case.toml", &["check-config"]);
        match expected {
            None => assert!(out.status.success(), "{case}: {}", text(&out)),
            Some(problem) => {
                assert_eq!(out.status.code(), Some(64), "{case}: {}", text(&out));
                assert!(text(&out).contains(problem), "{case}: {}", text(&out));
                // Neither the PIN nor its file's content is ever shown.
                assert!(
                    !text(&out).contains(bench.token.hsm().pin()),
                    "{case}: {}",
                    text(&out)
                );
            }
        }
    }
}

#[test]
fn install_cert_refuses_another_keys_certificate_an_unknown_ca_and_an_expired_one() {
    let bench = Bench::new();
    ok(bench.fieldlink("keys.toml", &["keys", "generate", "--label", "uplink"]));
    let csr = bench.path("uplink.csr");
    ok(bench.fieldlink(
        "keys.toml",
        &[
            "keys",
            "csr",
            "--label",
            "uplink",
            "--subject",
            "gw-7",
            "--out",
            csr.to_str().unwrap(),
        ],
    ));
    // Another key's request, signed by the right CA.
    let other_csr = bench.path("other.csr");
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(bench.path("other.key"))
            .arg("-out")
            .arg(&other_csr)
            .args(["-subj", "/CN=other"]),
    );
    let other_key = bench.sign(&other_csr, "other-key.pem", None);
    // Our request, signed by a CA the configuration does not name.
    let (stranger, stranger_key) = openssl_ca(bench.dir.path(), "stranger-ca");
    let unknown_ca = sign_with(
        bench.dir.path(),
        &csr,
        &stranger,
        &stranger_key,
        "unknown-ca.pem",
        None,
    );
    // Our request, signed in 2020 for 30 days.
    let expired = bench.sign(&csr, "expired.pem", Some("2020-01-01 00:00:00"));
    for (cert, problem) in [
        (
            other_key,
            "its public key is not the one of key \"uplink\" on token \"gw-token\"",
        ),
        (unknown_ca, "it does not chain to the configured CA"),
        (expired, "it has expired"),
    ] {
        let out = bench.fieldlink(
            "keys.toml",
            &[
                "keys",
                "install-cert",
                "--label",
                "uplink",
                cert.to_str().unwrap(),
            ],
        );
        assert!(!out.status.success(), "{cert:?} was installed");
        assert!(text(&out).contains(problem), "{cert:?}: {}", text(&out));
    }
    // Nothing was installed; a fitting certificate still is.
    let listed = ok(bench.fieldlink("keys.toml", &["keys", "list", "--json"]));
    assert!(listed.contains("\"certificate\":false"), "{listed}");
    let fitting = bench.sign(&csr, "fitting.pem", None);
    ok(bench.fieldlink(
        "keys.toml",
        &[
            "keys",
            "install-cert",
            "--label",
            "uplink",
            fitting.to_str().unwrap(),
        ],
    ));
    let listed = ok(bench.fieldlink("keys.toml", &["keys", "list", "--json"]));
    assert!(listed.contains("\"certificate\":true"), "{listed}");
    // And delete takes the key pair and its certificate away.
    let deleted = ok(bench.fieldlink(
        "keys.toml",
        &["keys", "delete", "--label", "uplink", "--json"],
    ));
    assert!(deleted.contains("\"deleted_objects\":3"), "{deleted}");
    let listed = ok(bench.fieldlink("keys.toml", &["keys", "list", "--json"]));
    assert!(listed.contains("\"keys\":[]"), "{listed}");
}

fn run_gateway(bench: &Bench, config: &str, port: u16) -> Child {
    let log = std::fs::File::create(bench.path("gateway.log")).unwrap();
    let child = bench
        .token
        .command(BIN)
        .arg("--config")
        .arg(bench.path(config))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr = ([127, 0, 0, 1], port).into();
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the gateway did not start:\n{}",
            gateway_log(bench)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn gateway_log(bench: &Bench) -> String {
    std::fs::read_to_string(bench.path("gateway.log")).unwrap_or_default()
}

fn stop(mut gateway: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status();
    let _ = gateway.wait();
}

/// A self-signed EC CA with openssl: (certificate, key).
fn openssl_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    (cert, key)
}

/// `openssl x509 -req`: a v3 certificate for TLS clients and servers, its SANs from `csr`.
fn sign_with(
    dir: &Path,
    csr: &Path,
    ca: &Path,
    ca_key: &Path,
    name: &str,
    at: Option<&str>,
) -> PathBuf {
    let ext = dir.join("leaf.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
         extendedKeyUsage=clientAuth,serverAuth\n",
    )
    .unwrap();
    let out = dir.join(name);
    let mut command = match at {
        Some(time) => {
            let mut c = Command::new("faketime");
            c.args([time, "openssl"]);
            c
        }
        None => Command::new("openssl"),
    };
    command
        .args([
            "x509",
            "-req",
            "-days",
            if at.is_some() { "30" } else { "1" },
        ])
        .args(["-copy_extensions", "copy", "-CAcreateserial"])
        .arg("-in")
        .arg(csr)
        .arg("-CA")
        .arg(ca)
        .arg("-CAkey")
        .arg(ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&out);
    run_ok(&mut command);
    out
}

fn run_ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out));
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
