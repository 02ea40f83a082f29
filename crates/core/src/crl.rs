//! CRL freshness: a CRL past its nextUpdate no longer proves that a certificate is not revoked.
//!
//! By default ([`StaleCrl::Refuse`]) rustls refuses the handshakes that need such a CRL (see
//! `TlsPolicy`); this module makes that visible to the operator. Each CRL file is reviewed when
//! it is loaded and again when its nextUpdate passes: a stale one logs one line ("CRL … for …
//! expired on …: update it") and stays among the status's [`crate::alarms`] until a fresh file
//! replaces it.

use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::CertificateRevocationListDer;

/// What a CRL past its nextUpdate means for new handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StaleCrl {
    /// Handshakes that need it are refused (fail safe).
    #[default]
    Refuse,
    /// It is still used, with a warning: for sites whose CA publishes late.
    Warn,
}

/// Every stale CRL, in words (they are also among [`crate::alarms::all`]).
pub fn alarms() -> Vec<String> {
    crate::alarms::all()
        .into_iter()
        .filter(|a| a.starts_with("CRL "))
        .collect()
}

fn alarm_key(path: &Path) -> String {
    format!("crl:{}", path.display())
}

/// Reviews the CRLs read from `path` at `now`: logs and records an alarm the first time one of
/// them is seen stale, clears the file's alarm when none is. Returns when to look again (the
/// earliest nextUpdate still ahead), if ever.
pub fn review(
    path: &Path,
    crls: &[CertificateRevocationListDer<'_>],
    policy: StaleCrl,
    now: SystemTime,
) -> Option<SystemTime> {
    let mut stale = Vec::new();
    let mut recheck: Option<SystemTime> = None;
    for crl in crls {
        // rustls already refused a CRL that does not parse; nothing to say about its dates.
        let Some(freshness) = crate::x509::crl_freshness(crl.as_ref()) else {
            continue;
        };
        match freshness.next_update {
            Some(next) if next < now => stale.push(freshness),
            Some(next) => recheck = Some(recheck.map_or(next, |r| r.min(next))),
            None => {}
        }
    }
    let key = alarm_key(path);
    let Some(first) = stale.first() else {
        if crate::alarms::clear(&key) {
            tracing::info!(file = %path.display(), "The CRL file is current again");
        }
        return recheck;
    };
    let text = format!(
        "CRL {} for {} expired on {}: update it",
        path.display(),
        first.issuer,
        first.next_update_text,
    );
    if crate::alarms::raise(&key, text.clone()) {
        match policy {
            StaleCrl::Refuse => tracing::error!(
                "{text}. Until then, TLS handshakes whose certificates it covers are refused \
                 (stale_crl = \"warn\" would accept them with a warning)"
            ),
            StaleCrl::Warn => tracing::warn!(
                "{text}. It is still used, because stale_crl = \"warn\": a certificate revoked \
                 since it was issued is not known"
            ),
        }
    }
    recheck
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn crl(next_update: (i32, u8, u8)) -> CertificateRevocationListDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "plant CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer = rcgen::Issuer::new(params, key);
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(next_update.0, next_update.1, next_update.2),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap()
        .der()
        .clone()
    }

    #[test]
    fn a_stale_crl_raises_one_alarm_until_a_fresh_one_replaces_it() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01
        let path = Path::new("/test/stale.crl");
        let recheck = review(path, &[crl((2025, 6, 1))], StaleCrl::Refuse, now);
        assert_eq!(recheck, None);
        let alarm = alarms().into_iter().find(|a| a.contains("/test/stale.crl"));
        let alarm = alarm.expect("an alarm for the stale CRL");
        assert!(alarm.contains("CN=plant CA"), "{alarm}");
        assert!(alarm.contains("2025-06-01"), "{alarm}");
        assert!(alarm.ends_with("update it"), "{alarm}");

        let recheck = review(path, &[crl((2027, 1, 1))], StaleCrl::Refuse, now);
        let in_2027 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600);
        assert_eq!(recheck, Some(in_2027), "look again when the new one ages");
        assert!(!alarms().iter().any(|a| a.contains("/test/stale.crl")));
    }
}
