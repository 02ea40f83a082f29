//! The web UI in the real gateway, as an operator meets it: accounts made with `fieldlink
//! users`, the gateway started with `fieldlink run`, a real MQTT client publishing, and the
//! UI's pages, JSON API, `/metrics` and `/healthz` read over HTTPS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::web_client::{WebClient, form};
use fieldlink_test_support::{free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    mqtt: u16,
    web: u16,
}

impl Gateway {
    fn configure() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mqtt, web) = (free_port(), free_port());
        let config = dir.path().join("fieldlink.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\ndata_dir = \"{}\"\nshutdown_grace = \"3s\"\n\
                 [[broker.listeners]]\nname = \"l\"\nbind = \"127.0.0.1\"\nport = {mqtt}\n\
                 [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\
                 [web]\nport = {web}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        Self {
            // Replaced by `run`.
            child: Command::new("true").spawn().unwrap(),
            dir,
            config,
            mqtt,
            web,
        }
    }

    fn users(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("users")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.log()).unwrap();
        self.child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(([127, 0, 0, 1], self.web).into(), Duration::from_secs(20));
        wait_for_port(([127, 0, 0, 1], self.mqtt).into(), Duration::from_secs(20));
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    fn client(&self) -> WebClient {
        WebClient::new(
            ([127, 0, 0, 1], self.web).into(),
            &self.dir.path().join("data/web/cert.pem"),
        )
    }

    fn publish(&self, topic: &str, payload: &str) {
        let ok = Command::new("mosquitto_pub")
            .args([
                "-p",
                &self.mqtt.to_string(),
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                payload,
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mosquitto_pub");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `/api/v1/status` until `check` holds (the status is renewed every 2 s).
async fn status_until(
    client: &mut WebClient,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let answer = client.get("/api/v1/status").await;
        if answer.status == 200 {
            let status = json(&answer.body);
            if check(&status) {
                return status;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sha256_fingerprint_of_pem(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64_decode(&b64);
    fieldlink_web::identity::fingerprint(&der)
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn an_operator_logs_in_and_watches_the_queue_fill_and_empties_it() {
    let mut gateway = Gateway::configure();
    let added = gateway.users(
        &["add", "ada", "--role", "admin"],
        "correct-horse-battery\n",
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let short = gateway.users(&["add", "bob"], "short\n");
    assert!(!short.status.success(), "a short password is refused");
    let listed = gateway.users(&["list"], "");
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "ada\tadmin\n");
    gateway.run();

    // The fingerprint in the log is the certificate's the browser gets.
    let log = std::fs::read_to_string(gateway.log()).unwrap();
    let fingerprint = sha256_fingerprint_of_pem(&gateway.dir.path().join("data/web/cert.pem"));
    assert!(
        log.contains(&fingerprint),
        "the log shows {fingerprint}:\n{log}"
    );
    assert!(
        !log.contains("setup token"),
        "an account exists: no setup token"
    );

    let mut client = gateway.client();
    assert_eq!(client.get("/healthz").await.status, 200);
    let wrong = client
        .post_form(
            "/login",
            &form(&[("username", "ada"), ("password", "wrong")]),
        )
        .await;
    assert_eq!(wrong.status, 401);
    let login = client
        .post_form(
            "/login",
            &form(&[("username", "ada"), ("password", "correct-horse-battery")]),
        )
        .await;
    assert_eq!(login.status, 303, "{}", login.body);

    status_until(&mut client, "a first status", |s| {
        s["queue"]["messages"] == 0
    })
    .await;
    gateway.publish("site/boiler/temp", "21.5");
    gateway.publish("site/boiler/temp", "21.6");
    status_until(&mut client, "two queued", |s| s["queue"]["messages"] == 2).await;

    let dashboard = client.get("/").await;
    assert_eq!(dashboard.status, 200);
    assert!(
        dashboard.body.contains(r#"id="queue-depth">2<"#),
        "{}",
        dashboard.body
    );
    let queue = client.get("/queue").await;
    assert!(
        queue.body.contains("site/boiler/temp") && queue.body.contains("telemetry"),
        "{}",
        queue.body
    );

    let metrics = client.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("fieldlink_queue_appended_total 2"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("fieldlink_broker_messages_in_total"),
        "{}",
        metrics.body
    );

    let session = json(&client.get("/api/v1/session").await.body);
    let csrf = session["csrf"].as_str().unwrap().to_owned();
    let purged = client
        .post_form(
            "/queue/purge",
            &form(&[("confirm", "purge"), ("csrf", &csrf)]),
        )
        .await;
    assert_eq!(purged.status, 200);
    assert!(
        purged.body.contains("Deleted 2 queued messages"),
        "{}",
        purged.body
    );
    status_until(&mut client, "emptied", |s| s["queue"]["messages"] == 0).await;

    // An account removed with the CLI loses its session at the next request.
    let added = gateway.users(&["add", "vic"], "viewer-password\n");
    assert!(added.status.success());
    let mut viewer = gateway.client();
    let login = viewer
        .post_form(
            "/login",
            &form(&[("username", "vic"), ("password", "viewer-password")]),
        )
        .await;
    assert_eq!(login.status, 303);
    assert_eq!(viewer.get("/api/v1/status").await.status, 200);
    let removed = gateway.users(&["remove", "vic"], "");
    assert!(removed.status.success());
    assert_eq!(viewer.get("/api/v1/status").await.status, 401);
    let last = gateway.users(&["remove", "ada"], "");
    assert!(!last.status.success(), "the last admin stays");
}

#[tokio::test]
async fn with_no_account_the_log_gives_a_setup_token_that_works_once() {
    let mut gateway = Gateway::configure();
    gateway.run();
    let start = Instant::now();
    let token = loop {
        let log = std::fs::read_to_string(gateway.log()).unwrap();
        if let Some(token) = log
            .split("setup token ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        {
            break token.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no token in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut client = gateway.client();
    let made = client
        .post_form(
            "/setup",
            &form(&[
                ("token", &token),
                ("username", "ada"),
                ("password", "long-enough-pw"),
                ("confirm", "long-enough-pw"),
            ]),
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.body);
    assert_eq!(client.get("/users").await.status, 200);
    let listed = gateway.users(&["list"], "");
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "ada\tadmin\n");
    let again = gateway
        .client()
        .post_form(
            "/setup",
            &form(&[
                ("token", &token),
                ("username", "eve"),
                ("password", "long-enough-pw"),
                ("confirm", "long-enough-pw"),
            ]),
        )
        .await;
    assert_eq!(again.status, 403);
}
