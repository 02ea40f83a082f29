//! `fieldlink demo` as a first-time user runs it: one command, nothing else installed or
//! configured; its values reach the stand-in cloud over TLS, its web UI takes the printed
//! login, and Ctrl-C removes everything it made.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fieldlink_test_support::web_client::{WebClient, form};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

#[tokio::test]
async fn the_demo_delivers_to_its_cloud_serves_its_ui_and_cleans_up_on_ctrl_c() {
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut next_line = |what: &str| -> String {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {what} from the demo; so far:\n{}", seen.join("\n")));
        seen.push(line.clone());
        line
    };
    let mut state = None;
    let (mut url, mut password) = (None, None);
    while url.is_none() {
        let line = next_line("banner");
        if let Some(rest) = line.split("(state in ").nth(1) {
            state = Some(PathBuf::from(rest.split(';').next().unwrap()));
        }
        if line.contains("Web UI:") {
            let words: Vec<&str> = line.split_whitespace().collect();
            url = Some(words[2].to_owned());
            password = Some(words[6].to_owned());
        }
    }
    let (state, url, password) = (state.unwrap(), url.unwrap(), password.unwrap());
    assert!(state.is_dir());

    // The summary line counts deliveries to the stand-in cloud.
    let start = Instant::now();
    loop {
        let line = next_line("summary");
        let delivered: u64 = line
            .split("delivered ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if delivered > 0 && line.contains("uplink connected") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing delivered"
        );
    }

    // The printed login works, and the boiler is read.
    let port: u16 = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut client = WebClient::new(
        ([127, 0, 0, 1], port).into(),
        &state.join("gateway/web/cert.pem"),
    );
    let login = client
        .post_form(
            "/login",
            &form(&[("username", "demo"), ("password", &password)]),
        )
        .await;
    assert_eq!(login.status, 303, "{}", login.body);
    let devices: serde_json::Value =
        serde_json::from_str(&client.get("/api/v1/devices").await.body).unwrap();
    assert_eq!(devices[0]["name"], "boiler");
    assert_eq!(devices[0]["online"], true, "{devices}");

    // Ctrl-C: a clean exit, and the state directory is gone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the demo did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    assert!(!state.exists(), "{} was left behind", state.display());
}
