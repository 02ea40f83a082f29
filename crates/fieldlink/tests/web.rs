//! The web UI in the real gateway, as an operator meets it: accounts made with `fieldlink
//! users`, the gateway started with `fieldlink run`, a real MQTT client publishing, and the
//! UI's pages, JSON API, `/metrics` and `/healthz` read over HTTPS.

mod web_gateway;

use std::path::Path;
use std::time::{Duration, Instant};

use fieldlink_test_support::web_client::{WebClient, form};
use web_gateway::Gateway;

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
    let token = gateway.setup_token();
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

#[tokio::test]
async fn live_data_shows_only_what_the_accounts_acls_let_it_subscribe_to() {
    let mut gateway = Gateway::configure_with(
        "[[broker.acl]]\nusers = [\"vic\"]\nsubscribe = [\"site/public/#\"]\n\
         [[broker.acl]]\npublish = [\"site/#\"]\n",
    );
    assert!(
        gateway
            .users(&["add", "vic"], "viewer-password\n")
            .status
            .success()
    );
    gateway.run();
    let mut viewer = gateway.client();
    let login = viewer
        .post_form(
            "/login",
            &form(&[("username", "vic"), ("password", "viewer-password")]),
        )
        .await;
    assert_eq!(login.status, 303);

    let (status, body) = viewer
        .stream_until(
            "/live/events?filter=site%2F%23",
            Duration::from_secs(5),
            || {},
            |_| true,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("ACLs do not let \"vic\" subscribe to site/#"),
        "{body}"
    );

    let (status, body) = viewer
        .stream_until(
            "/live/events?filter=site%2Fpublic%2F%23",
            Duration::from_secs(20),
            || {
                // Only once the stream is open: the private message first, then the public one.
                std::thread::sleep(Duration::from_millis(300));
                gateway.publish("site/private/door", "secret");
                gateway.publish("site/public/temp", "21.5");
            },
            |text| text.contains("21.5"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("event: message") && body.contains("site/public/temp"),
        "{body}"
    );
    assert!(!body.contains("secret"), "{body}");
}

#[tokio::test]
async fn device_writes_through_the_api_are_range_checked_and_reach_the_device() {
    let mut peer = web_gateway::ModbusPeer::start();
    let mut gateway = Gateway::configure_with(&web_gateway::boiler(&peer));
    assert!(
        gateway
            .users(&["add", "ada", "--role", "admin"], "admin-password\n")
            .status
            .success()
    );
    gateway.run();
    let mut client = gateway.client();
    let login = client
        .post_form(
            "/login",
            &form(&[("username", "ada"), ("password", "admin-password")]),
        )
        .await;
    assert_eq!(login.status, 303);
    let csrf = json(&client.get("/api/v1/session").await.body)["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let writer = client.clone();
    let write = |value: &'static str| {
        let mut client = writer.clone();
        let csrf = csrf.clone();
        async move {
            client
                .send(
                    "POST",
                    "/api/v1/devices/boiler/setpoint",
                    &[
                        ("content-type", "application/json"),
                        ("x-csrf-token", &csrf),
                    ],
                    &format!("{{\"value\": {value}}}"),
                )
                .await
        }
    };
    let too_high = write("31").await;
    assert_eq!(too_high.status, 400);
    assert!(
        too_high.body.contains("outside the allowed range"),
        "{}",
        too_high.body
    );
    let read_only = client
        .send(
            "POST",
            "/api/v1/devices/boiler/temp",
            &[
                ("content-type", "application/json"),
                ("x-csrf-token", &csrf),
            ],
            "{\"value\": 1}",
        )
        .await;
    assert!(
        read_only.body.contains("does not take writes"),
        "{}",
        read_only.body
    );
    assert_eq!(peer.cmd("get hr 1 1"), "0", "nothing was written");
    let ok = write("12.5").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(peer.cmd("get hr 1 1"), "125");
    let devices = json(&client.get("/api/v1/devices").await.body);
    assert_eq!(devices[0]["name"], "boiler");
    assert_eq!(devices[0]["points"][1]["write"]["max"], 30.0);
}
