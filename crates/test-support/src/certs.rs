//! Certificates made at test time with rcgen: a CA, and server or client certificates signed by
//! it, written as PEM files. No key is ever committed.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber, date_time_ymd,
};

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a fresh key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `common_name`, valid for the DNS names `sans`.
    pub fn issue(&self, common_name: &str, sans: &[&str]) -> Issued {
        self.issue_with(common_name, sans, Leaf::default())
    }

    /// A certificate with a chosen serial number and validity.
    pub fn issue_with(&self, common_name: &str, sans: &[&str], leaf: Leaf) -> Issued {
        self.sign(
            KeyPair::generate().expect("a fresh key"),
            common_name,
            sans,
            leaf,
        )
    }

    /// A new certificate for an existing key (PEM), as a renewal is.
    pub fn reissue(&self, key_pem: &str, common_name: &str, leaf: Leaf) -> Issued {
        let key = KeyPair::from_pem(key_pem).expect("a PEM private key");
        self.sign(key, common_name, &[], leaf)
    }

    fn sign(&self, key: KeyPair, common_name: &str, sans: &[&str], leaf: Leaf) -> Issued {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(serial) = leaf.serial {
            params.serial_number = Some(SerialNumber::from(serial));
        }
        if leaf.expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        if let Some((y, m, d)) = leaf.not_before {
            params.not_before = date_time_ymd(y, m, d);
        }
        if let Some((y, m, d)) = leaf.not_after {
            params.not_after = date_time_ymd(y, m, d);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl TestCa {
    /// A CRL (PEM) signed by this CA that revokes the given serial numbers.
    pub fn crl(&self, revoked: &[u64]) -> String {
        self.crl_until(revoked, (2036, 1, 1))
    }

    /// Like [`TestCa::crl`], with the given nextUpdate (year, month, day): one in the past
    /// makes a stale CRL.
    pub fn crl_until(&self, revoked: &[u64], next_update: (i32, u8, u8)) -> String {
        let (year, month, day) = next_update;
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(year.min(2026) - 1, 1, 1),
            next_update: date_time_ymd(year, month, day),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: date_time_ymd(2026, 1, 2),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("signed CRL")
            .pem()
            .expect("CRL PEM")
    }
}

/// Options for [`TestCa::issue_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Leaf {
    /// The serial number (random when `None`).
    pub serial: Option<u64>,
    /// Valid only during 2020.
    pub expired: bool,
    /// A chosen expiry date (year, month, day).
    pub not_after: Option<(i32, u8, u8)>,
    /// A chosen start date (year, month, day).
    pub not_before: Option<(i32, u8, u8)>,
}

impl Leaf {
    /// A certificate valid from today (UTC midnight): not yet valid to a clock behind.
    pub fn valid_from_today() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs();
        Self {
            not_before: Some(civil_from_days((now / 86_400) as i64)),
            ..Self::default()
        }
    }

    /// A certificate that expires `days` days from today (UTC).
    pub fn expiring_in_days(days: u64) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs();
        Self {
            not_after: Some(civil_from_days((now / 86_400 + days) as i64)),
            ..Self::default()
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("test file written");
    path
}
