//! A software TPM 2.0 with a PKCS#11 token on it, made at test time: swtpm on private loopback
//! ports, a private D-Bus, tpm2-abrmd as the resource manager on it (without one, tpm2-pkcs11
//! runs out of object contexts on swtpm), and tpm2-pkcs11's store in a temporary directory.
//! Programs reach it through the environment [`SoftTpm::command`] sets. On a real board the
//! kernel's resource manager `/dev/tpmrm0` replaces swtpm and abrmd
//! (`TPM2_PKCS11_TCTI=device:/dev/tpmrm0`). Everything is killed on drop.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Where Debian puts tpm2-pkcs11's module (apt `libtpm2-pkcs11-1`), per architecture.
const MODULES: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib/arm-linux-gnueabihf/pkcs11/libtpm2_pkcs11.so",
];

/// tpm2-pkcs11's module on this machine.
pub fn tpm2_pkcs11_module() -> &'static str {
    MODULES
        .iter()
        .find(|m| Path::new(m).exists())
        .expect("libtpm2_pkcs11.so (apt libtpm2-pkcs11-1; scripts/test installs it)")
}

/// A running software TPM with one initialised token.
#[derive(Debug)]
pub struct SoftTpm {
    dir: tempfile::TempDir,
    /// Stopped in reverse order: abrmd, the bus, the TPM.
    children: Vec<Child>,
    label: String,
    pin: String,
}

impl SoftTpm {
    /// A TPM with a token labelled `label` and a random user PIN.
    pub fn new(label: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut tpm = Self {
            dir,
            children: Vec::new(),
            label: label.to_owned(),
            pin: random_pin(),
        };
        let port = tpm.start_swtpm();
        tpm.start_bus();
        tpm.start_abrmd(port);
        tpm.init_token();
        let pin_file = tpm.pin_file();
        std::fs::write(&pin_file, format!("{}\n", tpm.pin)).expect("PIN file written");
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
            .expect("PIN file 0600");
        tpm
    }

    fn start_swtpm(&mut self) -> u16 {
        let state = self.dir.path().join("state");
        std::fs::create_dir(&state).expect("the TPM state directory");
        // The swtpm TCTI finds the control port at the server port + 1: two free ports in a
        // row, retried if another test takes one meanwhile.
        for _ in 0..20 {
            let server = free_port();
            let control = server + 1;
            if std::net::TcpListener::bind(("127.0.0.1", control)).is_err() {
                continue;
            }
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2"])
                .arg("--server")
                .arg(format!("type=tcp,port={server},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={control},bindaddr=127.0.0.1"))
                .args(["--flags", "not-need-init,startup-clear"])
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm is installed (apt swtpm; scripts/test installs it)");
            self.children.push(child);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Some(Some(_)) = self
                    .children
                    .last_mut()
                    .map(|c| c.try_wait().ok().flatten())
                {
                    break; // it quit: a port was taken
                }
                if std::net::TcpStream::connect(("127.0.0.1", server)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(mut child) = self.children.pop() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        panic!("swtpm did not start");
    }

    fn bus_socket(&self) -> PathBuf {
        self.dir.path().join("bus.sock")
    }

    fn start_bus(&mut self) {
        let config = self.dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration \
                 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>session</type><listen>unix:path={}</listen>\
                 <auth>EXTERNAL</auth><policy context=\"default\">\
                 <allow send_destination=\"*\"/><allow receive_sender=\"*\"/>\
                 <allow own=\"*\"/><allow user=\"*\"/>\
                 </policy></busconfig>\n",
                self.bus_socket().display()
            ),
        )
        .expect("bus.conf written");
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon is installed (apt dbus-daemon)");
        self.children.push(child);
        let start = Instant::now();
        while !self.bus_socket().exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the private D-Bus did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// abrmd registers on the bus in the background: [`Self::init_token`] retries until then.
    fn start_abrmd(&mut self, port: u16) {
        let child = Command::new("tpm2-abrmd")
            .args(["--session", "--allow-root"])
            .arg(format!("--tcti=swtpm:host=127.0.0.1,port={port}"))
            .env("DBUS_SESSION_BUS_ADDRESS", self.bus_address())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("abrmd.log")).expect("abrmd.log"))
            .spawn()
            .expect("tpm2-abrmd is installed (apt tpm2-abrmd; scripts/test installs it)");
        self.children.push(child);
    }

    fn bus_address(&self) -> String {
        format!("unix:path={}", self.bus_socket().display())
    }

    /// Initialises the token (pkcs11-tool, as tpm2_ptool is not packaged in Debian 12).
    /// Retried while abrmd is still registering on the bus.
    fn init_token(&self) {
        std::fs::create_dir(self.dir.path().join("store")).expect("the tpm2-pkcs11 store");
        let so_pin = format!("so{}", self.pin);
        let steps: [Vec<&str>; 2] = [
            vec![
                "--init-token",
                "--slot-index",
                "0",
                "--label",
                &self.label,
                "--so-pin",
                &so_pin,
            ],
            vec![
                "--token-label",
                &self.label,
                "--login",
                "--so-pin",
                &so_pin,
                "--init-pin",
                "--pin",
                &self.pin,
            ],
        ];
        for step in steps {
            let start = Instant::now();
            loop {
                let out = self
                    .command("pkcs11-tool")
                    .args(["--module", tpm2_pkcs11_module()])
                    .args(&step)
                    .output()
                    .expect("pkcs11-tool is installed (apt opensc; scripts/test installs it)");
                if out.status.success() {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "pkcs11-tool {step:?}: {}\ntpm2-abrmd: {}",
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(self.dir.path().join("abrmd.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The 0600 file holding the PIN.
    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("token.pin")
    }

    /// fieldlink's `[keys]` section for this token.
    pub fn keys_section(&self, ca_file: Option<&Path>) -> String {
        let mut text = format!(
            "[keys]\nmodule = \"{}\"\npin_file = \"{}\"\n",
            tpm2_pkcs11_module(),
            self.pin_file().display()
        );
        if let Some(ca) = ca_file {
            text += &format!("ca_file = \"{}\"\n", ca.display());
        }
        text
    }

    /// `program` with the environment that reaches this TPM's token.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("DBUS_SESSION_BUS_ADDRESS", self.bus_address())
            .env("TPM2_PKCS11_TCTI", "tabrmd:bus_type=session")
            .env("TPM2_PKCS11_STORE", self.dir.path().join("store"))
            // The TSS libraries log warnings to stderr by default.
            .env("TSS2_LOG", "all+NONE");
        command
    }
}

impl Drop for SoftTpm {
    fn drop(&mut self) {
        while let Some(mut child) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn random_pin() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:08}", (nanos ^ std::process::id()) % 100_000_000)
}
