//! The certificate the UI presents: the operator's (`cert_file` with `key_file` or `key_uri`,
//! through the same key resolver as the broker and the uplink, so a key may stay in a token),
//! or a self-signed one made at first start and kept in the data directory. Its SHA-256
//! fingerprint is logged at every start, so a technician can check what the browser shows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fieldlink_core::tls::{FileKey, KeyResolver, KeySource, TlsError, read_certs};
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;

use crate::config::{WebIdentity, WebSettings};

/// A self-signed certificate is made again when it has less than this left.
const RENEW_BEFORE_DAYS: i64 = 30;
/// How long a self-signed certificate lasts.
const SELF_SIGNED_DAYS: i64 = 3 * 365;

/// Why the UI has no certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The configured certificate or key is unusable.
    #[error("web UI certificate: {0}")]
    Tls(#[from] TlsError),
    /// The self-signed certificate could not be made or stored.
    #[error("cannot make the web UI's self-signed certificate in {dir:?}: {problem}")]
    SelfSigned {
        /// Where it is kept.
        dir: PathBuf,
        /// What failed.
        problem: String,
    },
}

/// The server configuration and the fingerprint of the certificate it presents.
pub struct Identity {
    /// For the acceptor.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the end-entity certificate, `AA:BB:…`.
    pub fingerprint: String,
    /// The chain, for the certificates page.
    pub chain: Vec<CertificateDer<'static>>,
}

/// The identity `settings` name; a self-signed one lives in `dir`.
pub fn load(
    settings: &WebSettings,
    dir: &Path,
    keys: &dyn KeyResolver,
) -> Result<Identity, IdentityError> {
    let (chain, key): (_, Arc<dyn KeySource>) = match &settings.identity {
        WebIdentity::Configured { cert_file, key } => (read_certs(cert_file)?, keys.resolve(key)?),
        WebIdentity::SelfSigned => {
            let (cert, key) = self_signed(settings, dir)?;
            (read_certs(&cert)?, Arc::new(FileKey(key)))
        }
    };
    let mut config = settings
        .tls
        .listener_config(chain.clone(), key.as_ref(), None)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(config),
        fingerprint: fingerprint(&chain[0]),
        chain,
    })
}

/// SHA-256 of a DER certificate as colon-separated hex, as browsers show it.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `web/cert.pem` and `web/key.pem` in the data directory: made when missing or near their
/// end, kept otherwise (a browser's exception for it stays valid across restarts).
fn self_signed(settings: &WebSettings, dir: &Path) -> Result<(PathBuf, PathBuf), IdentityError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let fail = |problem: String| IdentityError::SelfSigned {
        dir: dir.to_owned(),
        problem,
    };
    let now = now_s();
    let current = read_certs(&cert_path)
        .ok()
        .and_then(|chain| fieldlink_core::x509::not_after(&chain[0]))
        .is_some_and(|end| end - now > RENEW_BEFORE_DAYS * 86_400);
    if current && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let mut names = vec!["localhost".to_owned()];
    if let Some(host) = hostname() {
        names.push(host);
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| fail(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fieldlink web UI");
    let ip = settings.listen.ip();
    let ips = if ip.is_unspecified() {
        vec![std::net::IpAddr::from([127, 0, 0, 1])]
    } else {
        vec![ip]
    };
    for ip in ips {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    let (y, m, d) = civil_date((now - 86_400).div_euclid(86_400));
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_date((now + SELF_SIGNED_DAYS * 86_400).div_euclid(86_400));
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    fieldlink_core::private_fs::private_subdir(dir).map_err(|e| fail(e.to_string()))?;
    fieldlink_core::private_fs::replace_atomically(&key_path, key.serialize_pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    fieldlink_core::private_fs::replace_atomically(&cert_path, cert.pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    tracing::info!(
        path = %cert_path.display(),
        "Made a self-signed certificate for the web UI"
    );
    Ok((cert_path, key_path))
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (H. Hinnant's algorithm).
pub(crate) fn civil_date(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

#[cfg(test)]
#[test]
fn civil_dates_are_right() {
    assert_eq!(civil_date(0), (1970, 1, 1));
    assert_eq!(civil_date(19_723), (2024, 1, 1));
    assert_eq!(civil_date(19_782), (2024, 2, 29));
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name != "localhost").then(|| name.to_owned())
}
