//! A gateway run through the real binary with the web UI on, for the web UI's tests (HTTP
//! client and browser).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::web_client::WebClient;
use fieldlink_test_support::{free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

/// A gateway with a broker listener, a route for `site/#` and the web UI, each on a free port.
pub struct Gateway {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub mqtt: u16,
    pub web: u16,
}

impl Gateway {
    pub fn configure() -> Self {
        Self::configure_with("")
    }

    /// With `extra` appended to the configuration file.
    pub fn configure_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mqtt, web) = (free_port(), free_port());
        let config = dir.path().join("fieldlink.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\ndata_dir = \"{}\"\nshutdown_grace = \"3s\"\n\
                 [[broker.listeners]]\nname = \"l\"\nbind = \"127.0.0.1\"\nport = {mqtt}\n\
                 [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\
                 [web]\nport = {web}\n{extra}\n",
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

    pub fn users(&self, args: &[&str], stdin: &str) -> std::process::Output {
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

    pub fn run(&mut self) {
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

    /// The one-time setup token the gateway logged (waits for it).
    pub fn setup_token(&self) -> String {
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(self.log()).unwrap();
            if let Some(token) = log
                .split("setup token ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                return token.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no token in:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The UI's address as a browser writes it.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.web)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    pub fn client(&self) -> WebClient {
        WebClient::new(
            ([127, 0, 0, 1], self.web).into(),
            &self.dir.path().join("data/web/cert.pem"),
        )
    }

    pub fn publish(&self, topic: &str, payload: &str) {
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
