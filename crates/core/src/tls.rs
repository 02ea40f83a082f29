//! The one place where fieldlink builds TLS configurations.
//!
//! Every TLS client and server in the project is built here, from a [`TlsPolicy`], with the one
//! crypto provider the project ships: *ring*. `clippy.toml` forbids the rustls builders
//! everywhere else, so nothing can bypass the policy.
//!
//! Why one provider, set explicitly: when cargo feature unification enables both `ring` and
//! `aws-lc-rs` in rustls, `ClientConfig::builder()` panics at run time ("no process-level
//! CryptoProvider available"). Building from an explicit provider cannot hit that, and
//! [`install_default_provider`] makes any third-party default builder safe too.
#![allow(clippy::disallowed_methods)] // this module is the allowed place

use std::sync::Arc;

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The lowest TLS version a connection may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinTlsVersion {
    /// TLS 1.2 or 1.3 (the default: many cloud brokers still speak 1.2).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// What every TLS connection of the gateway must satisfy: a minimum version, AEAD suites only,
/// and what a CRL past its nextUpdate means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsPolicy {
    /// The lowest version accepted.
    pub min_version: MinTlsVersion,
    /// Whether a stale CRL refuses the handshakes that need it (the default) or only warns.
    pub stale_crl: crate::crl::StaleCrl,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The server verifier could not be built (e.g. a CRL rustls cannot parse).
    #[error("server certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// A key in a hardware token cannot be used now: the module, the token, the PIN or the
    /// key is missing or refused (the message says which), or the token went away.
    #[error("hardware key unavailable: {key}: {problem}")]
    KeyUnavailable {
        /// The key's `pkcs11:` URI (it never holds a PIN).
        key: String,
        /// What is wrong, and what to do about it.
        problem: String,
    },
    /// The certificate is not the one of the key: its public key is another.
    #[error("the certificate does not match the private key {key}. Hint: {hint}")]
    KeyMismatch {
        /// The key (a file path or a `pkcs11:` URI).
        key: String,
        /// What to do.
        hint: &'static str,
    },
    /// A certificate, key or CRL file cannot be read or holds nothing usable.
    #[error("{path:?}: {problem}. Hint: {hint}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What to do.
        hint: &'static str,
    },
}

/// One TLS-PSK identity and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct PskEntry {
    /// The identity the peer names itself with (1-127 bytes).
    pub identity: String,
    /// The shared key (1-64 bytes).
    pub key: Vec<u8>,
}

impl fmt::Debug for PskEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("PskEntry")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Reads a PSK file: `identity:hexkey` lines (blank lines and `#` comments aside). The file
/// must be readable by its owner only; errors name the line, never a key.
pub fn read_psk_file(path: &Path) -> Result<Vec<PskEntry>, TlsError> {
    let bad = |problem: String, hint: &'static str| TlsError::File {
        path: path.to_owned(),
        problem,
        hint,
    };
    let bytes =
        crate::private_fs::read_secret_file(path).map_err(|e| bad(e.to_string(), e.hint()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        bad(
            "it is not UTF-8 text".into(),
            "write one `identity:hexkey` per line",
        )
    })?;
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        const HINT: &str = "write one `identity:hexkey` per line: a name, a colon, the key in hex \
                            (32 hex digits for a 16-byte random key)";
        let (identity, hex) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("line {}: expected identity:hexkey", n + 1), HINT))?;
        let key = decode_hex(hex.trim())
            .ok_or_else(|| bad(format!("line {}: the key is not hex", n + 1), HINT))?;
        if identity.is_empty() || identity.len() > 127 || key.is_empty() || key.len() > 64 {
            return Err(bad(
                format!(
                    "line {}: identity must be 1-127 bytes, key 1-64 bytes",
                    n + 1
                ),
                HINT,
            ));
        }
        entries.push(PskEntry {
            identity: identity.to_owned(),
            key,
        });
    }
    Ok(entries)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Where a private key lives: a file ([`FileKey`]) or a PKCS#11 token (`fieldlink-keys`), behind
/// the same port, so that a token's key never has to leave the hardware.
pub trait KeySource: fmt::Debug + Send + Sync {
    /// A key that signs handshakes.
    fn signing_key(&self, provider: &CryptoProvider) -> Result<Arc<dyn SigningKey>, TlsError>;

    /// How errors name this key: its path or URI, never its secret.
    fn name(&self) -> String;
}

/// `chain` with the key from `key`, refused when the end-entity certificate's public key is not
/// the key's (a renewed certificate installed next to the old key, a key label mixed up).
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &dyn KeySource,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certified = CertifiedKey::new(chain, key.signing_key(provider)?);
    match certified.keys_match() {
        // A key that cannot tell its public key is checked by the peer in the handshake.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                key: key.name(),
                hint: "give the certificate issued for this key (compare their public keys with \
                       `openssl x509 -pubkey` and `fieldlink keys list`)",
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// A private key as a component's configuration names it: `key_file` or `key_uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A PEM file.
    File(PathBuf),
    /// A key in a PKCS#11 token, named by its RFC 7512 URI (`pkcs11:token=…;object=…`). The
    /// URI names the key only: the module and the PIN come from `[keys]`.
    Pkcs11(String),
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Pkcs11(uri) => f.write_str(uri),
        }
    }
}

/// Turns the keys the configuration names into [`KeySource`]s. The binary gives each component
/// one that reaches PKCS#11 tokens; [`FileKeys`] knows files only. Called for each new TLS
/// configuration (each uplink connection attempt, each listener reload), so a resolver that
/// opens tokens should keep their sessions.
pub trait KeyResolver: fmt::Debug + Send + Sync {
    /// The key source for `key`.
    fn resolve(&self, key: &KeyRef) -> Result<Arc<dyn KeySource>, TlsError>;
}

/// Resolves key files; refuses a PKCS#11 URI (it needs the resolver `crates/fieldlink` wires).
#[derive(Debug, Clone, Copy, Default)]
pub struct FileKeys;

impl KeyResolver for FileKeys {
    fn resolve(&self, key: &KeyRef) -> Result<Arc<dyn KeySource>, TlsError> {
        match key {
            KeyRef::File(path) => Ok(Arc::new(FileKey(path.clone()))),
            KeyRef::Pkcs11(uri) => Err(TlsError::KeyUnavailable {
                key: uri.clone(),
                problem: "this component was started without a PKCS#11 key resolver".into(),
            }),
        }
    }
}

/// A PEM private key file (PKCS#8, SEC1 or PKCS#1).
#[derive(Debug, Clone)]
pub struct FileKey(pub PathBuf);

impl KeySource for FileKey {
    fn signing_key(&self, provider: &CryptoProvider) -> Result<Arc<dyn SigningKey>, TlsError> {
        let key = PrivateKeyDer::from_pem_file(&self.0).map_err(|e| TlsError::File {
            path: self.0.clone(),
            problem: format!("no private key: {e}"),
            hint: "give a PEM private key (PKCS#8, SEC1 or PKCS#1)",
        })?;
        provider
            .key_provider
            .load_private_key(key)
            .map_err(TlsError::from)
    }

    fn name(&self) -> String {
        self.0.display().to_string()
    }
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| e.to_string());
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(file_error(
            path,
            "no certificate in the file".into(),
            "give a PEM file with BEGIN CERTIFICATE blocks",
        )),
        Err(e) => Err(file_error(
            path,
            e,
            "give a readable PEM file with BEGIN CERTIFICATE blocks",
        )),
    }
}

/// Reads every CRL of a PEM file.
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls: Result<Vec<_>, _> = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| e.to_string());
    match crls {
        Ok(crls) if !crls.is_empty() => Ok(crls),
        Ok(_) => Err(file_error(
            path,
            "no CRL in the file".into(),
            "give a PEM file with BEGIN X509 CRL blocks",
        )),
        Err(e) => Err(file_error(
            path,
            e,
            "give a readable PEM file with BEGIN X509 CRL blocks",
        )),
    }
}

fn file_error(path: &Path, problem: String, hint: &'static str) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        problem,
        hint,
    }
}

/// What a TLS client needs beyond the policy.
#[derive(Debug)]
pub struct ClientTls {
    /// The CAs trusted for the server.
    pub roots: RootCertStore,
    /// Revocation lists checked against the server's chain.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Our chain and key, for mutual TLS.
    pub identity: Option<(Vec<CertificateDer<'static>>, Arc<dyn KeySource>)>,
    /// ALPN protocols to offer.
    pub alpn: Vec<Vec<u8>>,
    /// Where to keep the server's chain once it is verified (for the expiry monitor).
    pub peer_chain: Option<PeerChain>,
}

/// The certificate chain the server presented in the last handshake that verified, end entity
/// first. MQTT clients do not expose the peer's certificates; the verifier records them here.
#[derive(Debug, Clone, Default)]
pub struct PeerChain(Arc<std::sync::Mutex<Vec<CertificateDer<'static>>>>);

impl PeerChain {
    /// The chain of the last verified handshake (empty before the first).
    pub fn latest(&self) -> Vec<CertificateDer<'static>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<CertificateDer<'static>>> {
        // A chain is replaced whole: a panic elsewhere cannot leave it half written.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// rustls' web-PKI verifier, recording each chain it accepts into a [`PeerChain`].
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    chain: PeerChain,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        *self.chain.lock() = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Installs *ring* as the process-wide default provider. Idempotent; call it once in `main`.
pub fn install_default_provider() {
    // Err only means a default is already installed, which is what we want.
    let _ = ring::default_provider().install_default();
}

impl TlsPolicy {
    /// The provider this policy allows: *ring*, AEAD suites only, TLS 1.3 suites only when
    /// TLS 1.3 is the minimum.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        let mut provider = ring::default_provider();
        let min = self.min_version;
        provider
            .cipher_suites
            .retain(|suite| is_aead(suite) && (min == MinTlsVersion::Tls12 || is_tls13(suite)));
        Arc::new(provider)
    }

    fn versions(&self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match self.min_version {
            MinTlsVersion::Tls12 => rustls::ALL_VERSIONS,
            MinTlsVersion::Tls13 => TLS13_ONLY,
        }
    }

    /// A client configuration that verifies the server against `roots` (hostname included) and
    /// presents no client certificate.
    pub fn client_config(&self, roots: RootCertStore) -> Result<ClientConfig, TlsError> {
        self.client_config_with(ClientTls {
            roots,
            crls: Vec::new(),
            identity: None,
            alpn: Vec::new(),
            peer_chain: None,
        })
    }

    /// A client configuration: the server verified against `tls.roots` (hostname included)
    /// and `tls.crls`, our identity presented when given, `tls.alpn` offered.
    pub fn client_config_with(&self, tls: ClientTls) -> Result<ClientConfig, TlsError> {
        let provider = self.provider();
        let mut verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(tls.roots), provider.clone());
        if !tls.crls.is_empty() {
            // The CRLs the operator gives cover the CAs they know; a chain element without one is
            // not an error (rustls' default would refuse it).
            verifier = verifier
                .with_crls(tls.crls)
                .allow_unknown_revocation_status();
            if self.stale_crl == crate::crl::StaleCrl::Refuse {
                verifier = verifier.enforce_revocation_expiration();
            }
        }
        let verifier = verifier.build()?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.versions())?;
        let builder = match tls.peer_chain {
            None => builder.with_webpki_verifier(verifier),
            // Still the web-PKI verifier, only watched: nothing is relaxed.
            Some(chain) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(RecordingVerifier {
                    inner: verifier,
                    chain,
                })),
        };
        let mut config = match tls.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let key = certified_key(chain, key.as_ref(), &provider)?;
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)))
            }
        };
        config.alpn_protocols = tls.alpn;
        Ok(config)
    }

    /// A listener's server configuration: `chain` with the key from `key`, and, when
    /// `clients` is given, a client certificate required and verified against those CAs and
    /// CRLs (an unknown revocation status is allowed: CRLs cover the CAs the operator lists).
    pub fn listener_config(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &dyn KeySource,
        clients: Option<(RootCertStore, Vec<CertificateRevocationListDer<'static>>)>,
    ) -> Result<ServerConfig, TlsError> {
        let provider = self.provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(self.versions())?;
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some((roots, crls)) => {
                let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                );
                if !crls.is_empty() {
                    verifier = verifier.with_crls(crls).allow_unknown_revocation_status();
                    if self.stale_crl == crate::crl::StaleCrl::Refuse {
                        verifier = verifier.enforce_revocation_expiration();
                    }
                }
                builder.with_client_cert_verifier(verifier.build()?)
            }
        };
        let key = certified_key(chain, key, &provider)?;
        Ok(builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(key))))
    }

    /// A server configuration presenting `chain` and `key`, without client authentication.
    pub fn server_config(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServerConfig, TlsError> {
        Ok(ServerConfig::builder_with_provider(self.provider())
            .with_protocol_versions(self.versions())?
            .with_no_client_auth()
            .with_single_cert(chain, key)?)
    }
}

fn is_tls13(suite: &SupportedCipherSuite) -> bool {
    matches!(suite, SupportedCipherSuite::Tls13(_))
}

/// Whether a suite is an AEAD (GCM or ChaCha20-Poly1305). Every TLS 1.3 suite is; a TLS 1.2
/// suite is when its name says so. ring ships no CBC suite today; this guards a future one.
fn is_aead(suite: &SupportedCipherSuite) -> bool {
    let name = format!("{:?}", suite.suite());
    is_tls13(suite) || name.contains("_GCM_") || name.contains("CHACHA20_POLY1305")
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::{ClientConnection, ServerConnection};

    struct Pki {
        roots: RootCertStore,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        Pki {
            roots,
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// Runs a handshake in memory; returns the negotiated version or the first error.
    fn handshake(
        client: ClientConfig,
        server: ServerConfig,
    ) -> Result<rustls::ProtocolVersion, rustls::Error> {
        let name = "localhost".try_into().unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name)?;
        let mut s = ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(c.protocol_version().unwrap());
            }
        }
        panic!("handshake did not finish");
    }

    /// Builds every configuration the project makes, without a process default provider:
    /// a dependency that enables a second provider must not turn this into a panic.
    #[test]
    fn every_configuration_builds_and_handshakes() {
        let pki = pki();
        for min_version in [MinTlsVersion::Tls12, MinTlsVersion::Tls13] {
            let policy = TlsPolicy {
                min_version,
                ..TlsPolicy::default()
            };
            let client = policy.client_config(pki.roots.clone()).unwrap();
            let server = policy
                .server_config(pki.chain.clone(), pki.key.clone_key())
                .unwrap();
            assert_eq!(
                handshake(client, server).unwrap(),
                rustls::ProtocolVersion::TLSv1_3
            );
        }
    }

    #[test]
    fn a_tls13_only_server_refuses_a_tls12_only_client() {
        let pki = pki();
        let server = TlsPolicy {
            min_version: MinTlsVersion::Tls13,
            ..TlsPolicy::default()
        }
        .server_config(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
        let tls12_client = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(pki.roots.clone())
            .with_no_client_auth();
        assert!(handshake(tls12_client, server).is_err());
    }

    #[test]
    fn a_client_refuses_a_server_from_another_ca() {
        let (ours, theirs) = (pki(), pki());
        let policy = TlsPolicy::default();
        let client = policy.client_config(ours.roots).unwrap();
        let server = policy.server_config(theirs.chain, theirs.key).unwrap();
        let err = handshake(client, server).unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn only_aead_suites_are_offered() {
        for min_version in [MinTlsVersion::Tls12, MinTlsVersion::Tls13] {
            let provider = TlsPolicy {
                min_version,
                ..TlsPolicy::default()
            }
            .provider();
            assert!(!provider.cipher_suites.is_empty());
            for suite in &provider.cipher_suites {
                let name = format!("{:?}", suite.suite());
                assert!(name.contains("GCM") || name.contains("CHACHA20"), "{name}");
                if min_version == MinTlsVersion::Tls13 {
                    assert!(name.starts_with("TLS13_"), "{name}");
                }
            }
        }
    }
}
