//! JWTs signed by the gateway's token key: the JWS compact form (RFC 7515) with ES256 or RS256
//! (RFC 7518), written here over rustls' signing keys (ring), so that any [`KeySource`] can
//! sign: a key file today, a PKCS#11 token or TPM when the key moves into hardware. No JWT crate
//! fits: they bring their own crypto backends and none signs through an external signer.

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fieldlink_core::tls::{KeyRef, KeyResolver};
use rustls::sign::Signer;
use rustls::{SignatureAlgorithm, SignatureScheme};
use zeroize::Zeroizing;

use super::{Login, check_private, unix_seconds};
use crate::UplinkError;
use crate::config::JwtSettings;

/// Makes a fresh token per connection.
pub(crate) struct JwtMaker {
    settings: JwtSettings,
    /// Resolves the key for each token: a token key that went away (a TPM reset) is found
    /// again once it is back, without a restart.
    keys: Arc<dyn KeyResolver>,
    algorithm: Algorithm,
    /// `uplink.jwt.claims`, parsed once.
    extra: serde_json::Map<String, serde_json::Value>,
}

/// The JWS algorithms offered: one per key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// ECDSA P-256 with SHA-256; the signature is r‖s, 32 bytes each.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        })
    }
}

impl JwtMaker {
    /// Signs with `settings.key` (a 0600 file, or a key in a token through `keys`); the key is
    /// resolved now, so that a missing or unusable key stops the start.
    pub(crate) fn new(
        settings: &JwtSettings,
        keys: Arc<dyn KeyResolver>,
    ) -> Result<Self, UplinkError> {
        if let KeyRef::File(path) = &settings.key {
            check_private(path)?;
        }
        let (_, algorithm) = signer(settings, keys.as_ref())?;
        let extra = match serde_json::from_str(&settings.claims) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        Ok(Self {
            settings: settings.clone(),
            keys,
            algorithm,
            extra,
        })
    }

    pub(crate) fn username(&self) -> &str {
        &self.settings.username
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A token issued `now`, valid for the configured lifetime.
    pub(crate) fn login(&self, now: SystemTime) -> Result<Login, UplinkError> {
        let iat = unix_seconds(now);
        let exp = iat + self.settings.lifetime.as_secs();
        let token = self.token(iat, exp)?;
        Ok(Login {
            username: self.settings.username.clone(),
            password: token,
            validity: Some((super::from_unix(iat), super::from_unix(exp))),
        })
    }

    /// `header.claims.signature`, each part base64url without padding.
    pub(crate) fn token(&self, iat: u64, exp: u64) -> Result<Zeroizing<String>, UplinkError> {
        let mut header = serde_json::Map::new();
        header.insert("alg".into(), self.algorithm.to_string().into());
        header.insert("typ".into(), "JWT".into());
        if let Some(kid) = &self.settings.key_id {
            header.insert("kid".into(), kid.clone().into());
        }
        let mut claims = serde_json::Map::new();
        claims.insert("aud".into(), self.settings.audience.clone().into());
        claims.insert("sub".into(), self.settings.subject.clone().into());
        // Extra claims may override aud and sub (validation keeps iat and exp ours).
        claims.extend(self.extra.clone());
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), exp.into());
        let mut signing_input = Zeroizing::new(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::Value::Object(header).to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::Value::Object(claims).to_string())
        ));
        let (signer, _) = signer(&self.settings, self.keys.as_ref())?;
        let signature =
            signer
                .sign(signing_input.as_bytes())
                .map_err(|e| UplinkError::Credentials {
                    path: key_name(&self.settings.key),
                    problem: format!("the token key could not sign: {e}"),
                })?;
        let signature = match self.algorithm {
            Algorithm::Es256 => {
                ecdsa_der_to_raw(&signature, 32).ok_or_else(|| UplinkError::Credentials {
                    path: key_name(&self.settings.key),
                    problem: "the key's ECDSA signature is not DER (r, s); please file a bug"
                        .into(),
                })?
            }
            Algorithm::Rs256 => signature,
        };
        signing_input.push('.');
        signing_input.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(signing_input)
    }
}

/// A signer over `settings.key` and the JWS algorithm its type gives.
fn signer(
    settings: &JwtSettings,
    keys: &dyn KeyResolver,
) -> Result<(Box<dyn Signer>, Algorithm), UplinkError> {
    let bad = |problem: String| UplinkError::Credentials {
        path: key_name(&settings.key),
        problem,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = keys.resolve(&settings.key)?.signing_key(&provider)?;
    let (algorithm, scheme) = match key.algorithm() {
        SignatureAlgorithm::ECDSA => (Algorithm::Es256, SignatureScheme::ECDSA_NISTP256_SHA256),
        SignatureAlgorithm::RSA => (Algorithm::Rs256, SignatureScheme::RSA_PKCS1_SHA256),
        other => {
            return Err(bad(format!(
                "a {other:?} key cannot sign tokens; use a P-256 (ES256) or RSA (RS256) key"
            )));
        }
    };
    let signer = key.choose_scheme(&[scheme]).ok_or_else(|| {
        bad("an EC key on another curve than P-256; ES256 needs a P-256 key".into())
    })?;
    Ok((signer, algorithm))
}

/// How errors name the key: its path or URI.
fn key_name(key: &KeyRef) -> std::path::PathBuf {
    std::path::PathBuf::from(key.to_string())
}

/// An ECDSA signature as DER `SEQUENCE { INTEGER r, INTEGER s }` (what TLS uses) to the
/// fixed-width `r‖s` JWS wants (RFC 7518 §3.4), each `width` bytes; `None` if it is not that.
pub(crate) fn ecdsa_der_to_raw(der: &[u8], width: usize) -> Option<Vec<u8>> {
    let (tag, body, rest) = der_item(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (tag_r, r, rest) = der_item(body)?;
    let (tag_s, s, rest) = der_item(rest)?;
    if tag_r != 0x02 || tag_s != 0x02 || !rest.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(2 * width);
    for int in [r, s] {
        // DER integers are signed: a leading zero keeps a high bit from reading as negative.
        let start = int.iter().position(|b| *b != 0).unwrap_or(int.len());
        let magnitude = &int[start..];
        if magnitude.len() > width {
            return None;
        }
        out.extend(std::iter::repeat_n(0, width - magnitude.len()));
        out.extend_from_slice(magnitude);
    }
    Some(out)
}

/// One DER tag-length-value: (tag, value, what follows). Short and one-byte long lengths only,
/// which is all a P-256 signature needs.
fn der_item(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let (len, rest) = match len {
        0..=0x7f => (usize::from(len), rest),
        0x81 => {
            let (&len, rest) = rest.split_first()?;
            (usize::from(len), rest)
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_signatures_become_fixed_width_r_and_s() {
        // r with a sign byte (33 bytes), s short (31 bytes): both come out 32 bytes.
        let mut r = vec![0x00, 0x80];
        r.extend([1; 31]);
        let s = vec![7; 31];
        let mut der = vec![0x30, (2 + r.len() + 2 + s.len()) as u8, 0x02, r.len() as u8];
        der.extend(&r);
        der.extend([0x02, s.len() as u8]);
        der.extend(&s);
        let raw = ecdsa_der_to_raw(&der, 32).unwrap();
        assert_eq!(raw.len(), 64);
        assert_eq!(&raw[..32], &r[1..]);
        assert_eq!(raw[32], 0);
        assert_eq!(&raw[33..], &s[..]);
    }

    #[test]
    fn what_is_not_a_der_signature_is_refused() {
        assert_eq!(ecdsa_der_to_raw(&[], 32), None);
        assert_eq!(ecdsa_der_to_raw(&[0x30, 0x05, 0x02, 0x01], 32), None);
        assert_eq!(
            ecdsa_der_to_raw(&[0x31, 0x06, 0x02, 0x01, 1, 0x02, 0x01, 2], 32),
            None
        );
        // An integer wider than the curve's.
        let mut der = vec![0x30, 37, 0x02, 33];
        der.extend([1; 33]);
        der.extend([0x02, 0x01, 1]);
        assert_eq!(ecdsa_der_to_raw(&der, 32), None);
    }
}
