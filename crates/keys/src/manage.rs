//! What `fieldlink keys` does on a token: list its keys, generate one (born in the token, never
//! extractable), make a CSR signed by it, install the certificate issued for it (checked first)
//! and delete it.

use std::path::Path;
use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass, ObjectHandle};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::Serialize;

use crate::error::KeyError;
use crate::key::{Curve, TokenKey, TokenKeySource};
use crate::token::{TokenInfo, TokenSession, Tokens};
use crate::uri::{KeyUri, hex, key_uri};

/// A token and the keys on it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedToken {
    /// The token.
    #[serde(flatten)]
    pub token: TokenInfo,
    /// Its private keys (empty when it could not be opened: see `error`).
    pub keys: Vec<ListedKey>,
    /// Why its keys could not be listed (e.g. the PIN is another token's).
    pub error: Option<String>,
}

/// A private key on a token.
#[derive(Debug, Clone, Serialize)]
pub struct ListedKey {
    /// CKA_LABEL.
    pub label: String,
    /// CKA_ID in hex.
    pub id: String,
    /// Its URI, for `key_uri` in the configuration.
    pub uri: String,
    /// The curve, when an EC key fieldlink can use.
    pub curve: Option<Curve>,
    /// CKA_SENSITIVE: the token never reveals it.
    pub sensitive: bool,
    /// CKA_EXTRACTABLE: it could be exported wrapped.
    pub extractable: bool,
    /// Whether a certificate with its label is installed on the token.
    pub certificate: bool,
}

/// Every token of the module, with its keys.
pub fn list(tokens: &Tokens) -> Result<Vec<ListedToken>, KeyError> {
    let mut out = Vec::new();
    for (_, info) in tokens.list()? {
        let listed = tokens
            .open(&info.label, Some(&info.serial))
            .and_then(|session| keys_on(&session));
        let (keys, error) = match listed {
            Ok(keys) => (keys, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        out.push(ListedToken {
            token: info,
            keys,
            error,
        });
    }
    Ok(out)
}

fn keys_on(session: &Arc<TokenSession>) -> Result<Vec<ListedKey>, KeyError> {
    let handles = session
        .with(|s| s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]))
        .map_err(|e| session.error("C_FindObjects", e))?;
    let mut keys = Vec::new();
    for handle in handles {
        let attributes = session
            .with(|s| {
                s.get_attributes(
                    handle,
                    &[
                        AttributeType::Label,
                        AttributeType::Id,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                    ],
                )
            })
            .map_err(|e| session.error("C_GetAttributeValue", e))?;
        let mut key = ListedKey {
            label: String::new(),
            id: String::new(),
            uri: String::new(),
            curve: None,
            sensitive: false,
            extractable: false,
            certificate: false,
        };
        for attribute in attributes {
            match attribute {
                Attribute::Label(l) => key.label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Id(id) => key.id = hex(&id),
                Attribute::Sensitive(b) => key.sensitive = b,
                Attribute::Extractable(b) => key.extractable = b,
                _ => {}
            }
        }
        key.uri = key_uri(&session.label, &key.label);
        let uri = KeyUri::parse(&key.uri)?;
        // A key of another kind (RSA, an AES secret) is listed without a curve.
        key.curve = TokenKey::find(session.clone(), &uri, key.uri.clone())
            .ok()
            .map(|k| k.curve());
        key.certificate = !find(session, ObjectClass::CERTIFICATE, &key.label)?.is_empty();
        keys.push(key);
    }
    keys.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(keys)
}

/// An ECDSA key pair born in the token: the private half sensitive and not extractable.
pub fn generate(
    session: &Arc<TokenSession>,
    label: &str,
    curve: Curve,
) -> Result<ListedKey, KeyError> {
    if !find(session, ObjectClass::PRIVATE_KEY, label)?.is_empty() {
        return Err(KeyError::Exists {
            token: session.label.clone(),
            label: label.to_owned(),
        });
    }
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).map_err(|_| {
        KeyError::Token {
            token: session.label.clone(),
            call: "random id",
            problem: "the system's random source failed".into(),
        }
    })?;
    let label_bytes = label.as_bytes().to_vec();
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::EcParams(curve.ec_params().to_vec()),
        Attribute::Verify(true),
        Attribute::Label(label_bytes.clone()),
        Attribute::Id(id.to_vec()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Label(label_bytes),
        Attribute::Id(id.to_vec()),
    ];
    session
        .with(|s| s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private))
        .map_err(|e| session.error("C_GenerateKeyPair", e))?;
    Ok(ListedKey {
        label: label.to_owned(),
        id: hex(&id),
        uri: key_uri(&session.label, label),
        curve: Some(curve),
        sensitive: true,
        extractable: false,
        certificate: false,
    })
}

/// A PKCS#10 request for the key `label`, signed by the token: PEM.
pub fn csr(
    session: &Arc<TokenSession>,
    label: &str,
    common_name: &str,
    sans: &[String],
) -> Result<String, KeyError> {
    let key = open_key(session, label)?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec()).map_err(|e| KeyError::Uri {
        uri: sans.join(","),
        problem: format!("not a subject alternative name: {e}"),
    })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let request = params
        .serialize_request(key.as_ref())
        .map_err(|e| KeyError::Token {
            token: session.label.clone(),
            call: "sign the request",
            problem: e.to_string(),
        })?;
    request.pem().map_err(|e| KeyError::Token {
        token: session.label.clone(),
        call: "encode the request",
        problem: e.to_string(),
    })
}

/// Checks `cert_file` against the key `label` (same public key), `ca_file` (it chains to it)
/// and the clock (valid now), then stores it on the token next to the key. Nothing is stored
/// when a check fails.
pub fn install_cert(
    session: &Arc<TokenSession>,
    label: &str,
    cert_file: &Path,
    ca_file: &Path,
) -> Result<(), KeyError> {
    let refused = |problem: String| KeyError::Certificate {
        path: cert_file.to_owned(),
        problem,
    };
    let chain = fieldlink_core::tls::read_certs(cert_file).map_err(|e| refused(e.to_string()))?;
    let cas = fieldlink_core::tls::read_certs(ca_file).map_err(|e| refused(e.to_string()))?;
    let key = open_key(session, label)?;
    let provider = rustls::crypto::ring::default_provider();
    fieldlink_core::tls::certified_key(chain.clone(), &TokenKeySource(key.clone()), &provider)
        .map_err(|_| {
            refused(format!(
                "its public key is not the one of key {label:?} on token {:?}",
                session.label
            ))
        })?;
    verify_chain(&chain, &cas, &provider)
        .map_err(|problem| refused(format!("{problem} (CA file {ca_file:?})")))?;
    let leaf = &chain[0];
    let subject = subject_der(leaf).ok_or_else(|| refused("cannot read its subject".into()))?;
    let id = key_id(session, label)?;
    for old in find(session, ObjectClass::CERTIFICATE, label)? {
        session
            .with(|s| s.destroy_object(old))
            .map_err(|e| session.error("C_DestroyObject", e))?;
    }
    session
        .with(|s| {
            s.create_object(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::CertificateType(CertificateType::X_509),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id),
                Attribute::Subject(subject),
                Attribute::Value(leaf.to_vec()),
            ])
        })
        .map_err(|e| session.error("C_CreateObject", e))?;
    Ok(())
}

/// Deletes the key pair `label` and its certificate. Returns how many objects went.
pub fn delete(session: &Arc<TokenSession>, label: &str) -> Result<usize, KeyError> {
    let mut gone = 0;
    for class in [
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
        ObjectClass::CERTIFICATE,
    ] {
        for handle in find(session, class, label)? {
            session
                .with(|s| s.destroy_object(handle))
                .map_err(|e| session.error("C_DestroyObject", e))?;
            gone += 1;
        }
    }
    if gone == 0 {
        return Err(KeyError::NoKey {
            token: session.label.clone(),
            object: format!("{label:?}"),
        });
    }
    Ok(gone)
}

/// Whether `chain` (end entity first) leads to one of `cas`, valid now, for a TLS client or
/// server; the problem in words otherwise.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    cas: &[CertificateDer<'static>],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(), String> {
    let anchors: Vec<_> = cas
        .iter()
        .filter_map(|ca| webpki::anchor_from_trusted_cert(ca).ok())
        .collect();
    if anchors.is_empty() {
        return Err("the CA file holds no usable CA certificate".into());
    }
    let leaf = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| format!("not a usable certificate: {e}"))?;
    let now = UnixTime::now();
    let algorithms = provider.signature_verification_algorithms.all;
    let mut last = None;
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        match leaf.verify_for_usage(algorithms, &anchors, &chain[1..], now, usage, None, None) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(webpki::Error::CertExpired { .. }) => "it has expired".into(),
        Some(webpki::Error::CertNotValidYet { .. }) => {
            "it is not valid yet (or the clock is behind)".into()
        }
        Some(webpki::Error::UnknownIssuer) => "it does not chain to the configured CA".into(),
        Some(e) => format!("its chain is refused: {e}"),
        None => "its chain is refused".into(),
    })
}

/// The key `label`, ready to sign.
pub fn open_key(session: &Arc<TokenSession>, label: &str) -> Result<Arc<TokenKey>, KeyError> {
    let uri = key_uri(&session.label, label);
    let parsed = KeyUri::parse(&uri)?;
    Ok(Arc::new(TokenKey::find(session.clone(), &parsed, uri)?))
}

fn find(
    session: &TokenSession,
    class: ObjectClass,
    label: &str,
) -> Result<Vec<ObjectHandle>, KeyError> {
    session
        .with(|s| {
            s.find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
        })
        .map_err(|e| session.error("C_FindObjects", e))
}

fn key_id(session: &TokenSession, label: &str) -> Result<Vec<u8>, KeyError> {
    let handle = *find(session, ObjectClass::PRIVATE_KEY, label)?
        .first()
        .ok_or_else(|| KeyError::NoKey {
            token: session.label.clone(),
            object: format!("{label:?}"),
        })?;
    let attributes = session
        .with(|s| s.get_attributes(handle, &[AttributeType::Id]))
        .map_err(|e| session.error("C_GetAttributeValue", e))?;
    Ok(attributes
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(id) => Some(id),
            _ => None,
        })
        .unwrap_or_default())
}

fn subject_der(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_cert::der::{Decode as _, Encode as _};
    let cert = x509_cert::Certificate::from_der(cert).ok()?;
    cert.tbs_certificate().subject().to_der().ok()
}
