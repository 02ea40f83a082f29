//! The download's TLS client configuration: the gateway's policy (`core::tls`, ring only),
//! the CAs of `ota.ca_file`, else the uplink's, else the system's.

use std::path::{Path, PathBuf};

use fieldlink_core::tls::{TlsPolicy, read_certs};
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtaTlsError {
    /// The CA file cannot be read or holds no certificate rustls accepts.
    #[error("the CA file {path:?} for bundle downloads: {problem}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// No CA file, and the system has no CA certificates.
    #[error("no CA for bundle downloads: set ota.ca_file, or install the system's CA certificates")]
    NoSystemRoots,
    /// rustls refused the configuration.
    #[error("TLS for bundle downloads: {0}")]
    Tls(#[from] fieldlink_core::tls::TlsError),
}

/// A client configuration for bundle servers.
pub fn client_config(
    policy: &TlsPolicy,
    ca_file: Option<&Path>,
) -> Result<ClientConfig, OtaTlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |problem: String| OtaTlsError::CaFile {
                path: path.to_owned(),
                problem,
            };
            for cert in read_certs(path).map_err(|e| bad(e.to_string()))? {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(OtaTlsError::NoSystemRoots);
            }
        }
    }
    Ok(policy.client_config(roots)?)
}
