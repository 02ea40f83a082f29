//! Certificate expiry: when each certificate in use stops being valid, and the warnings that
//! follow as that day comes near.
//!
//! The dates and names are read with `fieldlink_core::x509` (a maintained X.509 parser);
//! anything unexpected is `None`, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldlink_core::x509;
use rustls::pki_types::CertificateDer;

/// Days before expiry at which a warning is raised, most urgent last.
pub const WARN_DAYS: [u64; 3] = [30, 7, 1];

/// The not-after time of a DER certificate, in seconds since the Unix epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    x509::not_after(cert.as_ref())
}

/// The issuer's distinguished name, as DER (to find the CA that issued a certificate).
pub fn issuer(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    x509::issuer(cert.as_ref())
}

/// The subject's distinguished name, as DER.
pub fn subject(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    x509::subject(cert.as_ref())
}

/// The most urgent warning threshold (in days) that `not_after` has crossed at `now`, if any.
pub fn warning_level(not_after: i64, now: SystemTime) -> Option<u64> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let left = not_after - now;
    WARN_DAYS
        .iter()
        .rev()
        .copied()
        .find(|days| left <= (*days as i64) * 86_400)
}

/// Time left until `not_after`, or `None` when it has passed.
pub fn remaining(not_after: i64, now: SystemTime) -> Option<Duration> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    u64::try_from(not_after - now).ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_expiring(year: i32, month: u8, day: u8) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn not_after_is_read_from_real_certificates() {
        // 2049 is written as UTCTime, 2051 as GeneralizedTime (RFC 5280).
        assert_eq!(not_after(&cert_expiring(2049, 12, 31)), Some(2_524_521_600));
        assert_eq!(not_after(&cert_expiring(2051, 1, 1)), Some(2_556_144_000));
        assert_eq!(not_after(&cert_expiring(2027, 3, 1)), Some(1_803_859_200));
    }

    #[test]
    fn issuer_and_subject_link_a_certificate_to_its_ca() {
        let ca = fieldlink_test_support::certs::TestCa::new("linking CA");
        let leaf = ca.issue("leaf", &["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let der = |pem: &str| {
            let path = fieldlink_test_support::certs::write(dir.path(), "c.pem", pem);
            fieldlink_core::tls::read_certs(&path).unwrap().remove(0)
        };
        let (ca_der, leaf_der) = (der(ca.pem()), der(&leaf.cert_pem));
        assert_eq!(issuer(&leaf_der).unwrap(), subject(&ca_der).unwrap());
        assert_ne!(subject(&leaf_der).unwrap(), subject(&ca_der).unwrap());
        assert_eq!(issuer(&ca_der), subject(&ca_der), "a root issues itself");
    }

    #[test]
    fn garbage_gives_none_not_a_panic() {
        let good = cert_expiring(2030, 1, 1);
        for cut in 0..good.as_ref().len() {
            let _ = not_after(&CertificateDer::from(&good.as_ref()[..cut]));
        }
        assert_eq!(
            not_after(&CertificateDer::from(
                &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..]
            )),
            None
        );
        assert_eq!(not_after(&CertificateDer::from(&[][..])), None);
    }

    #[test]
    fn warnings_start_at_30_7_and_1_days() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let at = |days: i64| 1_000_000_000 + days * 86_400;
        assert_eq!(warning_level(at(31), now), None);
        assert_eq!(warning_level(at(30), now), Some(30));
        assert_eq!(warning_level(at(7), now), Some(7));
        assert_eq!(warning_level(at(1), now), Some(1));
        assert_eq!(warning_level(at(-3), now), Some(1));
        assert_eq!(remaining(at(-3), now), None);
    }
}
