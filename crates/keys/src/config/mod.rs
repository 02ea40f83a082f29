//! `[keys]`: where PKCS#11 keys live, owned here.
//!
//! A component names its key with `key_uri = "pkcs11:token=…;object=…"`; the module that
//! reaches the token and the token's PIN are set once, here. The PIN itself is never in the
//! configuration file: it is read from a 0600 file or a systemd credential when the token is
//! opened.
//!
//! ```toml
//! [keys]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! pin_file = "/etc/fieldlink/token.pin"
//! ```

pub mod file;

use std::path::PathBuf;

use fieldlink_core::config::Collector;
use toml::Spanned;

use self::file::KeysFile;

/// `[keys]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeysSettings {
    /// The token's module and PIN, when keys in a token are used.
    pub pkcs11: Option<Pkcs11Settings>,
    /// The CA that `keys install-cert` checks certificates against.
    pub ca_file: Option<PathBuf>,
}

/// How to reach PKCS#11 tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The module (shared library).
    pub module: PathBuf,
    /// Where the user PIN is read from.
    pub pin: PinSource,
}

/// Where the token's user PIN comes from. Never the configuration file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file readable by its owner only.
    File(PathBuf),
    /// A systemd credential, read from `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

/// `[keys]`: the module and PIN go together; a PIN source without a module, or a module
/// without one, is a mistake.
pub fn settings(file: &Spanned<KeysFile>, c: &mut Collector<'_>) -> KeysSettings {
    let entry = file;
    let file = file.get_ref();
    let pin = match (&file.pin_file, &file.pin_credential) {
        (Some(path), None) => Some(PinSource::File(path.get_ref().clone())),
        (None, Some(name)) => {
            let valid = !name.get_ref().is_empty()
                && !name.get_ref().contains('/')
                && name.get_ref() != ".."
                && name.get_ref() != ".";
            if valid {
                Some(PinSource::Credential(name.get_ref().clone()))
            } else {
                c.at(
                    "keys.pin_credential",
                    Some(name.span()),
                    "not a credential name",
                    "write the name given to LoadCredential= in the unit, e.g. \"token-pin\"",
                );
                None
            }
        }
        (Some(path), Some(_)) => {
            c.at(
                "keys.pin_file",
                Some(path.span()),
                "both pin_file and pin_credential are set",
                "keep one: pin_file for a 0600 file, pin_credential for a systemd credential",
            );
            None
        }
        (None, None) => None,
    };
    let pkcs11 = match (&file.module, pin) {
        (Some(module), Some(pin)) => Some(Pkcs11Settings {
            module: module.get_ref().clone(),
            pin,
        }),
        (Some(_), None) if file.pin_file.is_none() && file.pin_credential.is_none() => {
            c.missing(
                "keys.pin_file",
                entry.span(),
                "a token needs its user PIN: pin_file = \"/etc/fieldlink/token.pin\" (mode 0600) \
                 or pin_credential = \"token-pin\" (systemd LoadCredential=)",
            );
            None
        }
        (None, Some(_)) => {
            c.missing(
                "keys.module",
                entry.span(),
                "a PIN needs the token's PKCS#11 module: module = \"/usr/lib/softhsm/libsofthsm2.so\"",
            );
            None
        }
        _ => None,
    };
    KeysSettings {
        pkcs11,
        ca_file: file.ca_file.as_ref().map(|p| p.get_ref().clone()),
    }
}
