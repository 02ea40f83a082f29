//! Certificate expiry: when each certificate in use stops being valid, and the warnings that
//! follow as that day comes near.
//!
//! The not-after date is read straight from the DER (certificate → tbsCertificate → validity)
//! with `fieldlink_core::der`; anything unexpected is an error, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldlink_core::der::{tbs_fields, tlv};
use rustls::pki_types::CertificateDer;

/// Days before expiry at which a warning is raised, most urgent last.
pub const WARN_DAYS: [u64; 3] = [30, 7, 1];

/// The not-after time of a DER certificate, in seconds since the Unix epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (tag, validity, _) = tlv(tbs_fields(cert.as_ref())?.validity)?;
    if tag != 0x30 {
        return None;
    }
    let after_not_before = tlv(validity)?.2;
    let (tag, time, _) = tlv(after_not_before)?;
    parse_time(tag, std::str::from_utf8(time).ok()?)
}

/// The issuer's distinguished name, as DER (to find the CA that issued a certificate).
pub fn issuer(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    Some(tbs_fields(cert.as_ref())?.issuer.to_vec())
}

/// The subject's distinguished name, as DER.
pub fn subject(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    Some(tbs_fields(cert.as_ref())?.subject.to_vec())
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

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) to Unix seconds.
fn parse_time(tag: u8, text: &str) -> Option<i64> {
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            // RFC 5280: 50-99 are 19xx, 00-49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
