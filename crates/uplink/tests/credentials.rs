//! Logging in inside MQTT against a real mosquitto with a password file: the right password
//! delivers, a wrong one is reported as refused credentials (MQTT 3.1.1 and 5) and retried
//! after `reconnect_max`, not on the jittered backoff of a network error.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fieldlink_core::config::MqttVersion;
use fieldlink_test_support::certs::TestCa;
use fieldlink_test_support::free_port;
use fieldlink_uplink::UplinkState;
use fieldlink_uplink::config::{UplinkCredentials, UplinkSettings, UplinkTls};

use common::{Cloud, Subscriber, fill, queue, settings, start_uplink};

const USER: &str = "gw-7";
const PASSWORD: &str = "c0rrect-h0rse-battery";
const OBSERVER: (&str, &str) = ("observer", "observer-pass");

/// A mosquitto that takes only the users of its password file, on both listeners (the file's
/// directory goes with it).
fn cloud_with_passwords(ca: &TestCa) -> (Cloud, tempfile::TempDir) {
    let server = ca.issue("cloud", &["localhost"]);
    let passwords = tempfile::tempdir().unwrap();
    let file = passwords.path().join("passwd");
    for (user, password) in [(USER, PASSWORD), OBSERVER] {
        let mut cmd = Command::new("mosquitto_passwd");
        if !file.exists() {
            cmd.arg("-c");
        }
        let ok = cmd.arg("-b").arg(&file).arg(user).arg(password).status();
        assert!(ok.unwrap().success(), "mosquitto_passwd failed");
    }
    // mosquitto's security settings are global unless per-listener: the last allow_anonymous
    // wins, so the observer logs in too.
    let global = format!("allow_anonymous false\npassword_file {}", file.display());
    let cloud = Cloud::start_on(free_port(), free_port(), ca, &server, "", &global);
    (cloud, passwords)
}

fn password_file(dir: &Path, password: &str) -> PathBuf {
    let path = dir.join("uplink.password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn with_password(
    cloud: &Cloud,
    ca: &TestCa,
    dir: &Path,
    password: &str,
    mqtt: MqttVersion,
) -> UplinkSettings {
    let ca_file = cloud.file("trusted-ca.pem", ca.pem());
    let mut s = settings(
        cloud.tls_port,
        UplinkTls::ServerAuth {
            ca_file: Some(ca_file),
        },
    );
    s.mqtt = mqtt;
    s.credentials = Some(UplinkCredentials::Password {
        username: USER.into(),
        password_file: password_file(dir, password),
    });
    s
}

async fn right_password_delivers(mqtt: MqttVersion) {
    let ca = TestCa::new("cloud CA");
    let (cloud, _passwords) = cloud_with_passwords(&ca);
    let sub = Subscriber::start_as(
        cloud.broker.addr().port(),
        "cloud/#",
        "observer",
        false,
        Some(OBSERVER),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    fill(&queue, "a", 200).await;
    let (uplink, shutdown) = start_uplink(
        with_password(&cloud, &ca, dir.path(), PASSWORD, mqtt),
        &queue,
        dir.path(),
    );
    sub.wait_for(200, Duration::from_secs(20)).await;
    let status = uplink.status();
    assert!(status.state.is_connected(), "{:?}", status.state);
    let shown = status.credentials.expect("the login is in the status");
    assert_eq!(
        (shown.kind.as_str(), shown.username.as_str(), shown.expires),
        ("password", USER, None)
    );
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_password_delivers_over_mqtt_3_1_1() {
    right_password_delivers(MqttVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_password_delivers_over_mqtt_5() {
    right_password_delivers(MqttVersion::V5).await;
}

/// A wrong password: "refused" with the user name, nothing delivered, and attempts
/// `reconnect_max` apart (the jittered backoff from 100 ms would make many more).
async fn wrong_password_is_refused(mqtt: MqttVersion, code: &str) {
    let ca = TestCa::new("cloud CA");
    let (cloud, _passwords) = cloud_with_passwords(&ca);
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    fill(&queue, "a", 10).await;
    let mut s = with_password(&cloud, &ca, dir.path(), "wrong-password", mqtt);
    s.reconnect_min = Duration::from_millis(100);
    s.reconnect_max = Duration::from_secs(2);
    let (uplink, shutdown) = start_uplink(s, &queue, dir.path());
    let start = Instant::now();
    let mut watch = uplink.watch();
    loop {
        let state = watch.borrow_and_update().state.clone();
        if let UplinkState::Refused { reason } = &state {
            assert!(
                reason.contains(&format!("the cloud refused the credentials for {USER}"))
                    && reason.contains(code),
                "{reason}"
            );
            assert!(!reason.contains("wrong-password"), "{reason}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not refused: {state:?}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), watch.changed()).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = uplink.status();
    // Refused at once, then every 2 s: three or four attempts in just over 5 s.
    assert!(
        status.reconnects <= 4,
        "{} reconnects in 5 s",
        status.reconnects
    );
    assert_eq!(status.acked_total, 0);
    assert!(
        status
            .last_error
            .unwrap_or_default()
            .contains("refused the credentials")
    );
    let log = cloud.broker.log();
    assert!(
        log.contains("not authorised") || log.contains("bad"),
        "{log}"
    );
    shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_as_refused_credentials_over_mqtt_3_1_1() {
    wrong_password_is_refused(MqttVersion::V311, "not authorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_as_refused_credentials_over_mqtt_5() {
    wrong_password_is_refused(MqttVersion::V5, "not authorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_others_can_read_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = password_file(dir.path(), PASSWORD);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut s = settings(free_port(), UplinkTls::ServerAuth { ca_file: None });
    s.credentials = Some(UplinkCredentials::Password {
        username: USER.into(),
        password_file: path,
    });
    let queue = queue(dir.path()).await;
    let err = fieldlink_uplink::Uplink::start(
        s,
        std::sync::Arc::new(queue),
        std::sync::Arc::new(fieldlink_test_support::RecordingBus::new().0),
        dir.path(),
        fieldlink_core::shutdown::Shutdown::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("readable by other users"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}
