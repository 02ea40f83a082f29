//! A real mosquitto broker for tests: loopback only, a config file written per test, killed on
//! drop.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for_port};

/// A running mosquitto.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto on a free loopback port with anonymous access and `extra` appended to
    /// the listener section (e.g. TLS settings, `require_certificate true`).
    pub fn start(extra: &str) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Starts mosquitto on `port` (to restart one on the same port).
    pub fn start_on(port: u16, extra: &str) -> Self {
        Self::spawn(port, extra, &["all"])
    }

    /// Starts mosquitto on `port` logging as a production broker does (its default: errors,
    /// warnings, notices, connections), not every packet. For benchmarks: logging three lines
    /// per message makes a broker write more to its log file than to its clients, which no
    /// cloud broker does.
    pub fn start_on_quietly(port: u16, extra: &str) -> Self {
        Self::spawn(port, extra, &["error", "warning", "notice", "information"])
    }

    fn spawn(port: u16, extra: &str, log_types: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let mut text = String::new();
        // Run as root, mosquitto drops to the 'mosquitto' user unless told otherwise and then
        // cannot write into the root-owned test directory.
        if is_root() {
            text.push_str("user root\n");
        }
        for log_type in log_types {
            text.push_str(&format!("log_type {log_type}\n"));
        }
        text.push_str(&format!(
            "log_dest file {}\npersistence false\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n",
            log.display()
        ));
        std::fs::File::create(&conf)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("mosquitto.conf written");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (the README's test command installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, Duration::from_secs(10));
        Self { child, addr, dir }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its working directory (put certificates and ACL files here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops it gracefully (SIGTERM), so that it saves its persistent state, and waits.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Its log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// The path of a file in its directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
