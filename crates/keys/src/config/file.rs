//! `[keys]` as written: every field optional, every value with its place in the file.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// `[keys]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The PKCS#11 module (a shared library) that reaches the token.
    pub module: Option<Spanned<PathBuf>>,
    /// A file (mode 0600) holding the token's user PIN.
    pub pin_file: Option<Spanned<PathBuf>>,
    /// Or the name of a systemd credential holding it (`LoadCredential=NAME:…` in the unit).
    pub pin_credential: Option<Spanned<String>>,
    /// The CA a certificate must chain to for `fieldlink keys install-cert`.
    pub ca_file: Option<Spanned<PathBuf>>,
}
