//! A private key in a token, and the two signers over it: rustls' (TLS handshakes) and rcgen's
//! (certificate requests). The key never leaves the token: the token signs a digest we compute.

use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use fieldlink_core::tls::{KeySource, TlsError};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{SubjectPublicKeyInfoDer, alg_id};
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::error::KeyError;
use crate::token::TokenSession;
use crate::uri::KeyUri;

/// The named curves fieldlink signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Curve {
    /// NIST P-256 (secp256r1), with SHA-256.
    P256,
    /// NIST P-384 (secp384r1), with SHA-384.
    P384,
}

impl Curve {
    /// The DER of the curve's OID, as CKA_EC_PARAMS holds it.
    pub fn ec_params(self) -> &'static [u8] {
        match self {
            Self::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Self::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }

    fn from_params(params: &[u8]) -> Option<Self> {
        [Self::P256, Self::P384]
            .into_iter()
            .find(|c| c.ec_params() == params)
    }

    /// The size of one coordinate (and of r and s) in bytes.
    fn size(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    fn scheme(self) -> SignatureScheme {
        match self {
            Self::P256 => SignatureScheme::ECDSA_NISTP256_SHA256,
            Self::P384 => SignatureScheme::ECDSA_NISTP384_SHA384,
        }
    }

    fn digest(self, message: &[u8]) -> ring::digest::Digest {
        let algorithm = match self {
            Self::P256 => &ring::digest::SHA256,
            Self::P384 => &ring::digest::SHA384,
        };
        ring::digest::digest(algorithm, message)
    }
}

/// A private key on a token, with its public half read once.
#[derive(Debug)]
pub struct TokenKey {
    session: Arc<TokenSession>,
    handle: ObjectHandle,
    curve: Curve,
    /// The uncompressed public point (0x04 ‖ X ‖ Y).
    point: Vec<u8>,
    /// Set when the token failed to sign: the session is not to be trusted again.
    failed: std::sync::atomic::AtomicBool,
    /// How errors name it.
    name: String,
}

impl TokenKey {
    /// Finds the private key `uri` names on `session`'s token and reads its public key.
    pub fn find(session: Arc<TokenSession>, uri: &KeyUri, name: String) -> Result<Self, KeyError> {
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        template.extend(select(uri));
        let handles = session
            .with(|s| s.find_objects(&template))
            .map_err(|e| session.error("C_FindObjects", e))?;
        let no_key = || KeyError::NoKey {
            token: session.label.clone(),
            object: uri.object_name(),
        };
        let handle = *handles.first().ok_or_else(no_key)?;
        let unsupported = |problem: String| KeyError::Unsupported {
            token: session.label.clone(),
            object: uri.object_name(),
            problem,
        };
        let attributes = session
            .with(|s| s.get_attributes(handle, &[AttributeType::KeyType, AttributeType::EcParams]))
            .map_err(|e| session.error("C_GetAttributeValue", e))?;
        let mut key_type = None;
        let mut params = None;
        for attribute in attributes {
            match attribute {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::EcParams(p) => params = Some(p),
                _ => {}
            }
        }
        if key_type != Some(KeyType::EC) {
            return Err(unsupported(format!("a {key_type:?} key, not EC")));
        }
        let curve = params
            .as_deref()
            .and_then(Curve::from_params)
            .ok_or_else(|| unsupported("not on P-256 or P-384".into()))?;
        let point = public_point(&session, uri, curve).ok_or_else(|| {
            unsupported("no public key object with the same label or id (CKA_EC_POINT)".into())
        })?;
        Ok(Self {
            session,
            handle,
            curve,
            point,
            name,
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The curve.
    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The public key as a SubjectPublicKeyInfo (what a certificate carries).
    pub fn spki(&self) -> SubjectPublicKeyInfoDer<'static> {
        let alg = match self.curve {
            Curve::P256 => alg_id::ECDSA_P256,
            Curve::P384 => alg_id::ECDSA_P384,
        };
        rustls::sign::public_key_to_spki(&alg, &self.point)
    }

    /// Whether the token still answers (false once it went away or failed to sign).
    pub fn is_alive(&self) -> bool {
        !self.failed.load(std::sync::atomic::Ordering::Relaxed) && self.session.is_alive()
    }

    /// Signs `message` (hashed here with the curve's hash): a DER ECDSA-Sig-Value.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let digest = self.curve.digest(message);
        let raw = self
            .session
            .with(|s| s.sign(&Mechanism::Ecdsa, self.handle, digest.as_ref()))
            .map_err(|e| {
                self.failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.session.error("C_Sign", e)
            })?;
        if raw.len() != 2 * self.curve.size() {
            return Err(self
                .session
                .error("C_Sign", cryptoki::error::Error::InvalidValue));
        }
        let (r, s) = raw.split_at(self.curve.size());
        Ok(der_signature(r, s))
    }
}

/// A [`TokenKey`] as a [`KeySource`] for rustls.
#[derive(Debug, Clone)]
pub struct TokenKeySource(pub Arc<TokenKey>);

impl KeySource for TokenKeySource {
    fn signing_key(&self, _: &CryptoProvider) -> Result<Arc<dyn SigningKey>, TlsError> {
        Ok(Arc::new(TlsSigner(self.0.clone())))
    }

    fn name(&self) -> String {
        self.0.name.clone()
    }
}

/// rustls' view of a token key.
#[derive(Debug)]
struct TlsSigner(Arc<TokenKey>);

impl SigningKey for TlsSigner {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self.0.curve.scheme();
        offered
            .contains(&scheme)
            .then(|| Box::new(TlsSignature(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(self.0.spki())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct TlsSignature(Arc<TokenKey>);

impl Signer for TlsSignature {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // Synchronous by rustls' design: a token signs in well under a millisecond (SoftHSM2)
        // to some milliseconds (a TPM), short enough for a tokio worker.
        self.0.sign(message).map_err(|e| {
            tracing::warn!(key = %self.0.name, error = %e, "Hardware key unavailable");
            rustls::Error::General(format!("hardware key unavailable: {e}"))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.0.curve.scheme()
    }
}

impl rcgen::PublicKeyData for TokenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.curve {
            Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
}

impl rcgen::SigningKey for TokenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        TokenKey::sign(self, msg).map_err(|e| {
            tracing::warn!(key = %self.name, error = %e, "The token could not sign");
            rcgen::Error::RemoteKeyError
        })
    }
}

/// The template attributes that pick the key the URI names.
pub(crate) fn select(uri: &KeyUri) -> Vec<Attribute> {
    let mut template = Vec::new();
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    template
}

/// The public point of the key pair: from the public key object (CKA_EC_POINT, DER-wrapped in
/// an OCTET STRING by most modules, raw by some).
fn public_point(session: &TokenSession, uri: &KeyUri, curve: Curve) -> Option<Vec<u8>> {
    let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    template.extend(select(uri));
    let handle = *session.with(|s| s.find_objects(&template)).ok()?.first()?;
    let attributes = session
        .with(|s| s.get_attributes(handle, &[AttributeType::EcPoint]))
        .ok()?;
    let point = attributes.into_iter().find_map(|a| match a {
        Attribute::EcPoint(p) => Some(p),
        _ => None,
    })?;
    let len = 1 + 2 * curve.size();
    match point.len() {
        n if n == len && point[0] == 0x04 => Some(point),
        n if n == len + 2 && point[0] == 0x04 && usize::from(point[1]) == len => {
            Some(point[2..].to_vec())
        }
        _ => None,
    }
}

/// r ‖ s as a DER `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`.
fn der_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn integer(value: &[u8]) -> Vec<u8> {
        let start = value
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(value.len() - 1);
        let value = &value[start..];
        // A leading 1 bit would make the INTEGER negative: prefix a zero.
        let pad = value[0] & 0x80 != 0;
        let mut out = vec![0x02, (value.len() + usize::from(pad)) as u8];
        if pad {
            out.push(0);
        }
        out.extend_from_slice(value);
        out
    }
    let body: Vec<u8> = [integer(r), integer(s)].concat();
    // At most 2 × (2 + 49) = 102 bytes for P-384: the short length form always fits.
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_der_integers_without_sign_trouble() {
        let r = [0x80; 32];
        let mut s = [0u8; 32];
        s[31] = 1;
        let der = der_signature(&r, &s);
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
        assert_eq!(usize::from(der[1]), der.len() - 2);
    }
}
