//! The OTA agent end to end, against the real parts: the gateway binary, a real mosquitto as
//! the cloud (requests published there, reports observed there), Debian's RAUC (`rauc
//! service` on a private D-Bus, slots A and B in files, a bootloader backend script recording
//! the primary slot and the marks), bundles signed at test time by a throw-away openssl CA,
//! and an HTTPS server (ours, in test-support) that can cut or slow a download.
//!
//! The reboot is a hook: `ota.reboot_command` touches a file; the test then stops the
//! gateway, "reboots" RAUC (its service starts again with the bootloader's primary slot as
//! the booted one) and starts the gateway again. Nothing else of a reboot is imitated.
//! Needs root (RAUC mounts bundles on loop devices): scripts/test runs as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::rauc::{BusPolicy, RAUC_POLICY, Rauc, Signer};
use fieldlink_test_support::{HttpsFiles, Mosquitto, Subscriber, free_port, wait_for_port};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");
const DEVICE: &str = "gw-ota";
/// Small bundles: the image is random bytes (it must not compress below 4 KiB).
const IMAGE: usize = 256 * 1024;

/// How the site's gateway and bus are set up.
#[derive(Default)]
struct Setup {
    /// RAUC's bus.
    policy: BusPolicy,
    /// The user the gateway runs as (root when `None`), as the unit's `User=` would.
    user: Option<&'static str>,
    /// The first reboot asked for is refused (the hook fails), as logind would refuse one
    /// that a block inhibitor holds back.
    reboot_refused_once: bool,
}

struct Site {
    dir: tempfile::TempDir,
    user: Option<&'static str>,
    cloud: Mosquitto,
    observer: Subscriber,
    rauc: Rauc,
    files: HttpsFiles,
    local: u16,
    gateway: Option<Child>,
    /// How many times the cloud saw the gateway subscribe to its install topic.
    subscriptions: usize,
}

impl Site {
    /// A cloud, RAUC booted on A, a bundle server, and a gateway config with `extra` lines in
    /// `[ota]` and `more` sections after it.
    fn new(extra: &str, more: &str) -> Self {
        Self::with(extra, more, Setup::default())
    }

    /// The same, set up as `setup` says.
    fn with(extra: &str, more: &str, setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some(user) = setup.user {
            // The user reads the configuration and the CA, owns the data directory and
            // appends to the reboot hook's file.
            run_ok(Command::new("chmod").arg("755").arg(dir.path()));
            std::fs::create_dir(dir.path().join("data")).unwrap();
            std::fs::write(dir.path().join("rebooted"), "").unwrap();
            run_ok(
                Command::new("chmod")
                    .arg("666")
                    .arg(dir.path().join("rebooted")),
            );
            run_ok(
                Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(dir.path().join("data")),
            );
        }
        let ca = TestCa::new("test CA");
        let server = ca.issue("localhost", &["localhost"]);
        let ca_file = write(dir.path(), "ca.pem", ca.pem());
        let cert = write(dir.path(), "server.pem", &server.cert_pem);
        let key = write(dir.path(), "server.key", &server.key_pem);
        let tls = free_port();
        let cloud = Mosquitto::start(&format!(
            "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca_file.display(),
            cert.display(),
            key.display()
        ));
        wait_for_port(([127, 0, 0, 1], tls).into(), Duration::from_secs(10));
        let observer = Subscriber::start(&[
            "-h",
            "127.0.0.1",
            "-p",
            &cloud.addr().port().to_string(),
            "-t",
            &format!("{DEVICE}/ota/status"),
            "-q",
            "1",
        ]);
        let rauc = Rauc::start_with(&setup.policy);
        std::fs::create_dir(dir.path().join("www")).unwrap();
        let files = HttpsFiles::start(dir.path().join("www"), &server.cert_pem, &server.key_pem);
        let local = free_port();
        // The reboot hook counts the reboots asked for, one line each.
        let rebooted = dir.path().join("rebooted");
        let reboot = if setup.reboot_refused_once {
            format!(
                "echo >> {f}; [ $(wc -l < {f}) -ge 2 ]",
                f = rebooted.display()
            )
        } else {
            format!("echo >> {}", rebooted.display())
        };
        new_boot(dir.path());
        let config = format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
             [[broker.listeners]]\nport = {local}\n\
             [uplink]\nhost = \"localhost\"\nport = {tls}\nclient_id = \"{DEVICE}\"\n\
             ca_file = \"{ca}\"\ntopic_prefix = \"cloud/\"\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
             [[uplink.rewrite]]\nlocal = \"fieldlink/ota/status\"\ncloud = \"{{device_id}}/ota/status\"\n\
             [[uplink.commands]]\ncloud = \"{{device_id}}/ota/install\"\nlocal = \"fieldlink/ota/install\"\n\
             [ota]\ndbus = \"{bus}\"\nreboot_command = [\"/bin/sh\", \"-c\", \"{reboot}\"]\n\
             download_timeout = \"5s\"\n{extra}\n{more}\n",
            data = dir.path().join("data").display(),
            ca = ca_file.display(),
            bus = rauc.bus_address(),
        );
        write(dir.path(), "fieldlink.toml", &config);
        Self {
            dir,
            user: setup.user,
            cloud,
            observer,
            rauc,
            files,
            local,
            gateway: None,
            subscriptions: 0,
        }
    }

    /// Starts the gateway and waits until the cloud has its subscription to the install topic.
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .unwrap();
        let mut command = match self.user {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", user, "--regid", user, "--clear-groups", BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("--config")
            .arg(self.dir.path().join("fieldlink.toml"))
            .arg("run")
            .env(BOOT_ID_ENV, self.dir.path().join("boot_id"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.gateway = Some(child);
        wait_for_port(([127, 0, 0, 1], self.local).into(), Duration::from_secs(20));
        let topic = format!("{DEVICE}/ota/install");
        self.until("the uplink's subscription to the install topic", || {
            self.cloud.log().matches(&topic).count() > self.subscriptions
        });
        self.subscriptions = self.cloud.log().matches(&topic).count();
    }

    /// SIGTERM, and waits for the gateway to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// The machine reboots: the gateway stops, RAUC comes back with the bootloader's primary
    /// slot booted, the gateway starts.
    fn reboot(&mut self) {
        self.stop();
        new_boot(self.dir.path());
        self.rauc.reboot();
        self.start();
    }

    fn www(&self, name: &str) -> PathBuf {
        self.dir.path().join("www").join(name)
    }

    fn url(&self, name: &str) -> String {
        format!("https://localhost:{}/{name}", self.files.addr().port())
    }

    /// A bundle served as `name`: its image and SHA-256.
    fn bundle(&self, name: &str, version: &str, signer: Signer) -> (Vec<u8>, String) {
        let image = self.rauc.bundle(version, IMAGE, signer, &self.www(name));
        (image, sha256(&self.www(name)))
    }

    /// Publishes a request on the cloud.
    fn request(&self, payload: &str) {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.cloud.addr().port().to_string(),
            ])
            .args([
                "-t",
                &format!("{DEVICE}/ota/install"),
                "-q",
                "1",
                "-m",
                payload,
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn install(&self, id: &str, name: &str, sha: &str, version: &str) {
        self.request(&format!(
            r#"{{"id":"{id}","url":"{}","sha256":"{sha}","version":"{version}"}}"#,
            self.url(name)
        ));
    }

    /// Every report the cloud received, in order.
    fn reports(&self) -> Vec<Value> {
        self.observer
            .received()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first report of `id` in `state`; waits up to 60 s.
    fn report(&self, id: &str, state: &str) -> Value {
        let mut found = None;
        self.until(&format!("a report of {id} in state {state}"), || {
            found = self
                .reports()
                .into_iter()
                .find(|r| r["id"] == id && r["state"] == state);
            found.is_some()
        });
        found.unwrap()
    }

    /// The first report without an id in `state`.
    fn report_without_id(&self, state: &str) -> Value {
        let mut found = None;
        self.until(&format!("a report without id in state {state}"), || {
            found = self
                .reports()
                .into_iter()
                .find(|r| r["id"].is_null() && r["state"] == state);
            found.is_some()
        });
        found.unwrap()
    }

    fn states(&self, id: &str) -> Vec<String> {
        self.reports()
            .iter()
            .filter(|r| r["id"] == id)
            .map(|r| r["state"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    fn reboots(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("rebooted"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn ota_status(&self, json: bool) -> String {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.dir.path().join("fieldlink.toml"))
            .args(["ota", "status"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn until(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}\nreports: {:#?}\ngateway log:\n{}\nRAUC log:\n{}",
                self.observer.received(),
                std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default(),
                self.rauc.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn part_len(&self) -> u64 {
        let dir = self.dir.path().join("data/ota");
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The agent's seam for the kernel's boot id: the file the tests' "reboot" renews.
const BOOT_ID_ENV: &str = "FIELDLINK_OTA_BOOT_ID_FILE";

/// A new boot id in `dir`'s `boot_id`.
fn new_boot(dir: &Path) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(dir.join("boot_id"), format!("test-boot-{nanos}\n")).unwrap();
}

/// Runs `cmd`; panics with its output when it fails.
fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_signed_bundle_is_installed_and_kept_after_a_healthy_boot() {
    let mut site = Site::new("health_deadline = \"20s\"\nhealth_settle = \"1s\"", "");
    site.start();
    let (image, sha) = site.bundle("v1.1.raucb", "1.1.0", Signer::Trusted);
    site.install("up-1", "v1.1.raucb", &sha, "1.1.0");

    // Installed into the inactive slot, B, which is primary now; the reboot asked for.
    site.report("up-1", "rebooting");
    assert!(
        site.rauc.slot_starts_with("B", &image),
        "slot B holds the image"
    );
    assert!(!site.rauc.slot_starts_with("A", &image[..4096]));
    assert_eq!(site.rauc.primary(), "B");
    site.until("the reboot hook", || site.reboots() == 1);
    let states = site.states("up-1");
    for step in [
        "accepted",
        "downloading",
        "verifying",
        "installing",
        "installed",
        "rebooting",
    ] {
        assert!(
            states.iter().any(|s| s == step),
            "{step} missing from {states:?}"
        );
    }
    let installed = site.report("up-1", "installed");
    assert_eq!(installed["slot"], "B", "{installed}");
    assert!(
        site.reports()
            .iter()
            .any(|r| r["state"] == "downloading" && r["progress"] == 100),
        "download progress up to 100%"
    );

    // A second request while one is in hand is refused with the running one's id.
    site.install("up-2", "v1.1.raucb", &sha, "1.1.0");
    let refused = site.report("up-2", "refused");
    assert_eq!(refused["running"], "up-1", "{refused}");

    // The boot into B: the health check passes, B is marked good.
    site.reboot();
    assert_eq!(site.rauc.booted(), "B");
    let done = site.report("up-1", "done");
    assert_eq!(done["slot"], "B", "{done}");
    assert!(
        site.rauc.boot_log().contains("set-state B good"),
        "{}",
        site.rauc.boot_log()
    );
    assert_eq!(site.reboots(), 1, "no second reboot");
    let status = site.ota_status(false);
    assert!(status.contains("booted slot: B"), "{status}");
    assert!(status.contains("version 1.1.0"), "{status}");
    assert!(
        status.contains("last update: up-1 (version 1.1.0): done"),
        "{status}"
    );
    let json: Value = serde_json::from_str(&site.ota_status(true)).unwrap();
    assert_eq!(json["job"]["phase"], "done", "{json:#}");

    // Going back to 1.0.0 must be asked for.
    let (_, old_sha) = site.bundle("v1.0.raucb", "1.0.0", Signer::Trusted);
    site.install("down-1", "v1.0.raucb", &old_sha, "1.0.0");
    let refused = site.report("down-1", "refused");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("older than the running 1.1.0"),
        "{refused}"
    );
    site.request(&format!(
        r#"{{"id":"down-2","url":"{}","sha256":"{old_sha}","version":"1.0.0","allow_downgrade":true}}"#,
        site.url("v1.0.raucb")
    ));
    site.report("down-2", "installed");
    assert_eq!(site.rauc.primary(), "A");
}

#[test]
fn bad_requests_wrong_signatures_and_wrong_sums_install_nothing() {
    let mut site = Site::new("", "");
    site.start();

    site.request("{not json");
    let r = site.report_without_id("refused");
    assert!(
        r["error"].as_str().unwrap().contains("not a JSON object"),
        "{r}"
    );
    site.request(r#"{"id":"r-1","url":"http://localhost/b.raucb","sha256":"00","version":"1"}"#);
    let r = site.report("r-1", "refused");
    assert!(r["error"].as_str().unwrap().contains("https://"), "{r}");
    site.request(r#"{"id":"r-2","url":"https://localhost/b.raucb","version":"1"}"#);
    let r = site.report("r-2", "refused");
    assert_eq!(r["error"], "the request has no \"sha256\"", "{r}");

    // Signed by a key RAUC's keyring does not know: RAUC's refusal, in its words.
    let (_, sha) = site.bundle("stranger.raucb", "2.0.0", Signer::Stranger);
    site.install("sig-1", "stranger.raucb", &sha, "2.0.0");
    let failed = site.report("sig-1", "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("RAUC refused the bundle"), "{failed}");
    assert!(error.contains("signature verification failed"), "{failed}");

    // The right bundle, the wrong SHA-256: refused before RAUC sees it.
    let (_, _) = site.bundle("good.raucb", "2.0.0", Signer::Trusted);
    let wrong = "0".repeat(64);
    site.install("sum-1", "good.raucb", &wrong, "2.0.0");
    let failed = site.report("sum-1", "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("SHA-256 mismatch"),
        "{failed}"
    );
    assert!(!site.states("sum-1").iter().any(|s| s == "installing"));

    // The version in the request must be the bundle's.
    let sha = sha256(&site.www("good.raucb"));
    site.install("ver-1", "good.raucb", &sha, "2.0.1");
    let failed = site.report("ver-1", "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("the bundle is version 2.0.0"),
        "{failed}"
    );

    // Nothing installed: A still primary, no bootloader call, no reboot, no bundle left.
    assert_eq!(site.rauc.primary(), "A");
    assert_eq!(site.rauc.boot_log(), "");
    assert_eq!(site.reboots(), 0);
    assert_eq!(site.part_len(), 0);
    let status = site.ota_status(false);
    assert!(
        status.contains("last update: ver-1 (version 2.0.1): failed"),
        "{status}"
    );
}

#[test]
fn no_room_for_the_bundle_is_refused_before_downloading() {
    // More to keep free than any disk has: the free-space check (statvfs) must refuse.
    let mut site = Site::new("keep_free = 1125899906842624", "");
    site.start();
    let (_, sha) = site.bundle("v2.raucb", "2.0.0", Signer::Trusted);
    site.install("space-1", "v2.raucb", &sha, "2.0.0");
    let failed = site.report("space-1", "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("not enough free space"), "{failed}");
    assert!(error.contains("ota.keep_free"), "{failed}");
    assert_eq!(site.part_len(), 0, "nothing written");
    assert_eq!(site.rauc.primary(), "A");
}

#[test]
fn a_cut_download_is_resumed_with_range() {
    let mut site = Site::new("", "");
    site.start();
    let (image, sha) = site.bundle("v3.raucb", "3.0.0", Signer::Trusted);
    site.files.cut_next_after(100_000);
    site.install("cut-1", "v3.raucb", &sha, "3.0.0");
    site.report("cut-1", "rebooting");
    assert!(site.rauc.slot_starts_with("B", &image));
    let served = site.files.served();
    assert_eq!(served[0].range_from, None, "{served:?}");
    assert_eq!(
        served[1].range_from,
        Some(100_000),
        "resumed where the cut was: {served:?}"
    );
}

#[test]
fn a_restart_of_fieldlink_mid_download_resumes_it() {
    let mut site = Site::new("", "");
    site.start();
    let (image, sha) = site.bundle("v4.raucb", "4.0.0", Signer::Trusted);
    site.files.throttle(Some(64 * 1024));
    site.install("restart-1", "v4.raucb", &sha, "4.0.0");
    site.until("part of the download", || site.part_len() >= 64 * 1024);
    site.stop();
    let kept = site.part_len();
    assert!(kept > 0 && kept < 300_000, "{kept}");
    site.files.throttle(None);
    site.start();
    site.report("restart-1", "rebooting");
    assert!(site.rauc.slot_starts_with("B", &image));
    let served = site.files.served();
    let resumed = served.last().unwrap().range_from.unwrap();
    assert!(
        resumed >= kept - kept % 4096 && resumed <= kept,
        "{served:?} {kept}"
    );
}

#[test]
fn a_failed_health_check_marks_the_slot_bad_and_the_rollback_is_reported() {
    // A field device nobody answers for: the bridge stays "offline", so the health check
    // ("devices") fails at its deadline.
    let dead = free_port();
    let devices = format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{dead}\"\n\
         unit = 1\ninterval = \"1s\"\n[[devices.points]]\nname = \"power\"\ntable = \"holding\"\n\
         address = 0\ntype = \"u16\"\n"
    );
    let mut site = Site::new(
        "health_deadline = \"4s\"\nhealth_settle = \"2s\"\nhealth_checks = [\"components\", \"uplink\", \"devices\"]",
        &devices,
    );
    site.start();
    let (_, sha) = site.bundle("v5.raucb", "5.0.0", Signer::Trusted);
    site.install("bad-1", "v5.raucb", &sha, "5.0.0");
    site.report("bad-1", "rebooting");
    site.until("the reboot hook", || site.reboots() == 1);

    site.reboot();
    assert_eq!(site.rauc.booted(), "B");
    let failed = site.report("bad-1", "health-failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("health check failed"), "{failed}");
    assert!(error.contains("field devices are not polling"), "{failed}");
    site.until("the second reboot", || site.reboots() == 2);
    assert!(
        site.rauc.boot_log().contains("set-state B bad"),
        "{}",
        site.rauc.boot_log()
    );
    assert_eq!(site.rauc.primary(), "A", "the bootloader falls back");

    site.reboot();
    assert_eq!(site.rauc.booted(), "A");
    let back = site.report("bad-1", "rolled-back");
    assert_eq!(back["slot"], "A", "{back}");
    assert!(
        back["error"]
            .as_str()
            .unwrap()
            .contains("health check failed"),
        "{back}"
    );
    let status = site.ota_status(false);
    assert!(status.contains("booted slot: A"), "{status}");
    assert!(status.contains("rolled-back"), "{status}");
}

#[test]
fn a_fall_back_during_the_health_check_is_a_rollback_not_a_kept_update() {
    // The new slot keeps stopping during its health check (a watchdog reset, say) until the
    // bootloader has used up its tries and boots the old slot again.
    let dead = free_port();
    let devices = format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{dead}\"\n\
         unit = 1\ninterval = \"1s\"\n[[devices.points]]\nname = \"power\"\ntable = \"holding\"\n\
         address = 0\ntype = \"u16\"\n"
    );
    let mut site = Site::new(
        "health_deadline = \"60s\"\nhealth_settle = \"1s\"\nhealth_checks = [\"components\", \"devices\"]",
        &devices,
    );
    site.start();
    let (_, sha) = site.bundle("v8.raucb", "8.0.0", Signer::Trusted);
    site.install("fallback-1", "v8.raucb", &sha, "8.0.0");
    site.report("fallback-1", "rebooting");
    site.until("the reboot hook", || site.reboots() == 1);
    site.reboot();
    site.report("fallback-1", "checking");
    site.rauc.set_primary("A");
    site.reboot();
    assert_eq!(site.rauc.booted(), "A");
    let back = site.report("fallback-1", "rolled-back");
    assert_eq!(back["slot"], "A", "{back}");
    assert!(
        back["error"]
            .as_str()
            .unwrap()
            .contains("stopped during its health check"),
        "{back}"
    );
    let states = site.states("fallback-1");
    assert!(!states.iter().any(|s| s == "done"), "{states:?}");
    assert!(
        !site.rauc.boot_log().contains("set-state A good"),
        "the old slot is not marked for the update: {}",
        site.rauc.boot_log()
    );
}

#[test]
fn a_restart_before_the_reboot_comes_asks_for_it_again_and_reports_no_rollback() {
    // The first reboot is refused (a block inhibitor, say), then fieldlink restarts, still in the
    // same boot on slot A, with "rebooting" in its state file.
    let mut site = Site::with(
        "health_deadline = \"20s\"\nhealth_settle = \"1s\"",
        "",
        Setup {
            reboot_refused_once: true,
            ..Setup::default()
        },
    );
    site.start();
    let (_, sha) = site.bundle("v6.raucb", "6.0.0", Signer::Trusted);
    site.install("again-1", "v6.raucb", &sha, "6.0.0");
    site.report("again-1", "rebooting");
    site.until("the refused reboot", || site.reboots() == 1);
    site.stop();
    site.start();
    // Not a rollback: the reboot is still to come, and is asked for again.
    site.until("the reboot asked for again", || site.reboots() == 2);
    site.until("a second rebooting report", || {
        site.states("again-1")
            .iter()
            .filter(|s| *s == "rebooting")
            .count()
            == 2
    });
    assert_eq!(site.rauc.primary(), "B");
    // The reboot comes: B is booted, checked and kept; no rollback was ever reported.
    site.reboot();
    site.report("again-1", "done");
    let states = site.states("again-1");
    assert!(!states.iter().any(|s| s == "rolled-back"), "{states:?}");
    assert!(site.rauc.boot_log().contains("set-state B good"));
}

#[test]
fn a_restart_during_the_health_check_keeps_its_deadline() {
    // A field device nobody answers for: the check fails at its deadline of 20 s.
    let dead = free_port();
    let devices = format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{dead}\"\n\
         unit = 1\ninterval = \"1s\"\n[[devices.points]]\nname = \"power\"\ntable = \"holding\"\n\
         address = 0\ntype = \"u16\"\n"
    );
    let mut site = Site::new(
        "health_deadline = \"20s\"\nhealth_settle = \"2s\"\nhealth_checks = [\"components\", \"uplink\", \"devices\"]",
        &devices,
    );
    site.start();
    let (_, sha) = site.bundle("v7.raucb", "7.0.0", Signer::Trusted);
    site.install("deadline-1", "v7.raucb", &sha, "7.0.0");
    site.report("deadline-1", "rebooting");
    site.until("the reboot hook", || site.reboots() == 1);
    site.reboot();
    site.report("deadline-1", "checking");
    // The check began before its report arrived: at most 20 s from here.
    let began = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    site.stop();
    site.start();
    let checking = || -> Vec<Value> {
        site.reports()
            .into_iter()
            .filter(|r| r["id"] == "deadline-1" && r["state"] == "checking")
            .collect()
    };
    site.until("the resumed check's report", || checking().len() == 2);
    let resumed = checking()[1]["message"].as_str().unwrap_or("").to_owned();
    let left: u64 = resumed
        .strip_prefix("resumed after a restart of fieldlink: ")
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time left in {resumed:?}"));
    assert!(
        left <= 15 && resumed.ends_with("of the 20 s deadline left"),
        "{resumed}"
    );
    site.report("deadline-1", "health-failed");
    // A fresh deadline would end 20 s after the restart, 26 s or more from `began`.
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(24),
        "failed {took:?} after the check began"
    );
    site.until("the reboot after the failed check", || site.reboots() == 2);
}

// ---------------------------------------------------------------------------------------------
// The shipped service's rights: the D-Bus policy (RAUC's calls) and the polkit rule (logind's
// Reboot), tested on a private system bus set up as Debian's, with RAUC's own policy from
// Debian's rauc-service, as the user the unit runs as.

/// A file of the repository, as the packages install it.
fn shipped(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The service's system user, made here as the package makes it (before any bus starts: the
/// bus resolves the user's name when it reads its policy).
fn service_user() -> &'static str {
    let exists = || {
        Command::new("id")
            .arg("fieldlink")
            .output()
            .unwrap()
            .status
            .success()
    };
    if !exists() {
        // Tests run side by side: another may be making it at the same moment.
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", "--user-group", "fieldlink"])
            .status();
        assert!(exists(), "cannot make the user fieldlink (useradd)");
    }
    "fieldlink"
}

/// The system bus of a board with the package installed: RAUC's and polkit's policies, the
/// package's in /usr/share/dbus-1/system.d, its RAUC lock in /etc/dbus-1/system.d (unless
/// `lock` is false: then RAUC's own policy rules).
fn installed_bus(lock: bool) -> BusPolicy {
    assert!(
        Path::new(RAUC_POLICY).exists(),
        "{RAUC_POLICY} is missing: scripts/test installs rauc-service"
    );
    BusPolicy::System {
        share: vec![
            PathBuf::from(RAUC_POLICY),
            PathBuf::from(POLKIT_POLICY),
            shipped("systemd/dbus/fieldlink.conf"),
        ],
        etc: if lock {
            vec![shipped("systemd/dbus/fieldlink-rauc.conf")]
        } else {
            Vec::new()
        },
    }
}

/// polkit's own D-Bus policy (Debian's polkitd).
const POLKIT_POLICY: &str = "/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf";

/// `dbus-send` to RAUC as `user`:`group`: the reply, or the error.
fn call_rauc(
    rauc: &Rauc,
    user: &str,
    group: &str,
    method: &str,
    args: &[&str],
) -> Result<String, String> {
    let out = Command::new("setpriv")
        .args(["--reuid", user, "--regid", group, "--clear-groups"])
        .args([
            "dbus-send",
            "--system",
            "--print-reply",
            "--dest=de.pengutronix.rauc",
            "/",
        ])
        .arg(method)
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", rauc.bus_address())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

const GET_SLOT_STATUS: &str = "de.pengutronix.rauc.Installer.GetSlotStatus";
const GET_PROPERTY: &str = "org.freedesktop.DBus.Properties.Get";
const BOOT_SLOT: [&str; 2] = ["string:de.pengutronix.rauc.Installer", "string:BootSlot"];

fn refused(reply: Result<String, String>, what: &str) {
    match reply {
        Err(e) => assert!(
            e.contains("org.freedesktop.DBus.Error.AccessDenied"),
            "{what}: refused, but not by the bus's policy: {e}"
        ),
        Ok(reply) => panic!("{what}: allowed: {reply}"),
    }
}

#[test]
fn the_agent_runs_as_the_service_user_under_the_shipped_dbus_policy() {
    let user = service_user();
    let mut site = Site::with(
        "health_deadline = \"20s\"\nhealth_settle = \"1s\"",
        "",
        Setup {
            policy: installed_bus(true),
            user: Some(user),
            ..Setup::default()
        },
    );
    site.start();
    let (image, sha) = site.bundle("v1.1.raucb", "1.1.0", Signer::Trusted);
    site.install("as-user-1", "v1.1.raucb", &sha, "1.1.0");
    // Info, InstallBundle, the Progress and LastError properties, GetSlotStatus, BootSlot.
    site.report("as-user-1", "rebooting");
    assert!(site.rauc.slot_starts_with("B", &image));
    assert_eq!(site.rauc.primary(), "B");
    site.until("the reboot hook", || site.reboots() == 1);
    // Mark("good", "booted") after the boot into B.
    site.reboot();
    site.report("as-user-1", "done");
    assert!(
        site.rauc.boot_log().contains("set-state B good"),
        "{}",
        site.rauc.boot_log()
    );
    let log = std::fs::read_to_string(site.dir.path().join("gateway.log")).unwrap();
    assert!(!log.contains("AccessDenied"), "{log}");
}

#[test]
fn the_shipped_dbus_policy_refuses_other_users_and_other_calls() {
    let user = service_user();
    let rauc = Rauc::start_with(&installed_bus(true));
    // The agent's calls.
    let slots = call_rauc(&rauc, user, user, GET_SLOT_STATUS, &[]).unwrap();
    assert!(slots.contains("rootfs.0"), "{slots}");
    let booted = call_rauc(&rauc, user, user, GET_PROPERTY, &BOOT_SLOT).unwrap();
    assert!(booted.contains("\"A\""), "{booted}");
    // Calls the agent does not make: refused to its user.
    refused(
        call_rauc(
            &rauc,
            user,
            user,
            "de.pengutronix.rauc.Installer.GetPrimary",
            &[],
        ),
        "GetPrimary as fieldlink",
    );
    refused(
        call_rauc(
            &rauc,
            user,
            user,
            "de.pengutronix.rauc.Installer.Install",
            &["string:/nonexistent.raucb"],
        ),
        "the deprecated Install as fieldlink",
    );
    // Another user: nothing at all.
    refused(
        call_rauc(&rauc, "nobody", "nogroup", GET_SLOT_STATUS, &[]),
        "GetSlotStatus as nobody",
    );
    refused(
        call_rauc(
            &rauc,
            "nobody",
            "nogroup",
            "de.pengutronix.rauc.Installer.Mark",
            &["string:bad", "string:booted"],
        ),
        "Mark as nobody",
    );
    refused(
        call_rauc(&rauc, "nobody", "nogroup", GET_PROPERTY, &BOOT_SLOT),
        "reading BootSlot as nobody",
    );
    // Root: everything (the rauc command line of an administrator).
    call_rauc(
        &rauc,
        "root",
        "root",
        "de.pengutronix.rauc.Installer.GetPrimary",
        &[],
    )
    .unwrap();
    assert!(rauc.cli(&["status"]).0, "rauc status as root");
    drop(rauc);

    // Without the package's lock in /etc, RAUC's own policy lets every user in.
    let rauc = Rauc::start_with(&installed_bus(false));
    call_rauc(&rauc, "nobody", "nogroup", GET_SLOT_STATUS, &[])
        .expect("RAUC's own policy allows everyone: the lock is what refuses");
}

/// polkitd on the site's bus, reading rules from `rules` only: a private mount namespace puts
/// that directory over /usr/share/polkit-1/rules.d (and an empty one over /etc/polkit-1/rules.d),
/// so the machine's own rules neither help nor change. Killed on drop.
struct Polkit {
    child: Child,
}

impl Polkit {
    fn start(bus: &str, rules: &Path, empty: &Path, log: &Path) -> Self {
        let daemon = "/usr/lib/polkit-1/polkitd";
        assert!(
            Path::new(daemon).exists(),
            "{daemon} is missing: scripts/test installs polkitd"
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /usr/share/polkit-1/rules.d && \
                 mount --bind \"$2\" /etc/polkit-1/rules.d && exec \"$3\"",
            )
            .arg("sh")
            .arg(rules)
            .arg(empty)
            .arg(daemon)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            // Its messages go to both.
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(log).unwrap())
            .spawn()
            .unwrap();
        let polkit = Self { child };
        let start = Instant::now();
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("Acquired the name org.freedesktop.PolicyKit1")
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "polkitd did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        polkit
    }
}

impl Drop for Polkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process of `uid`:`gid` that sleeps, for polkit to judge; killed on drop.
struct Subject(Child);

impl Subject {
    fn new(uid: &str, gid: &str) -> Self {
        Self(
            Command::new("setpriv")
                .args([
                    "--reuid",
                    uid,
                    "--regid",
                    gid,
                    "--clear-groups",
                    "sleep",
                    "120",
                ])
                .spawn()
                .unwrap(),
        )
    }

    /// `pkcheck`'s exit code for `action`: 0 allowed, 2 only with an administrator's password.
    fn check(&self, bus: &str, action: &str) -> i32 {
        let out = Command::new("pkcheck")
            .args(["--action-id", action, "--process"])
            .arg(self.0.id().to_string())
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0 || code == 2,
            "pkcheck {action}: {code} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        code
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_shipped_polkit_rule_lets_the_service_user_reboot_and_no_one_else() {
    let user = service_user();
    // The bus only carries polkit's answers here (RAUC is on it too, unused).
    let rauc = Rauc::start_with(&installed_bus(true));
    let bus = rauc.bus_address();
    let dir = tempfile::tempdir().unwrap();
    let (rules, empty) = (dir.path().join("rules"), dir.path().join("empty"));
    std::fs::create_dir(&rules).unwrap();
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy(
        shipped("systemd/polkit/fieldlink.rules"),
        rules.join("fieldlink.rules"),
    )
    .unwrap();
    // polkitd runs as its own user: it must read the rule.
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(dir.path()));
    let _polkit = Polkit::start(&bus, &rules, &empty, &dir.path().join("polkitd.log"));

    let agent = Subject::new(user, user);
    let other = Subject::new("nobody", "nogroup");
    // A dynamic user's uid has no name without libnss-systemd: what the rule would see if the
    // unit still ran with DynamicUser=.
    let nameless = Subject::new("61873", "61873");
    std::thread::sleep(Duration::from_millis(200));
    let reboot = "org.freedesktop.login1.reboot";
    let while_others_are_logged_in = "org.freedesktop.login1.reboot-multiple-sessions";
    assert_eq!(agent.check(&bus, reboot), 0, "fieldlink may reboot");
    assert_eq!(agent.check(&bus, while_others_are_logged_in), 0);
    // Nothing more: inhibitors still hold, no power-off.
    assert_eq!(
        agent.check(&bus, "org.freedesktop.login1.reboot-ignore-inhibit"),
        2
    );
    assert_eq!(agent.check(&bus, "org.freedesktop.login1.power-off"), 2);
    // Nobody else.
    assert_eq!(other.check(&bus, reboot), 2, "another user may not reboot");
    assert_eq!(other.check(&bus, while_others_are_logged_in), 2);
    assert_eq!(
        nameless.check(&bus, reboot),
        2,
        "a nameless uid may not reboot"
    );
}
