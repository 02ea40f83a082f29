//! A real RabbitMQ (Debian's `rabbitmq-server`, 3.10) with its MQTT plugin and the OAuth 2.0
//! backend, as a second cloud broker: loopback only, its own state folder, node name and Erlang
//! ports, stopped on drop. It takes 10-20 s to start: tests share one per scenario.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, wait_for_port};

/// How long RabbitMQ may take to listen (about 14 s on a quiet 2-core machine; CI is busier).
const START_LIMIT: Duration = Duration::from_secs(90);

/// A RabbitMQ node for one test.
#[derive(Debug)]
pub struct RabbitMq {
    dir: tempfile::TempDir,
    node: String,
    /// Plain MQTT (the test's own observer).
    pub mqtt_port: u16,
    /// MQTT over TLS, when the configuration turns it on (`mqtt.listeners.ssl.default`).
    pub tls_port: u16,
    dist_port: u16,
    epmd_port: u16,
    config: String,
    child: Option<Child>,
}

impl RabbitMq {
    /// A node not started yet: write its files ([`RabbitMq::file`]), then [`RabbitMq::start`].
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self {
            node: format!("fieldlink-test-{}@localhost", free_port()),
            dir,
            mqtt_port: free_port(),
            tls_port: free_port(),
            dist_port: free_port(),
            epmd_port: free_port(),
            config: String::new(),
            child: None,
        }
    }

    /// Writes `name` into the node's folder (certificates, keys), readable by RabbitMQ.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("file written");
        path
    }

    /// Starts the node with the plain MQTT listener, anonymous logins off, and `config`
    /// (rabbitmq.conf lines: TLS listener, users, OAuth 2.0) appended. Returns once the MQTT
    /// listeners accept connections.
    pub fn start(&mut self, config: &str) {
        self.config = format!(
            "listeners.tcp = none\n\
             mqtt.listeners.tcp.default = 127.0.0.1:{}\n\
             mqtt.allow_anonymous = false\n\
             loopback_users = none\n\
             log.file.level = info\n\
             {config}\n",
            self.mqtt_port
        );
        self.launch();
    }

    /// Starts the node again, with its state (after [`RabbitMq::stop`]).
    pub fn restart(&mut self) {
        self.launch();
    }

    fn launch(&mut self) {
        let dir = self.dir.path();
        std::fs::write(dir.join("rabbitmq.conf"), &self.config).expect("rabbitmq.conf written");
        std::fs::write(
            dir.join("enabled_plugins"),
            "[rabbitmq_mqtt,rabbitmq_auth_backend_oauth2].\n",
        )
        .expect("enabled_plugins written");
        if crate::mosquitto::is_root() {
            // rabbitmq-server drops to the rabbitmq user, which must own its folder.
            let ok = Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of the RabbitMQ folder failed");
        }
        let child = self
            .command("rabbitmq-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server is installed (scripts/test installs it)");
        self.child = Some(child);
        wait_for_port(([127, 0, 0, 1], self.mqtt_port).into(), START_LIMIT);
        if self.config.contains("mqtt.listeners.ssl.default") {
            wait_for_port(([127, 0, 0, 1], self.tls_port).into(), START_LIMIT);
        }
    }

    /// Stops the node (SIGTERM to the Erlang VM, a clean shutdown) and waits for it to end.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let start = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && start.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.path().join("pid"));
    }

    /// Its log so far (for assertions and their messages).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("log")) {
            for entry in entries.flatten() {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }

    /// The Erlang VM's process id, from the pid file RabbitMQ writes.
    fn pid(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.path().join("pid")).ok()?;
        let pid = text.trim().to_owned();
        (!pid.is_empty()).then_some(pid)
    }

    fn command(&self, program: &str) -> Command {
        let dir = self.dir.path();
        let mut cmd = Command::new(program);
        cmd.env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("HOME", dir);
        cmd
    }
}

impl Default for RabbitMq {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
        // The node started its own epmd on its own port: stop it too.
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
