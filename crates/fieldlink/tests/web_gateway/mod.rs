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

    /// How many of the gateway's threads are called `name`.
    pub fn threads_named(&self, name: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .unwrap()
            .filter(|task| {
                let comm = task.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|comm| comm.trim_end() == name)
            })
            .count()
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

/// pymodbus's TCP server (`crates/serial/tests/peers/modbus_peer.py`), driven over stdin;
/// killed on drop.
pub struct ModbusPeer {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    pub port: u16,
}

impl ModbusPeer {
    pub fn start() -> Self {
        use std::io::BufRead as _;
        let python = std::env::var_os("FIELDLINK_PYTHON").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python"),
            PathBuf::from,
        );
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../serial/tests/peers/modbus_peer.py");
        let port = free_port();
        let mut child = Command::new(&python)
            .arg(script)
            .args(["tcp", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/test makes the venv)", python.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Self {
            child,
            stdin,
            lines,
            port,
        };
        assert_eq!(peer.answer(), "ready");
        peer
    }

    fn answer(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .expect("the Modbus peer answers")
    }

    /// A command line (`set hr 1 215`, `get hr 1 1`) and its answer.
    pub fn cmd(&mut self, line: &str) -> String {
        use std::io::Write as _;
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.answer()
    }
}

impl Drop for ModbusPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[[devices]]` for a boiler on `peer`: `temp` (input register 0, ×0.1 °C) and a writable
/// `setpoint` (holding register 1, ×0.1 °C, 5 to 30).
pub fn boiler(peer: &ModbusPeer) -> String {
    format!(
        "[[devices]]\nname = \"boiler\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{}\"\n\
         unit = 1\ninterval = \"200ms\"\ntimeout = \"1s\"\n\
         [[devices.points]]\nname = \"temp\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n\
         scale = 0.1\nunit = \"°C\"\n\
         [[devices.points]]\nname = \"setpoint\"\ntable = \"holding\"\naddress = 1\ntype = \"u16\"\n\
         scale = 0.1\nunit = \"°C\"\nwritable = true\nmin = 5.0\nmax = 30.0\n",
        peer.port
    )
}

/// A JSON answer's body.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A JSON request that changes something: with the session's CSRF token.
pub async fn post_json(
    client: &mut WebClient,
    csrf: &str,
    path: &str,
    body: serde_json::Value,
) -> fieldlink_test_support::web_client::Answer {
    client
        .send(
            "POST",
            path,
            &[("content-type", "application/json"), ("x-csrf-token", csrf)],
            &body.to_string(),
        )
        .await
}

/// Waits until `/api/v1/status` shows the uplink connected.
pub async fn uplink_connected(client: &mut WebClient) {
    let start = Instant::now();
    loop {
        let answer = client.get("/api/v1/status").await;
        if answer.status == 200 && json(&answer.body)["uplink"]["state"] == "connected" {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the uplink never connected: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
