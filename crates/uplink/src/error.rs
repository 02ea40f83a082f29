//! Why the uplink cannot be set up, one variant per cause, each saying whose fault it is.

use std::path::PathBuf;

use fieldlink_core::fault::Fault;

/// Why the uplink cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    /// A credentials file is missing, unreadable, too open or malformed.
    #[error("{path:?}: {problem}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong (never its content).
        problem: String,
    },
    /// `uplink.host` cannot be the name checked in the server's certificate.
    #[error("uplink.host {0:?} is neither a DNS name nor an IP address")]
    HostName(String),
    /// A certificate, key or CRL file cannot be read or used, or rustls refused the
    /// combination (e.g. a key that does not match the certificate).
    #[error(transparent)]
    Tls(#[from] fieldlink_core::tls::TlsError),
    /// A certificate in `uplink.ca_file` is not a usable trust anchor.
    #[error("{path:?}: not a usable CA certificate: {source}")]
    CaCertificate {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// No `uplink.ca_file`, and the system has no CA certificates.
    #[error("no system CA certificates found; set uplink.ca_file to the CA of your cloud broker")]
    NoSystemRoots,
    /// openssl could not set up TLS-PSK.
    #[error("PSK setup: {0}")]
    Psk(openssl::error::ErrorStack),
    /// A file operation failed.
    #[error("{path:?}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl UplinkError {
    /// Whose fault it is: the files and names the configuration gives are the operator's to
    /// fix; a system without CA certificates, a failing libssl or file system are the
    /// environment's.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Credentials { .. }
            | Self::HostName(_)
            | Self::Tls(_)
            | Self::CaCertificate { .. } => Fault::Config,
            Self::NoSystemRoots | Self::Psk(_) | Self::Io { .. } => Fault::Environment,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_missing_ca_file_is_the_configurations_fault_and_names_the_file() {
        let err =
            crate::connector::roots(Some(Path::new("/nonexistent/cloud-ca.pem"))).unwrap_err();
        assert!(matches!(err, UplinkError::Tls(_)), "{err:?}");
        assert_eq!(err.fault(), Fault::Config);
        assert!(
            err.to_string().contains("/nonexistent/cloud-ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_certificate_rustls_cannot_anchor_on_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        // A PEM block that is not DER: read, then refused as a trust anchor.
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = crate::connector::roots(Some(&path)).unwrap_err();
        assert!(
            matches!(&err, UplinkError::CaCertificate { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert_eq!(err.fault(), Fault::Config);
    }

    #[test]
    fn causes_outside_the_configuration_are_the_environments() {
        assert_eq!(UplinkError::NoSystemRoots.fault(), Fault::Environment);
        assert_eq!(
            UplinkError::HostName("bad host".into()).fault(),
            Fault::Config
        );
    }
}
