//! A real RAUC for the OTA tests: `rauc service` (Debian's rauc) on a private D-Bus system
//! bus, two raw slots backed by files, a `custom` bootloader backend that is a script
//! recording which slot is primary and every mark, and bundles signed at test time by a
//! throw-away openssl CA.
//!
//! Bundles are `format=plain`: a `verity` bundle needs device-mapper (`/dev/mapper/control`),
//! which a test sandbox does not have; boards use verity (the Yocto layer's system.conf).
//! Needs root (RAUC mounts the bundle on a loop device).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `compatible` of the test system and its bundles.
pub const COMPATIBLE: &str = "fieldlink-test";

/// RAUC's own D-Bus policy, as Debian's rauc-service installs it (it lets every user call RAUC).
pub const RAUC_POLICY: &str = "/usr/share/dbus-1/system.d/de.pengutronix.rauc.conf";

/// Who signs a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// A certificate of the CA in RAUC's keyring.
    Trusted,
    /// A self-signed certificate RAUC does not know.
    Stranger,
}

/// Who may do what on the private bus.
#[derive(Debug, Clone, Default)]
pub enum BusPolicy {
    /// Everyone may own any name and call anything (the agent's own tests).
    #[default]
    Open,
    /// A system bus as Debian's `system.conf` sets it up: method calls denied unless a policy
    /// file allows them, then the files of `/usr/share/dbus-1/system.d` (`share`) and after them
    /// those of `/etc/dbus-1/system.d` (`etc`), each copied into a directory of its own that
    /// the bus reads with `<includedir>`, as the real one does. The bus's socket and its
    /// directory are open to every user, so that other users' clients can try.
    System {
        /// Policy files read first.
        share: Vec<PathBuf>,
        /// Policy files read after them.
        etc: Vec<PathBuf>,
    },
}

/// RAUC running on a private bus; stopped (with its bus) when dropped.
pub struct Rauc {
    dir: tempfile::TempDir,
    bus: Child,
    service: Option<Child>,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

impl Rauc {
    /// A system with slots A (booted, primary) and B, a CA in the keyring, and RAUC's
    /// service on a private bus where everything is allowed.
    pub fn start() -> Self {
        Self::start_with(&BusPolicy::Open)
    }

    /// The same, on a bus with `policy`.
    pub fn start_with(policy: &BusPolicy) -> Self {
        assert!(
            crate::mosquitto::is_root(),
            "the RAUC tests need root (RAUC mounts bundles on loop devices); scripts/test runs as root"
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let d = dir.path();
        for sub in ["mnt", "data", "boot", "keys"] {
            std::fs::create_dir_all(d.join(sub)).expect("a directory");
        }
        let keys = d.join("keys");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=fieldlink test update CA",
        ]);
        openssl(&keys, &args);
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "signer.key",
            "-out",
            "signer.csr",
            "-subj",
            "/CN=fieldlink test signer",
        ]);
        openssl(&keys, &args);
        openssl(
            &keys,
            &[
                "x509",
                "-req",
                "-in",
                "signer.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "signer.pem",
                "-days",
                "2",
            ],
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "stranger.key",
            "-out",
            "stranger.pem",
            "-days",
            "2",
            "-subj",
            "/CN=someone else",
        ]);
        openssl(&keys, &args);

        let boot = d.join("boot");
        std::fs::write(boot.join("primary"), "A\n").expect("write");
        std::fs::write(boot.join("booted"), "A\n").expect("write");
        std::fs::write(boot.join("log"), "").expect("write");
        let script = d.join("bootloader.sh");
        std::fs::write(
            &script,
            BOOTLOADER.replace("@BOOT@", &boot.display().to_string()),
        )
        .expect("write");
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(&script).expect("stat").permissions(),
            0o755,
        );
        run(Command::new("chmod").arg("755").arg(&script));
        for slot in ["slotA.img", "slotB.img"] {
            std::fs::write(d.join(slot), vec![0u8; 1 << 20]).expect("a slot file");
        }
        std::fs::write(
            d.join("system.conf"),
            format!(
                "[system]\ncompatible={COMPATIBLE}\nbootloader=custom\ndata-directory={data}\n\
                 mountprefix={mnt}\n\n[handlers]\nbootloader-custom-backend={script}\n\n\
                 [keyring]\npath={keys}/ca.pem\n\n\
                 [slot.rootfs.0]\ndevice={d}/slotA.img\ntype=raw\nbootname=A\n\n\
                 [slot.rootfs.1]\ndevice={d}/slotB.img\ntype=raw\nbootname=B\n",
                data = d.join("data").display(),
                mnt = d.join("mnt").display(),
                script = script.display(),
                keys = keys.display(),
                d = d.display(),
            ),
        )
        .expect("write");
        std::fs::write(d.join("bus.conf"), bus_config(d, policy)).expect("write");
        let bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", d.join("bus.conf").display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon is installed (scripts/test installs dbus)");
        wait_for(|| d.join("bus.sock").exists(), "the private D-Bus socket");
        let mut rauc = Self {
            dir,
            bus,
            service: None,
        };
        rauc.start_service();
        rauc
    }

    /// The bus's address, for `[ota] dbus`.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("bus.sock").display())
    }

    fn start_service(&mut self) {
        let booted = self.booted();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("rauc.log"))
            .expect("the log");
        let child = Command::new("rauc")
            .arg("service")
            .arg("-c")
            .arg(self.dir.path().join("system.conf"))
            .arg(format!("--mount={}", self.dir.path().join("mnt").display()))
            .arg(format!("--override-boot-slot={booted}"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .expect("rauc is installed (scripts/test installs it)");
        self.service = Some(child);
        wait_for(
            || self.cli(&["status"]).0,
            "rauc service on the private bus",
        );
    }

    /// Runs the `rauc` command line against the service: (success, stdout + stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("rauc")
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .output()
            .expect("rauc");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// A bundle of `version` with a `size`-byte image of random bytes, signed by `signer`,
    /// written to `out`; returns the image.
    pub fn bundle(&self, version: &str, size: usize, signer: Signer, out: &Path) -> Vec<u8> {
        let work = tempfile::tempdir_in(self.dir.path()).expect("a directory");
        let content = work.path().join("content");
        std::fs::create_dir(&content).expect("a directory");
        // Random bytes: the image must not compress below 4 KiB, and it is what the slot
        // must hold afterwards.
        run(Command::new("head")
            .arg("-c")
            .arg(size.to_string())
            .arg("/dev/urandom")
            .stdout(std::fs::File::create(content.join("rootfs.img")).expect("the image")));
        std::fs::write(
            content.join("manifest.raucm"),
            format!(
                "[update]\ncompatible={COMPATIBLE}\nversion={version}\n\n[bundle]\nformat=plain\n\n\
                 [image.rootfs]\nfilename=rootfs.img\n"
            ),
        )
        .expect("the manifest");
        let keys = self.dir.path().join("keys");
        let (cert, key) = match signer {
            Signer::Trusted => ("signer.pem", "signer.key"),
            Signer::Stranger => ("stranger.pem", "stranger.key"),
        };
        let _ = std::fs::remove_file(out);
        run(Command::new("rauc")
            .arg("bundle")
            .arg(format!("--cert={}", keys.join(cert).display()))
            .arg(format!("--key={}", keys.join(key).display()))
            .arg(&content)
            .arg(out));
        std::fs::read(content.join("rootfs.img")).expect("the image")
    }

    /// The slot the bootloader will boot next.
    pub fn primary(&self) -> String {
        self.read_boot("primary")
    }

    /// Makes `slot` the bootloader's primary, as a bootloader does by itself when the other
    /// slot has used up its tries (a new slot that keeps crashing).
    pub fn set_primary(&self, slot: &str) {
        std::fs::write(self.dir.path().join("boot/primary"), format!("{slot}\n")).expect("write");
    }

    /// The slot booted now.
    pub fn booted(&self) -> String {
        self.read_boot("booted")
    }

    /// Every call the bootloader backend recorded that changed something, one per line
    /// (`set-primary B`, `set-state B good`, …).
    pub fn boot_log(&self) -> String {
        self.read_boot("log")
    }

    /// The first `len` bytes of a slot's file.
    pub fn slot_starts_with(&self, slot: &str, image: &[u8]) -> bool {
        let data =
            std::fs::read(self.dir.path().join(format!("slot{slot}.img"))).expect("the slot");
        data.starts_with(image)
    }

    /// RAUC's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rauc.log")).unwrap_or_default()
    }

    /// The machine "reboots": RAUC's service stops, the bootloader boots its primary slot
    /// (which a slot marked bad is not, see the backend script), and the service starts again
    /// with that slot booted. Nothing else of a reboot is imitated.
    pub fn reboot(&mut self) {
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
            let _ = service.wait();
        }
        let primary = self.primary();
        std::fs::write(self.dir.path().join("boot/booted"), format!("{primary}\n")).expect("write");
        self.start_service();
    }

    fn read_boot(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("boot").join(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for Rauc {
    fn drop(&mut self) {
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
            let _ = service.wait();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} not ready after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bus configuration for `policy`, its policy files copied under `dir`.
fn bus_config(dir: &Path, policy: &BusPolicy) -> String {
    let head = format!(
        "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n\
         <type>system</type>\n<listen>unix:path={}</listen>\n<auth>EXTERNAL</auth>\n",
        dir.join("bus.sock").display()
    );
    let body = match policy {
        BusPolicy::Open => "<policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
             <allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/>\
             </policy>\n"
            .to_owned(),
        BusPolicy::System { share, etc } => {
            // Other users must reach the socket (the temporary directory is 0700).
            run(Command::new("chmod").arg("755").arg(dir));
            let mut body = SYSTEM_DEFAULTS.to_owned();
            for (name, files) in [("share.d", share), ("etc.d", etc)] {
                let sub = dir.join(name);
                std::fs::create_dir(&sub).expect("a directory");
                for file in files {
                    let to = sub.join(file.file_name().expect("a policy file's name"));
                    std::fs::copy(file, &to)
                        .unwrap_or_else(|e| panic!("cannot copy the policy {file:?}: {e}"));
                }
                body.push_str(&format!("<includedir>{}</includedir>\n", sub.display()));
            }
            body
        }
    };
    format!("{head}{body}</busconfig>\n")
}

/// What Debian's system bus allows before any policy file: connecting, signals and replies,
/// the bus driver; no names owned, no method calls (its `system.conf`, in substance).
const SYSTEM_DEFAULTS: &str = r#"<policy context="default">
  <allow user="*"/>
  <deny own="*"/>
  <deny send_type="method_call"/>
  <allow send_type="signal"/>
  <allow send_requested_reply="true" send_type="method_return"/>
  <allow send_requested_reply="true" send_type="error"/>
  <allow receive_type="method_call"/>
  <allow receive_type="method_return"/>
  <allow receive_type="error"/>
  <allow receive_type="signal"/>
  <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
  <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
</policy>
"#;

/// RAUC's `custom` bootloader backend: the primary slot and each slot's state in files, and
/// a log of what changed. Marking the primary slot bad makes the other one primary, as a
/// real A/B boot counter would once its tries are used up.
const BOOTLOADER: &str = r#"#!/bin/sh
set -e
d=@BOOT@
other() { if [ "$1" = A ]; then echo B; else echo A; fi; }
case "$1" in
  get-primary) cat "$d/primary" ;;
  set-primary) echo "$2" > "$d/primary"; echo "set-primary $2" >> "$d/log" ;;
  get-state) if [ -f "$d/state.$2" ]; then cat "$d/state.$2"; else echo good; fi ;;
  set-state)
    echo "$3" > "$d/state.$2"; echo "set-state $2 $3" >> "$d/log"
    if [ "$3" = bad ] && [ "$(cat "$d/primary")" = "$2" ]; then other "$2" > "$d/primary"; fi ;;
  get-current) cat "$d/booted" ;;
  *) echo "unknown: $*" >&2; exit 1 ;;
esac
"#;
