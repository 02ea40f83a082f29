//! TLS-PSK through openssl (rustls has no PSK): the key file, the connector and the
//! handshake, which the bridge ([`crate::bridge`]) runs over the socket it dialled.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use fieldlink_core::tls::MinTlsVersion;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::UplinkError;
use crate::bridge::LinkError;

/// TLS 1.2 PSK suites with an AEAD cipher, (EC)DHE first for forward secrecy.
const TLS12_PSK_SUITES: &str = "ECDHE-PSK-CHACHA20-POLY1305:DHE-PSK-AES256-GCM-SHA384:\
    DHE-PSK-AES128-GCM-SHA256:DHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384:\
    PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305";
/// TLS 1.3 suites (all AEAD); openssl uses psk_dhe_ke unless told otherwise.
const TLS13_SUITES: &str =
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";

/// An identity and its key, read from a 0600 file holding `identity:hexkey`.
pub(crate) struct Psk {
    identity: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, and not even the identity: logs stay free of credentials.
        f.write_str("Psk(<redacted>)")
    }
}

impl Psk {
    /// The one `identity:hexkey` line of a 0600 file (core's PSK file format).
    pub(crate) fn read(path: &Path) -> Result<Self, UplinkError> {
        let mut entries = fieldlink_core::tls::read_psk_file(path).map_err(|e| match e {
            fieldlink_core::tls::TlsError::File { problem, hint, .. } => UplinkError::Credentials {
                path: path.to_owned(),
                problem: format!("{problem}; {hint}"),
            },
            other => UplinkError::Credentials {
                path: path.to_owned(),
                problem: other.to_string(),
            },
        })?;
        match (entries.pop(), entries.is_empty()) {
            (Some(entry), true) => Ok(Self {
                identity: entry.identity.into_bytes(),
                key: entry.key,
            }),
            _ => Err(UplinkError::Credentials {
                path: path.to_owned(),
                problem: "expected exactly one line `identity:hexkey`".into(),
            }),
        }
    }
}

/// The openssl connector for `psk`, under our policy (TLS 1.2+, AEAD suites only).
pub(crate) fn connector(
    psk: Psk,
    min_version: MinTlsVersion,
) -> Result<Arc<SslConnector>, openssl::error::ErrorStack> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    // Pure PSK: no certificates on either side.
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(match min_version {
        MinTlsVersion::Tls12 => SslVersion::TLS1_2,
        MinTlsVersion::Tls13 => SslVersion::TLS1_3,
    }))?;
    b.set_cipher_list(TLS12_PSK_SUITES)?;
    b.set_ciphersuites(TLS13_SUITES)?;
    b.set_psk_client_callback(move |_ssl, _hint, identity, key| {
        // openssl wants the identity NUL-terminated.
        if psk.identity.len() >= identity.len() || psk.key.len() > key.len() {
            return Err(openssl::error::ErrorStack::get());
        }
        identity[..psk.identity.len()].copy_from_slice(&psk.identity);
        identity[psk.identity.len()] = 0;
        key[..psk.key.len()].copy_from_slice(&psk.key);
        Ok(psk.key.len())
    });
    Ok(Arc::new(b.build()))
}

/// The PSK handshake over a connected socket; a failure is said in plain words, and whether
/// the server refused us.
pub(crate) async fn handshake(
    connector: &SslConnector,
    host: &str,
    tcp: TcpStream,
) -> Result<SslStream<TcpStream>, LinkError> {
    let failed = LinkError::unreachable;
    let mut config = connector.configure().map_err(|e| failed(e.to_string()))?;
    config.set_verify_hostname(false);
    config.set_use_server_name_indication(false);
    let ssl = config.into_ssl(host).map_err(|e| failed(e.to_string()))?;
    let mut tls = SslStream::new(ssl, tcp).map_err(|e| failed(e.to_string()))?;
    match Pin::new(&mut tls).connect().await {
        Ok(()) => Ok(tls),
        Err(e) => Err(explain_handshake(&e)),
    }
}

fn explain_handshake(e: &openssl::ssl::Error) -> LinkError {
    let reasons: Vec<String> = e
        .ssl_error()
        .map(|stack| {
            stack
                .errors()
                .iter()
                .filter_map(|x| x.reason().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let all = format!("{e} {}", reasons.join(" ")).to_ascii_lowercase();
    let first = reasons.first().cloned().unwrap_or_else(|| e.to_string());
    // A wrong identity or key surfaces as one of these alerts, depending on version and server.
    if [
        "decrypt",
        "bad record mac",
        "unknown psk",
        "psk identity",
        "illegal parameter",
    ]
    .iter()
    .any(|w| all.contains(w))
    {
        LinkError {
            text: format!("PSK identity or key rejected by the server ({first})"),
            refused: true,
            about_time: false,
        }
    } else if [
        "no shared cipher",
        "handshake failure",
        "protocol version",
        "unsupported protocol",
    ]
    .iter()
    .any(|w| all.contains(w))
    {
        LinkError {
            text: format!(
                "the server shares no TLS version or PSK cipher suite with our policy (TLS 1.2+, AEAD only) ({first})"
            ),
            refused: true,
            about_time: false,
        }
    } else {
        LinkError {
            text: format!("PSK handshake failed: {first}"),
            refused: false,
            about_time: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_psk_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk");
        std::fs::write(&path, "gw1:00112233").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Psk::read(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let psk = Psk::read(&path).unwrap();
        assert_eq!(
            (psk.identity.as_slice(), psk.key.as_slice()),
            (&b"gw1"[..], &[0, 0x11, 0x22, 0x33][..])
        );
        assert_eq!(format!("{psk:?}"), "Psk(<redacted>)");
    }

    #[test]
    fn malformed_psk_files_are_refused_without_echoing_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["no-colon", "gw1:abc", "gw1:zz11", ":0011"] {
            let path = dir.path().join("psk");
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = Psk::read(&path).unwrap_err().to_string();
            let secret = text.split_once(':').map_or("", |(_, k)| k);
            assert!(secret.len() < 3 || !err.contains(secret), "{err}");
        }
    }
}
