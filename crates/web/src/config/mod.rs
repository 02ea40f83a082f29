//! `[web]`: the local web UI, owned here.
//!
//! ```toml
//! [web]
//! bind = "127.0.0.1"   # "0.0.0.0" serves the LAN
//! port = 8443
//! # cert_file = "/etc/fieldlink/web.pem"   # else a self-signed certificate is made
//! # key_file = "/etc/fieldlink/web.key"    # or key_uri = "pkcs11:token=…;object=web"
//! ```

pub mod file;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use fieldlink_core::config::values::{key_ref, min_tls_version, port};
use fieldlink_core::config::{Collector, duration, int};
use fieldlink_core::tls::{KeyRef, TlsPolicy};
use toml::Spanned;

use self::file::WebFile;

/// The HTTPS port when `port` is absent.
pub const DEFAULT_PORT: u16 = 8443;
/// A session unused this long ends.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its login.
pub const DEFAULT_SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// Connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// How long a configuration applied from the page must keep the gateway healthy.
pub const DEFAULT_APPLY_CHECK: Duration = Duration::from_secs(20);

/// The certificate the UI presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebIdentity {
    /// Made at first start, kept in the data directory, its fingerprint logged.
    SelfSigned,
    /// The operator's chain and key.
    Configured {
        /// The PEM chain.
        cert_file: PathBuf,
        /// Its private key.
        key: KeyRef,
    },
}

/// `[web]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// Where the UI listens.
    pub listen: SocketAddr,
    /// Its certificate.
    pub identity: WebIdentity,
    /// Its TLS versions and suites.
    pub tls: TlsPolicy,
    /// How long an unused session lives.
    pub session_idle: Duration,
    /// How long any session lives.
    pub session_max: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a configuration applied from the page must keep the gateway healthy before
    /// it is kept.
    pub apply_check: Duration,
}

impl WebSettings {
    /// Whether `other` serves the UI the same way: only the apply check's time may differ. A
    /// change of anything else would move or re-key the UI itself, which an apply from the
    /// page cannot do without cutting the browser off.
    pub fn same_ui(&self, other: &Self) -> bool {
        *self
            == Self {
                apply_check: self.apply_check,
                ..other.clone()
            }
    }
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            identity: WebIdentity::SelfSigned,
            tls: TlsPolicy::default(),
            session_idle: DEFAULT_SESSION_IDLE,
            session_max: DEFAULT_SESSION_MAX,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            apply_check: DEFAULT_APPLY_CHECK,
        }
    }
}

const KEY_HINT: &str = "give the certificate's key: key_file = \"/etc/fieldlink/web.key\" or \
                        key_uri = \"pkcs11:token=…;object=web\"";

/// `[web]`: `None` when `enabled = false`. The section's presence turns the UI on (the shipped
/// configuration has it): a configuration without it opens no port of its own.
pub fn settings(entry: &Spanned<WebFile>, c: &mut Collector<'_>) -> Option<WebSettings> {
    let d = WebSettings::default();
    let file = entry.get_ref();
    if file.enabled.as_ref().is_some_and(|e| !*e.get_ref()) {
        return None;
    }
    let ip = match &file.bind {
        None => d.listen.ip(),
        Some(bind) => bind.get_ref().parse().unwrap_or_else(|_| {
            c.at(
                "web.bind",
                Some(bind.span()),
                "not an IP address",
                "write an address such as \"127.0.0.1\" (this machine only) or \"0.0.0.0\" (the LAN)",
            );
            d.listen.ip()
        }),
    };
    let port = port(c, "web.port", &file.port).unwrap_or(DEFAULT_PORT);
    let identity = match (&file.cert_file, &file.key_file, &file.key_uri) {
        (None, None, None) => WebIdentity::SelfSigned,
        (None, key_file, key_uri) => {
            let span = key_file
                .as_ref()
                .map(Spanned::span)
                .or(key_uri.as_ref().map(Spanned::span));
            c.at(
                "web.cert_file",
                span,
                "a key without a certificate",
                "give cert_file (the PEM chain for this key), or remove the key to use a \
                 self-signed certificate",
            );
            WebIdentity::SelfSigned
        }
        (Some(cert_file), key_file, key_uri) => {
            match key_ref(
                c,
                "web",
                key_file.as_ref(),
                key_uri.as_ref(),
                entry.span(),
                KEY_HINT,
            ) {
                Some(key) => WebIdentity::Configured {
                    cert_file: cert_file.get_ref().clone(),
                    key,
                },
                None => WebIdentity::SelfSigned,
            }
        }
    };
    let session_idle = duration(
        c,
        "web.session_idle",
        &file.session_idle,
        Duration::from_secs(60)..=Duration::from_secs(7 * 86_400),
        d.session_idle,
    );
    let session_max = duration(
        c,
        "web.session_max",
        &file.session_max,
        Duration::from_secs(60)..=Duration::from_secs(30 * 86_400),
        d.session_max,
    );
    Some(WebSettings {
        listen: SocketAddr::new(ip, port),
        identity,
        tls: TlsPolicy {
            min_version: min_tls_version(c, "web.min_tls_version", &file.min_tls_version),
            ..TlsPolicy::default()
        },
        session_idle,
        session_max,
        max_connections: int(c, "web.max_connections", &file.max_connections, 1..=1024)
            .unwrap_or(d.max_connections),
        apply_check: duration(
            c,
            "web.apply_check",
            &file.apply_check,
            Duration::from_secs(1)..=Duration::from_secs(600),
            d.apply_check,
        ),
    })
}
