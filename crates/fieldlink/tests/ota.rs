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
use fieldlink_test_support::rauc::{Rauc, Signer};
use fieldlink_test_support::{HttpsFiles, Mosquitto, Subscriber, free_port, wait_for_port};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");
const DEVICE: &str = "gw-ota";
/// Small bundles: the image is random bytes (it must not compress below 4 KiB).
const IMAGE: usize = 256 * 1024;

struct Site {
    dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().unwrap();
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
        let rauc = Rauc::start();
        std::fs::create_dir(dir.path().join("www")).unwrap();
        let files = HttpsFiles::start(dir.path().join("www"), &server.cert_pem, &server.key_pem);
        let local = free_port();
        let config = format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
             [[broker.listeners]]\nport = {local}\n\
             [uplink]\nhost = \"localhost\"\nport = {tls}\nclient_id = \"{DEVICE}\"\n\
             ca_file = \"{ca}\"\ntopic_prefix = \"cloud/\"\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
             [[uplink.rewrite]]\nlocal = \"fieldlink/ota/status\"\ncloud = \"{{device_id}}/ota/status\"\n\
             [[uplink.commands]]\ncloud = \"{{device_id}}/ota/install\"\nlocal = \"fieldlink/ota/install\"\n\
             [ota]\ndbus = \"{bus}\"\nreboot_command = [\"/bin/sh\", \"-c\", \"echo >> {rebooted}\"]\n\
             download_timeout = \"5s\"\n{extra}\n{more}\n",
            data = dir.path().join("data").display(),
            ca = ca_file.display(),
            bus = rauc.bus_address(),
            rebooted = dir.path().join("rebooted").display(),
        );
        write(dir.path(), "fieldlink.toml", &config);
        Self {
            dir,
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
        let child = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("fieldlink.toml"))
            .arg("run")
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
