//! What fieldlink reads from X.509 certificates and CRLs: a device's name (subject CN or first
//! DNS name), validity dates, issuer and subject names, a CRL's issuer and nextUpdate.
//!
//! Parsing is RustCrypto's `x509-cert` (strict DER), not a walker of ours: the name read here
//! decides which ACL a device gets, so it must come from the same structure a maintained,
//! fuzzed parser sees. Anything it cannot decode gives `None`, never a panic.

use std::time::SystemTime;

use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::{DirectoryString, GeneralName};

/// id-at-commonName (2.5.4.3).
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

fn certificate(der: &[u8]) -> Option<Certificate> {
    Certificate::from_der(der).ok()
}

/// The subject's common name (the last one, as in X.509 practice), if it is a string.
pub fn common_name(der: &[u8]) -> Option<String> {
    let cert = certificate(der)?;
    cert.tbs_certificate()
        .subject()
        .iter()
        .filter(|attribute| attribute.oid == COMMON_NAME)
        .last()
        .and_then(|attribute| attribute.value.decode_as::<DirectoryString>().ok())
        .map(String::from)
}

/// The first DNS name of the subject alternative names extension.
pub fn first_dns_name(der: &[u8]) -> Option<String> {
    let cert = certificate(der)?;
    let (_critical, names) = cert
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .ok()??;
    names.0.into_iter().find_map(|name| match name {
        GeneralName::DnsName(dns) => Some(dns.to_string()),
        _ => None,
    })
}

/// When a certificate stops being valid, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let cert = certificate(der)?;
    let after = cert
        .tbs_certificate()
        .validity()
        .not_after
        .to_unix_duration();
    i64::try_from(after.as_secs()).ok()
}

/// The issuer's distinguished name, as DER (to find the CA that issued a certificate).
pub fn issuer(der: &[u8]) -> Option<Vec<u8>> {
    certificate(der)?.tbs_certificate().issuer().to_der().ok()
}

/// The subject's distinguished name, as DER.
pub fn subject(der: &[u8]) -> Option<Vec<u8>> {
    certificate(der)?.tbs_certificate().subject().to_der().ok()
}

/// The subject's distinguished name in words (RFC 4514, e.g. `CN=gw-7,O=Plant`), for pages
/// that list certificates.
pub fn subject_text(der: &[u8]) -> Option<String> {
    Some(certificate(der)?.tbs_certificate().subject().to_string())
}

/// The issuer's distinguished name in words (RFC 4514).
pub fn issuer_text(der: &[u8]) -> Option<String> {
    Some(certificate(der)?.tbs_certificate().issuer().to_string())
}

/// What a CRL says about its own freshness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFreshness {
    /// The issuing CA's name, RFC 4514 style (`CN=plant CA,O=...`), for messages.
    pub issuer: String,
    /// When the CA promised the next CRL; `None` when the CRL does not say.
    pub next_update: Option<SystemTime>,
    /// The same, in words (`2026-01-01T00:00:00Z`), or empty.
    pub next_update_text: String,
}

impl CrlFreshness {
    /// Whether the CRL is past its nextUpdate at `now` (a CRL without one never is).
    pub fn is_stale(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|next| next < now)
    }
}

/// Reads a DER CRL's issuer and nextUpdate.
pub fn crl_freshness(der: &[u8]) -> Option<CrlFreshness> {
    let crl: CertificateList = CertificateList::from_der(der).ok()?;
    let tbs = &crl.tbs_cert_list;
    Some(CrlFreshness {
        issuer: tbs.issuer.to_string(),
        next_update: tbs
            .next_update
            .map(|time| SystemTime::UNIX_EPOCH + time.to_unix_duration()),
        next_update_text: tbs
            .next_update
            .map(|time| time.to_date_time().to_string())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: Option<&str>, sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "plant 3");
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_and_the_first_dns_name_are_read() {
        let both = cert(
            Some("device-7"),
            &["meter-7.plant.example", "spare.example"],
        );
        assert_eq!(common_name(&both).as_deref(), Some("device-7"));
        assert_eq!(
            first_dns_name(&both).as_deref(),
            Some("meter-7.plant.example")
        );
        let neither = cert(None, &[]);
        assert_eq!(common_name(&neither), None, "another attribute is not a CN");
        assert_eq!(first_dns_name(&neither), None);
    }

    #[test]
    fn validity_issuer_and_subject_are_read() {
        let der = cert(Some("device-7"), &[]);
        assert_eq!(not_after(&der), Some(2_524_521_600));
        // Self-signed: the issuer is the subject.
        assert!(issuer(&der).is_some());
        assert_eq!(issuer(&der), subject(&der));
    }

    #[test]
    fn garbage_gives_none_not_a_panic() {
        let good = cert(Some("x"), &["x.example"]);
        for cut in 0..good.len() {
            assert_eq!(common_name(&good[..cut]), None);
            assert_eq!(first_dns_name(&good[..cut]), None);
            assert_eq!(not_after(&good[..cut]), None);
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(crl_freshness(&good), None, "a certificate is not a CRL");
    }
}
