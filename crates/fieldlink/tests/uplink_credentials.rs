//! The uplink's MQTT login through the real binary: `fieldlink status` shows the login and the
//! token's expiry, and no password, token or key leaks: each run's password and every JWT and
//! SAS token it could have made (RS256 and HMAC are deterministic: every second of the run is
//! recomputed) are searched for in the log at `RUST_LOG=trace`, `status.json`, the status
//! output (text and JSON), and the process's `/proc/<pid>/cmdline` and `environ`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fieldlink_core::config::ConfigSource;
use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::{Mosquitto, free_port, wait_for_port};
use fieldlink_uplink::config::UplinkCredentials;

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");
const USER: &str = "gw-7";
const PASSWORD: &str = "Pa55-w0rd-that-must-not-leak";
const SAS_KEY: &str = "c2VjcmV0IGF6dXJlIGRldmljZSBrZXkgZm9yIGZpZWxkbGluaw==";

struct Run {
    dir: tempfile::TempDir,
    _cloud: Mosquitto,
    child: Child,
    started: u64,
}

impl Run {
    /// A cloud that knows `USER`/`PASSWORD` only, and a gateway logging in with `login`
    /// (lines of `[uplink]`, then sections), traced at `RUST_LOG=trace`.
    fn start(login: &str) -> Self {
        let ca = TestCa::new("cloud CA");
        let server = ca.issue("cloud", &["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = write(dir.path(), "ca.pem", ca.pem());
        let cert = write(dir.path(), "server.pem", &server.cert_pem);
        let key = write(dir.path(), "server.key", &server.key_pem);
        let passwd = dir.path().join("passwd");
        let ok = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&passwd)
            .args([USER, PASSWORD])
            .status()
            .unwrap();
        assert!(ok.success());
        let tls = free_port();
        let cloud = Mosquitto::start(&format!(
            "allow_anonymous false\npassword_file {}\n\
             listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            passwd.display(),
            ca_file.display(),
            cert.display(),
            key.display()
        ));
        wait_for_port(([127, 0, 0, 1], tls).into(), Duration::from_secs(10));
        secret(dir.path(), "uplink.password", PASSWORD);
        secret(dir.path(), "sas.key", SAS_KEY);
        let token_key = dir.path().join("token.key");
        let ok = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&token_key)
            .status()
            .unwrap();
        assert!(ok.success());
        std::fs::set_permissions(&token_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let local = free_port();
        let config = format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
             [[broker.listeners]]\nport = {local}\n\
             [uplink]\nhost = \"localhost\"\nport = {tls}\nclient_id = \"gw-e2e\"\n\
             ca_file = \"{ca}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n{login}\n",
            data = dir.path().join("data").display(),
            ca = ca_file.display(),
        )
        .replace("{dir}", &dir.path().display().to_string());
        write(dir.path(), "fieldlink.toml", &config);
        let started = unix_now();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("fieldlink.toml"))
            .arg("run")
            .env("RUST_LOG", "trace")
            .env("RUNTIME_DIRECTORY", dir.path().join("run"))
            .stdout(std::fs::File::create(dir.path().join("gateway.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("gateway.err")).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(([127, 0, 0, 1], local).into(), Duration::from_secs(20));
        Self {
            dir,
            _cloud: cloud,
            child,
            started,
        }
    }

    fn status(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("fieldlink.toml"))
            .arg("status")
            .args(args)
            .env("RUNTIME_DIRECTORY", self.dir.path().join("run"))
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `fieldlink status` once it contains every one of `words`; panics after 20 s.
    fn status_showing(&self, words: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.status(&[]);
            if words.iter().all(|w| text.contains(w)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {words:?}: {text}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("gateway.log"), read("gateway.err"))
    }

    /// Every place a secret must not be, with its name.
    fn places(&mut self) -> Vec<(String, String)> {
        let pid = self.child.id();
        let proc = |what: &str| {
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{what}")).unwrap())
                .into_owned()
        };
        let places = vec![
            ("cmdline".to_owned(), proc("cmdline")),
            ("environ".to_owned(), proc("environ")),
            ("status".to_owned(), self.status(&[])),
            ("status --json".to_owned(), self.status(&["--json"])),
            (
                "status.json".to_owned(),
                std::fs::read_to_string(self.dir.path().join("run/status.json")).unwrap(),
            ),
        ];
        // Stop it, so that the log holds the whole run, shutdown included.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = self.child.wait();
        let mut places = places;
        places.push(("log".to_owned(), self.log()));
        places
    }

    /// The uplink's settings as the gateway read them.
    fn credentials(&self) -> UplinkCredentials {
        let source = ConfigSource::Explicit(self.dir.path().join("fieldlink.toml"));
        let (settings, _) = fieldlink::config::load(&source).unwrap();
        settings.uplink.unwrap().credentials.unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = write(dir, name, &format!("{text}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn assert_absent(places: &[(String, String)], secrets: &[String]) {
    assert!(!secrets.is_empty());
    for (name, text) in places {
        assert!(!text.is_empty() || name == "environ", "{name} is empty");
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{secret:?} leaked into {name}:\n{text}"
            );
        }
    }
}

#[test]
fn a_password_login_shows_in_the_status_and_leaks_nowhere() {
    let mut run = Run::start(&format!(
        "username = \"{USER}\"\npassword_file = \"{{dir}}/uplink.password\""
    ));
    let text = run.status_showing(&["uplink   connected", "login: password as gw-7"]);
    assert!(!text.contains("token expires"), "{text}");
    let places = run.places();
    // The log did trace the session (else the search proves little).
    let log = &places.last().unwrap().1;
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "not traced:\n{log}"
    );
    assert_absent(&places, &[PASSWORD.to_owned()]);
}

#[test]
fn refused_jwts_are_reported_with_their_expiry_and_leak_nowhere() {
    let mut run = Run::start(
        "[uplink.jwt]\nkey_file = \"{dir}/token.key\"\naudience = \"fieldlink\"\nlifetime = \"10m\"\n\
         claims = { scope = [\"fieldlink.write:*/*/*\"] }",
    );
    // mosquitto knows no token: refused, said as such, retried.
    let text = run.status_showing(&[
        "the cloud refused the credentials for gw-e2e",
        "login: jwt RS256 as gw-e2e; token expires in",
    ]);
    let UplinkCredentials::Jwt(jwt) = run.credentials() else {
        panic!("not a JWT login")
    };
    let places = run.places();
    let end = unix_now();
    let mut secrets = Vec::new();
    for iat in run.started - 1..=end + 1 {
        let token = fieldlink_uplink::tokens::jwt(&jwt, iat).unwrap();
        let signature = token.rsplit('.').next().unwrap().to_owned();
        secrets.push(token);
        secrets.push(signature);
    }
    assert_absent(&places, &secrets);
    assert!(
        text.contains("token expires in 5") || text.contains("token expires in 6"),
        "{text}"
    );
}

#[test]
fn refused_sas_tokens_are_reported_and_leak_nowhere() {
    let mut run = Run::start("[uplink.azure_sas]\nkey_file = \"{dir}/sas.key\"\nlifetime = \"1h\"");
    let username = fieldlink_uplink::tokens::azure_username("localhost", "gw-e2e");
    run.status_showing(&[
        &format!("the cloud refused the credentials for {username}"),
        "login: azure-sas",
    ]);
    let places = run.places();
    let end = unix_now();
    let key_file = run.dir.path().join("sas.key");
    let mut secrets = vec![SAS_KEY.to_owned()];
    for expiry in run.started + 3600 - 1..=end + 3600 + 1 {
        let token =
            fieldlink_uplink::tokens::azure_sas(&key_file, "localhost", "gw-e2e", expiry).unwrap();
        let sig = token
            .split('&')
            .find_map(|p| p.strip_prefix("sig="))
            .unwrap()
            .to_owned();
        secrets.push(
            sig.replace("%2B", "+")
                .replace("%2F", "/")
                .replace("%3D", "="),
        );
        secrets.push(sig);
        secrets.push(token);
    }
    assert_absent(&places, &secrets);
}
