//! A real `mosquitto_sub`, ready when the broker has acknowledged its subscription: tests
//! publish after [`Subscriber::start`] returns instead of sleeping and hoping.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running `mosquitto_sub`; killed on drop.
pub struct Subscriber {
    child: Child,
    received: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

/// What a finished [`Subscriber`] printed.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// The messages it printed, one per line (its debug lines left out).
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Subscriber {
    /// Starts `mosquitto_sub` with `args` (plus `-d`, to see the SUBACK) and returns once the
    /// broker has acknowledged the subscription. Panics, with what it said, if it exits or
    /// gets no SUBACK within 10 s.
    pub fn start(args: &[&str]) -> Self {
        // Line-buffered: into a pipe, stdio would hold the SUBACK line back until exit.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg("mosquitto_sub")
            .args(args)
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub is installed (the README's test command installs it)");
        let stdout = child.stdout.take().expect("piped stdout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let (subscribed, ready) = mpsc::channel();
        let lines = received.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("Subscribed (mid:") {
                    let _ = subscribed.send(());
                } else if !is_debug(&line) {
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }
        });
        let mut subscriber = Self {
            child,
            received,
            reader: Some(reader),
        };
        if ready.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = subscriber.child.kill();
            let finished = subscriber.finish();
            panic!(
                "mosquitto_sub {args:?} got no SUBACK: {}\n{}",
                finished.status, finished.stderr
            );
        }
        subscriber
    }

    /// The messages received so far.
    pub fn received(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for it to exit (after its `-C` count or `-W` timeout) and returns what it printed.
    pub fn finish(mut self) -> Finished {
        let status = self.child.wait().expect("mosquitto_sub is waited for");
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        let mut stdout = self.received().join("\n");
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

/// mosquitto_sub's `-d` lines: "Client <id> sending CONNECT", "Client <id> received PUBLISH …".
fn is_debug(line: &str) -> bool {
    line.starts_with("Client ") && (line.contains(" sending ") || line.contains(" received "))
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
