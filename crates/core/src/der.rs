//! Just enough DER to read what fieldlink needs from an X.509 certificate (its validity, its
//! subject's common name, its DNS names, its issuer and subject), by walking fixed fields.
//! Anything unexpected gives `None`, never a panic.

/// One DER element: (tag, contents, what follows).
pub fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The whole element at the start of `input` (tag and length included).
fn element(input: &[u8]) -> Option<&[u8]> {
    let (_, _, rest) = tlv(input)?;
    Some(&input[..input.len() - rest.len()])
}

/// The fields of a certificate's tbsCertificate that fieldlink reads, each as a whole element.
#[derive(Debug, Clone, Copy)]
pub struct TbsFields<'a> {
    /// The issuer's distinguished name.
    pub issuer: &'a [u8],
    /// notBefore and notAfter.
    pub validity: &'a [u8],
    /// The subject's distinguished name.
    pub subject: &'a [u8],
    /// The `[3]` extensions element, when present.
    pub extensions: Option<&'a [u8]>,
}

/// Walks a DER certificate to its tbsCertificate fields.
pub fn tbs_fields(der: &[u8]) -> Option<TbsFields<'_>> {
    let (_, cert_body, _) = tlv(der)?;
    let (tag, tbs, _) = tlv(cert_body)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    // version [0] EXPLICIT, optional
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature
    rest = tlv(tlv(rest)?.2)?.2;
    let issuer = element(rest)?;
    rest = tlv(rest)?.2;
    let validity = element(rest)?;
    rest = tlv(rest)?.2;
    let subject = element(rest)?;
    rest = tlv(rest)?.2;
    // subjectPublicKeyInfo, then optional [1] [2] unique ids and [3] extensions
    rest = tlv(rest)?.2;
    let mut extensions = None;
    while let Some((tag, _, next)) = tlv(rest) {
        if tag == 0xa3 {
            extensions = element(rest);
        }
        rest = next;
    }
    Some(TbsFields {
        issuer,
        validity,
        subject,
        extensions,
    })
}

const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The subject's common name (the last one, as in X.509 practice), if it is a string.
pub fn common_name(der: &[u8]) -> Option<String> {
    let subject = tbs_fields(der)?.subject;
    let (_, mut rdns, _) = tlv(subject)?;
    let mut found = None;
    while let Some((_, set, next)) = tlv(rdns) {
        let mut attributes = set;
        while let Some((_, attribute, after)) = tlv(attributes) {
            let (oid_tag, oid, value) = tlv(attribute)?;
            if oid_tag == 0x06 && oid == OID_COMMON_NAME {
                let (tag, text, _) = tlv(value)?;
                // UTF8String, PrintableString, IA5String
                if matches!(tag, 0x0c | 0x13 | 0x16) {
                    found = Some(std::str::from_utf8(text).ok()?.to_owned());
                }
            }
            attributes = after;
        }
        rdns = next;
    }
    found
}

/// The first DNS name of the subject alternative names extension.
pub fn first_dns_name(der: &[u8]) -> Option<String> {
    let (_, wrapper, _) = tlv(tbs_fields(der)?.extensions?)?;
    let (_, mut extensions, _) = tlv(wrapper)?;
    while let Some((_, extension, next)) = tlv(extensions) {
        let (_, oid, mut rest) = tlv(extension)?;
        if oid == OID_SUBJECT_ALT_NAME {
            // critical BOOLEAN, optional
            if rest.first() == Some(&0x01) {
                rest = tlv(rest)?.2;
            }
            let (_, octets, _) = tlv(rest)?;
            let (_, mut names, _) = tlv(octets)?;
            while let Some((tag, name, after)) = tlv(names) {
                if tag == 0x82 {
                    return Some(std::str::from_utf8(name).ok()?.to_owned());
                }
                names = after;
            }
            return None;
        }
        extensions = next;
    }
    None
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
    fn garbage_gives_none_not_a_panic() {
        let good = cert(Some("x"), &["x.example"]);
        for cut in 0..good.len() {
            let _ = common_name(&good[..cut]);
            let _ = first_dns_name(&good[..cut]);
            let _ = tbs_fields(&good[..cut]);
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
