//! A SoftHSM2 token made at test time: its own configuration and token directory in a temporary
//! directory (nothing in /etc or /var/lib/softhsm is touched), a random PIN in a 0600 file.
//! Programs reach it through `SOFTHSM2_CONF`, set on the commands [`SoftHsm::command`] makes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's SoftHSM2 module (apt `softhsm2`).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A fresh SoftHSM2 token.
#[derive(Debug)]
pub struct SoftHsm {
    dir: tempfile::TempDir,
    label: String,
    pin: String,
}

impl SoftHsm {
    /// A token labelled `label`, initialised with a random user PIN.
    pub fn new(label: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("the token directory");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf written");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let pin = format!("{:08}", (nanos ^ std::process::id()) % 100_000_000);
        let hsm = Self {
            dir,
            label: label.to_owned(),
            pin,
        };
        hsm.add_token(label);
        let pin_file = hsm.pin_file();
        std::fs::write(&pin_file, format!("{}\n", hsm.pin)).expect("PIN file written");
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
            .expect("PIN file 0600");
        hsm
    }

    /// Initialises one more token, labelled `label`, with the same PIN.
    pub fn add_token(&self, label: &str) {
        let out = self
            .command("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", &format!("so{}", self.pin), "--pin", &self.pin])
            .output()
            .expect("softhsm2-util is installed (apt softhsm2; scripts/test installs it)");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The user PIN (for tools such as pkcs11-tool).
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The 0600 file holding the PIN.
    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("token.pin")
    }

    /// What `SOFTHSM2_CONF` must point at.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// Where SoftHSM2 keeps its tokens (moving it away "removes" them for the next
    /// C_Initialize).
    pub fn token_dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// fieldlink's `[keys]` section for this token.
    pub fn keys_section(&self, ca_file: Option<&Path>) -> String {
        let mut text = format!(
            "[keys]\nmodule = \"{SOFTHSM_MODULE}\"\npin_file = \"{}\"\n",
            self.pin_file().display()
        );
        if let Some(ca) = ca_file {
            text += &format!("ca_file = \"{}\"\n", ca.display());
        }
        text
    }

    /// `program` with `SOFTHSM2_CONF` pointing at this token's configuration.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command.env("SOFTHSM2_CONF", self.conf());
        command
    }
}
