//! The configuration page's JSON API against the real gateway binary: a proposal is checked
//! by the `check-config` reader (every mistake at its line), applied with an in-process
//! restart and a health check, then kept; one apply at a time; viewers look but do not apply;
//! what would move the UI itself is refused; the session and the queued messages outlive
//! the restart.

mod web_gateway;

use std::time::{Duration, Instant};

use fieldlink_test_support::web_client::{WebClient, form};
use web_gateway::{Gateway, json, post_json};

async fn logged_in(gateway: &Gateway, name: &str, password: &str) -> (WebClient, String) {
    let mut client = gateway.client();
    let login = client
        .post_form(
            "/login",
            &form(&[("username", name), ("password", password)]),
        )
        .await;
    assert_eq!(login.status, 303, "{}", login.body);
    let csrf = json(&client.get("/api/v1/session").await.body)["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    (client, csrf)
}

/// Polls `GET /api/v1/config` until the apply has ended; its state.
async fn apply_ended(client: &mut WebClient) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let answer = client.get("/api/v1/config").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let apply = json(&answer.body)["apply"].clone();
        if apply["state"] != "applying" {
            return apply;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still applying");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn queued(client: &mut WebClient, at_least: u64) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let answer = client.get("/api/v1/queue").await;
        if answer.status == 200 {
            let queue = json(&answer.body);
            if queue["messages"].as_u64().unwrap_or(0) >= at_least {
                return queue;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{}", answer.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_proposal_is_checked_then_applied_and_kept_one_apply_at_a_time() {
    let mut gateway = Gateway::configure_with("apply_check = \"2s\"\n");
    for (name, role, password) in [
        ("ada", "admin", "admin-password\n"),
        ("vic", "viewer", "viewer-password\n"),
    ] {
        let added = gateway.users(&["add", name, "--role", role], password);
        assert!(
            added.status.success(),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
    }
    gateway.run();
    let (mut admin, csrf) = logged_in(&gateway, "ada", "admin-password").await;
    let (mut viewer, viewer_csrf) = logged_in(&gateway, "vic", "viewer-password").await;

    // A message waits in the queue (no uplink): it must outlive the restart.
    gateway.publish("site/boiler/temp", "21.5");
    queued(&mut admin, 1).await;

    let config = json(&admin.get("/api/v1/config").await.body);
    assert_eq!(config["text"], "");
    assert_eq!(config["apply"]["state"], "idle");
    assert_eq!(config["check_s"], 2);

    // Two mistakes, both reported with their lines in the proposal (a viewer may check).
    let two_mistakes = "[queue]\nmax_bytes = \"lots\"\n\n[[routes]]\nname = \"alarms\"\n\
                        filter = \"alarm/#\"\ncolour = \"red\"\n";
    let checked = post_json(
        &mut viewer,
        &viewer_csrf,
        "/api/v1/config/check",
        serde_json::json!({ "text": two_mistakes }),
    )
    .await;
    assert_eq!(checked.status, 200, "{}", checked.body);
    let checked = json(&checked.body);
    assert_eq!(checked["valid"], false);
    let lines: Vec<(u64, String)> = checked["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in_proposal"] == true)
        .map(|p| {
            (
                p["line"].as_u64().unwrap(),
                p["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(lines.len(), 2, "{checked}");
    assert_eq!(lines[0].0, 2, "{checked}");
    assert_eq!(lines[1].0, 7, "{checked}");
    // Nor may it be applied.
    let refused = post_json(
        &mut admin,
        &csrf,
        "/api/v1/config/apply",
        serde_json::json!({ "text": two_mistakes }),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(json(&refused.body)["problems"].as_array().unwrap().len(), 2);

    // A good change: a second route. The diff names it, old → new.
    let good = "[[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\
                [[routes]]\nname = \"alarms\"\nfilter = \"alarm/#\"\n";
    let checked = json(
        &post_json(
            &mut admin,
            &csrf,
            "/api/v1/config/check",
            serde_json::json!({ "text": good }),
        )
        .await
        .body,
    );
    assert_eq!(checked["valid"], true, "{checked}");
    let changes = checked["changes"].as_array().unwrap();
    assert!(
        changes.iter().any(|c| c["key"] == "routes[1].filter"
            && c["old"].is_null()
            && c["new"] == "\"alarm/#\""),
        "{checked}"
    );

    // A viewer may not apply; nothing from the page may move the UI itself.
    let by_viewer = post_json(
        &mut viewer,
        &viewer_csrf,
        "/api/v1/config/apply",
        serde_json::json!({ "text": good }),
    )
    .await;
    assert_eq!(by_viewer.status, 403);
    let moved = post_json(
        &mut admin,
        &csrf,
        "/api/v1/config/apply",
        serde_json::json!({ "text": "[web]\nport = 9\n" }),
    )
    .await;
    assert_eq!(moved.status, 400, "{}", moved.body);
    assert!(
        moved.body.contains("fieldlink config set"),
        "{}",
        moved.body
    );
    // Without the CSRF token: refused.
    let forged = admin
        .send(
            "POST",
            "/api/v1/config/apply",
            &[("content-type", "application/json")],
            &serde_json::json!({ "text": good }).to_string(),
        )
        .await;
    assert_eq!(forged.status, 403);

    // The apply starts; a second one meanwhile is refused with 409.
    let started = post_json(
        &mut admin,
        &csrf,
        "/api/v1/config/apply",
        serde_json::json!({ "text": good }),
    )
    .await;
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(json(&started.body)["apply"]["state"], "applying");
    let second = post_json(
        &mut admin,
        &csrf,
        "/api/v1/config/apply",
        serde_json::json!({ "text": good }),
    )
    .await;
    assert_eq!(second.status, 409, "{}", second.body);

    let ended = apply_ended(&mut admin).await;
    assert_eq!(ended["state"], "kept", "{ended}");
    assert_eq!(ended["by"], "ada");

    // The sessions outlived the restart; the site layer is the proposal; the queued message
    // is still there, and the new route takes messages.
    assert_eq!(admin.get("/api/v1/session").await.status, 200);
    assert_eq!(viewer.get("/api/v1/session").await.status, 200);
    let site = std::fs::read_to_string(gateway.dir.path().join("data/config/site.toml")).unwrap();
    assert_eq!(site, good);
    assert!(
        !gateway
            .dir
            .path()
            .join("data/config/site.trial.toml")
            .exists()
    );
    let config = json(&admin.get("/api/v1/config").await.body);
    assert_eq!(config["text"], good);
    gateway.publish("alarm/boiler", "overheat");
    let queue = queued(&mut admin, 2).await;
    let streams: Vec<&str> = queue["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        streams.contains(&"alarms") && streams.contains(&"telemetry"),
        "{queue}"
    );

    // A second apply replaces it; the first is then kept in the history and can be restored.
    let third = "[[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n";
    let started = post_json(
        &mut admin,
        &csrf,
        "/api/v1/config/apply",
        serde_json::json!({ "text": third }),
    )
    .await;
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(apply_ended(&mut admin).await["state"], "kept");
    let config = json(&admin.get("/api/v1/config").await.body);
    let number = config["history"][0]["number"].as_u64().unwrap();
    let restored = post_json(
        &mut admin,
        &csrf,
        "/api/v1/config/apply",
        serde_json::json!({ "restore": number }),
    )
    .await;
    assert_eq!(restored.status, 202, "{}", restored.body);
    assert_eq!(apply_ended(&mut admin).await["state"], "kept");
    assert_eq!(json(&admin.get("/api/v1/config").await.body)["text"], good);
}

#[tokio::test]
async fn a_proposal_the_components_cannot_start_on_is_rolled_back_and_nothing_is_lost() {
    let mut gateway = Gateway::configure_with("apply_check = \"2s\"\n");
    let added = gateway.users(&["add", "ada", "--role", "admin"], "admin-password\n");
    assert!(added.status.success());
    gateway.run();
    let (mut admin, csrf) = logged_in(&gateway, "ada", "admin-password").await;
    gateway.publish("site/boiler/temp", "21.5");
    queued(&mut admin, 1).await;

    // A second listener on a port something else holds: valid, but the broker cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proposal = format!(
        "[[broker.listeners]]\nname = \"l\"\nbind = \"127.0.0.1\"\nport = {}\n\
         [[broker.listeners]]\nname = \"second\"\nbind = \"127.0.0.1\"\nport = {}\n",
        gateway.mqtt,
        taken.local_addr().unwrap().port()
    );
    let started = post_json(
        &mut admin,
        &csrf,
        "/api/v1/config/apply",
        serde_json::json!({ "text": proposal }),
    )
    .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let ended = apply_ended(&mut admin).await;
    assert_eq!(ended["state"], "rolled_back", "{ended}");
    let why = ended["why"].as_str().unwrap();
    assert!(
        why.contains("did not start on it") && why.contains("second"),
        "{why}"
    );

    // Back on the previous configuration: nothing written, the queue as it was and taking more.
    assert!(!gateway.dir.path().join("data/config/site.toml").exists());
    assert_eq!(admin.get("/api/v1/session").await.status, 200);
    gateway.publish("site/boiler/temp", "21.6");
    let queue = queued(&mut admin, 2).await;
    assert_eq!(queue["messages"], 2, "{queue}");
}

/// `mosquitto_sub` with `args` on the gateway's broker: what it printed.
fn subscribe(gateway: &Gateway, args: &[&str]) -> String {
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-p", &gateway.mqtt.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The components restart around one router for the process: rumqttd's router cannot be
/// stopped, so one per restart would be left behind at every apply, with its logs. Found
/// again, it keeps what only a restart of the service loses: retained messages, and the
/// sessions of clients away. What sizes it cannot change without that restart.
#[tokio::test]
async fn applies_keep_the_one_router_with_its_retained_messages_and_sessions() {
    let mut gateway = Gateway::configure_with("apply_check = \"1s\"\n");
    let added = gateway.users(&["add", "ada", "--role", "admin"], "admin-password\n");
    assert!(added.status.success());
    gateway.run();
    let (mut admin, csrf) = logged_in(&gateway, "ada", "admin-password").await;

    let retained = std::process::Command::new("mosquitto_pub")
        .args(["-p", &gateway.mqtt.to_string()])
        .args(["-q", "1", "-r", "-t", "site/boiler/mode", "-m", "eco"])
        .status()
        .unwrap();
    assert!(retained.success());
    // An MQTT 5 client subscribes with a session kept 5 minutes, and goes away.
    let away = [
        "-V",
        "5",
        "-c",
        "-i",
        "away",
        "-x",
        "300",
        "-q",
        "1",
        "-t",
        "site/boiler/temp",
    ];
    subscribe(&gateway, &[&away[..], &["-E"]].concat());
    assert_eq!(gateway.threads_named("router-0"), 1);

    let one_route = "[[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n";
    let two_routes = "[[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\
                      [[routes]]\nname = \"alarms\"\nfilter = \"alarm/#\"\n";
    for text in [two_routes, one_route, two_routes] {
        let started = post_json(
            &mut admin,
            &csrf,
            "/api/v1/config/apply",
            serde_json::json!({ "text": text }),
        )
        .await;
        assert_eq!(started.status, 202, "{}", started.body);
        let ended = apply_ended(&mut admin).await;
        assert_eq!(ended["state"], "kept", "{ended}");
    }
    assert_eq!(
        gateway.threads_named("router-0"),
        1,
        "every apply left a router behind"
    );

    gateway.publish("site/boiler/temp", "22.0");
    let mode = subscribe(&gateway, &["-t", "site/boiler/mode", "-C", "1", "-W", "5"]);
    assert_eq!(mode.trim_end(), "eco", "the retained message is gone");
    let resumed = subscribe(&gateway, &[&away[..], &["-C", "1", "-W", "5"]].concat());
    assert_eq!(
        resumed.trim_end(),
        "22.0",
        "the session did not keep what came while its client was away"
    );

    let resized = post_json(
        &mut admin,
        &csrf,
        "/api/v1/config/apply",
        serde_json::json!({ "text": "[broker]\nsegment_size = 65536\n" }),
    )
    .await;
    assert_eq!(resized.status, 400, "{}", resized.body);
    assert!(
        resized.body.contains("broker.segment_size")
            && resized.body.contains("restart the service"),
        "{}",
        resized.body
    );
}
