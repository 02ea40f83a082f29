//! What survives an update: an A/B slot switch emulated with two root directories (each with
//! its own shipped `fieldlink.toml`) and one data directory, driven through the real binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::{free_port, wait_for_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

/// One root filesystem's shipped configuration.
struct Slot {
    config: PathBuf,
}

impl Slot {
    /// `root/etc/fieldlink/fieldlink.toml` with the data directory outside the root, a local
    /// listener and a route (no uplink: what is routed stays queued), plus `extra`.
    fn new(root: &Path, data: &Path, port: u16, extra: &str) -> Self {
        let etc = root.join("etc/fieldlink");
        std::fs::create_dir_all(&etc).unwrap();
        let config = etc.join("fieldlink.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\ndata_dir = \"{}\"\nshutdown_grace = \"3s\"\n\
                 [[broker.listeners]]\nname = \"local\"\nbind = \"127.0.0.1\"\nport = {port}\n\
                 [[routes]]\nname = \"all\"\nfilter = \"site/#\"\n{extra}",
                data.display()
            ),
        )
        .unwrap();
        Self { config }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a CLI command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn start(&self, log: &Path) -> Child {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// SIGTERM, then the exit code.
fn stop(mut child: Child) -> Option<i32> {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    wait(&mut child, Duration::from_secs(15))
}

fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

/// Publishes `n` QoS 1 messages through one mosquitto_pub connection.
fn publish(port: u16, n: usize) {
    let lines: String = (0..n).map(|i| format!("reading {i}\n")).collect();
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-q", "1", "-t", "site/boiler/temp", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

fn wait_queued(slot: &Slot, n: usize) {
    let want = format!("messages: {n} ");
    let start = Instant::now();
    loop {
        let stats = slot.ok(&["queue", "stats"]);
        if stats.contains(&want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not {n} queued: {stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the slot's gateway until its listener is up, checks that it holds `queued` messages,
/// and stops it cleanly.
fn boot(slot: &Slot, port: u16, queued: usize, log: &Path) {
    let child = slot.start(log);
    wait_for_port(addr(port), Duration::from_secs(20));
    wait_queued(slot, queued);
    assert_eq!(
        stop(child),
        Some(0),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn site_settings_and_1000_queued_messages_survive_a_switch_to_the_other_root_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let a = Slot::new(
        &dir.path().join("rootA"),
        &data,
        port,
        "[queue]\nmax_age = \"7d\"\n",
    );
    let b = Slot::new(
        &dir.path().join("rootB"),
        &data,
        port,
        "[queue]\nmax_age = \"30d\"\n",
    );
    let log = dir.path().join("gateway.log");

    // The operator changes settings on slot A through the CLI.
    a.ok(&["config", "set", "queue.when_full", "drop_newest"]);
    a.ok(&["config", "set", "broker.max_connections", "50"]);
    let refused = a.cli(&["config", "set", "queue.when_full", "sometimes"]);
    assert_eq!(
        refused.status.code(),
        Some(64),
        "an invalid change is refused"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("site.toml (proposed):"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // 1,000 messages queued on slot A.
    let child = a.start(&log);
    wait_for_port(addr(port), Duration::from_secs(20));
    publish(port, 1000);
    wait_queued(&a, 1000);
    assert_eq!(stop(child), Some(0));

    // Slot B: its own shipped values, the site's settings, the queue.
    let shown = b.ok(&["config", "show", "--origin"]);
    let site = data.join("config/site.toml");
    let line_of = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} not shown: {shown}"))
            .to_owned()
    };
    assert!(line_of("queue.max_age").contains("\"30d\""), "{shown}");
    assert!(
        line_of("queue.max_age").contains(&b.config.display().to_string()),
        "{shown}"
    );
    assert!(
        line_of("queue.when_full").contains("\"drop_newest\""),
        "{shown}"
    );
    assert!(
        line_of("queue.when_full").contains(&site.display().to_string()),
        "{shown}"
    );
    boot(&b, port, 1000, &log);
    // A change made on slot B is there after the switch back.
    b.ok(&["config", "set", "broker.max_connections", "60"]);

    // Back to slot A.
    let shown = a.ok(&["config", "show"]);
    assert!(shown.contains("broker.max_connections = 60"), "{shown}");
    assert!(shown.contains("queue.max_age = \"7d\""), "{shown}");
    boot(&a, port, 1000, &log);

    // Every change kept its predecessor.
    let history = a.ok(&["config", "history"]);
    assert_eq!(history.lines().count(), 2, "{history}");
    a.ok(&["config", "restore", "1"]);
    assert!(!a.ok(&["config", "show"]).contains("max_connections"));
}

#[test]
fn a_site_setting_this_release_rejects_stops_the_start_with_exit_64_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let slot = Slot::new(&dir.path().join("root"), &data, port, "");
    slot.ok(&["config", "set", "queue.when_full", "drop_newest"]);
    let site = data.join("config/site.toml");
    // As a release that accepted it would have left it: a value this one rejects.
    let written = std::fs::read_to_string(&site).unwrap();
    let text = format!("{written}[uplink]\nhost = \"cloud.example\"\nport = 0\n");
    std::fs::write(&site, &text).unwrap();
    let line = text.lines().position(|l| l == "port = 0").unwrap() + 1;

    let log = dir.path().join("gateway.log");
    let mut child = slot.start(&log);
    let code = wait(&mut child, Duration::from_secs(20));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:{line}:", site.display())),
        "the site file and line: {stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&site).unwrap(),
        text,
        "left as it is"
    );

    // A site file from a release this one cannot read: refused, untouched.
    let newer = "[site]\nformat = 4\nreadable_from = 3\n";
    std::fs::write(&site, newer).unwrap();
    let out = slot.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("newer fieldlink (format 4)"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&site).unwrap(), newer);
}

/// A read-only `/etc/fieldlink` (as on an image whose root filesystem is mounted read-only):
/// everything the operator and the gateway write goes to the data directory. A read-only
/// bind mount in a private mount namespace, because file modes stop nothing for root.
#[test]
fn the_gateway_works_with_its_configuration_directory_mounted_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let credentials = data.join("credentials");
    let slot = Slot::new(
        &dir.path().join("root"),
        &data,
        port,
        &format!(
            "[broker]\ncredentials_file = \"{}\"\n",
            credentials.display()
        ),
    );
    let etc = slot.config.parent().unwrap().to_owned();
    let namespace = ReadOnly::mount(&etc);
    let etc_s = etc.display().to_string();
    let touch = namespace.run(&["touch", &format!("{etc_s}/probe")], None);
    assert!(!touch.status.success(), "the mount is read-only");

    let config = slot.config.display().to_string();
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec![BIN, "--config", &config];
        all.extend_from_slice(args);
        let out = namespace.run(&all, stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    cli(&["config", "set", "queue.when_full", "drop_newest"], None);
    cli(&["credentials", "add", "sensor1"], Some("s3cret-pass\n"));
    assert!(credentials.exists());

    let log = dir.path().join("gateway.log");
    let child = Command::new("nsenter")
        .args(["--target", &namespace.pid().to_string(), "--mount", "--"])
        .args([BIN, "--config", &config, "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(addr(port), Duration::from_secs(20));
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", "sensor1", "-P", "s3cret-pass"])
        .args(["-t", "site/boiler/temp", "-m", "21.5"])
        .status()
        .unwrap();
    assert!(published.success());
    let start = Instant::now();
    while !cli(&["queue", "stats"], None).contains("messages: 1 ") {
        assert!(start.elapsed() < Duration::from_secs(10), "not queued");
        std::thread::sleep(Duration::from_millis(100));
    }
    // nsenter execs the gateway in place: its pid is the gateway's.
    assert_eq!(
        stop(child),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let written: Vec<_> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written, ["fieldlink.toml"], "nothing written to {etc_s}");
}

/// A private mount namespace in which `dir` is bind-mounted read-only, held open by a
/// sleeping process; commands enter it with nsenter. Killed on drop.
struct ReadOnly {
    holder: Child,
}

impl ReadOnly {
    fn mount(dir: &Path) -> Self {
        let dir = dir.display().to_string();
        let script = format!(
            "mount --bind '{dir}' '{dir}' && mount -o remount,bind,ro '{dir}' && echo ready \
             && exec sleep 600"
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "a private mount namespace needs root (CI runs as root)"
        );
        Self { holder }
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    fn run(&self, command: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("nsenter")
            .args(["--target", &self.pid().to_string(), "--mount", "--"])
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            std::io::Write::write_all(&mut input, text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
