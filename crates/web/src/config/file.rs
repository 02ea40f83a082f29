//! `[web]` as written: every field optional, every value with its place in the file.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// `[web]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebFile {
    /// Whether the web UI runs (`true` when absent).
    pub enabled: Option<Spanned<bool>>,
    /// The IP address to bind: loopback by default; `"0.0.0.0"` or the LAN address for the LAN.
    pub bind: Option<Spanned<String>>,
    /// The HTTPS port.
    pub port: Option<Spanned<i64>>,
    /// The PEM chain the UI presents; a self-signed certificate made at first start when absent.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// The certificate's private key, a PEM file.
    pub key_file: Option<Spanned<PathBuf>>,
    /// The certificate's private key in a PKCS#11 token.
    pub key_uri: Option<Spanned<String>>,
    /// The lowest TLS version: `"1.2"` or `"1.3"`.
    pub min_tls_version: Option<Spanned<String>>,
    /// A session unused for this long ends, e.g. `"30m"`.
    pub session_idle: Option<Spanned<String>>,
    /// A session ends this long after the login whatever its use, e.g. `"12h"`.
    pub session_max: Option<Spanned<String>>,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: Option<Spanned<i64>>,
    /// How long a configuration applied from the page must keep the gateway healthy before it
    /// is kept, e.g. `"20s"`; otherwise the previous one is restored.
    pub apply_check: Option<Spanned<String>>,
}
