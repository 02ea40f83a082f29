//! RFC 7512 `pkcs11:` URIs, the part fieldlink uses: which token (`token=`, `serial=`) and which
//! key on it (`object=` label, `id=`). A PIN in the URI (`pin-value`, `pin-source`) is refused:
//! the PIN comes from `[keys]`, never from the configuration file.

use crate::error::KeyError;

/// A key in a token, as a `pkcs11:` URI names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyUri {
    /// The token's label (`token=`).
    pub token: String,
    /// The token's serial number (`serial=`), when the label is not unique.
    pub serial: Option<String>,
    /// The key's label (`object=`).
    pub object: Option<String>,
    /// The key's CKA_ID (`id=`, percent-encoded bytes).
    pub id: Option<Vec<u8>>,
}

impl KeyUri {
    /// Reads `pkcs11:token=…;object=…[;id=…][;serial=…][;type=private]`.
    pub fn parse(uri: &str) -> Result<Self, KeyError> {
        let bad = |problem: String| KeyError::Uri {
            uri: redact(uri),
            problem,
        };
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| bad("does not start with pkcs11:".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut out = KeyUri {
            token: String::new(),
            serial: None,
            object: None,
            id: None,
        };
        let mut token = None;
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("{attr:?} is not name=value")))?;
            let value = percent_decode(value)
                .ok_or_else(|| bad(format!("{name}: bad percent-encoding")))?;
            let text =
                || String::from_utf8(value.clone()).map_err(|_| bad(format!("{name}: not UTF-8")));
            match name {
                "token" => token = Some(text()?),
                "serial" => out.serial = Some(text()?),
                "object" => out.object = Some(text()?),
                "id" => out.id = Some(value),
                "type" if matches!(value.as_slice(), b"private" | b"cert" | b"public") => {}
                // Attributes naming the library or the token's maker narrow nothing we need.
                "manufacturer"
                | "model"
                | "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id" => {}
                other => return Err(bad(format!("unknown attribute {other:?}"))),
            }
        }
        // Every query attribute is refused; the first one found is named.
        if let Some(attr) = query.split('&').find(|a| !a.is_empty()) {
            let name = attr.split_once('=').map_or(attr, |(n, _)| n);
            match name {
                "pin-value" | "pin-source" => {
                    return Err(bad(
                        "carries a PIN: the PIN comes from [keys] pin_file or pin_credential"
                            .into(),
                    ));
                }
                "module-path" | "module-name" => {
                    return Err(bad(
                        "names a module: the module comes from [keys] module".into()
                    ));
                }
                other => return Err(bad(format!("unknown query attribute {other:?}"))),
            }
        }
        out.token = token.ok_or_else(|| bad("no token= attribute".into()))?;
        if out.object.is_none() && out.id.is_none() {
            return Err(bad("names no key: add object=LABEL or id=…".into()));
        }
        Ok(out)
    }

    /// The key as errors name it: its label, else its id in hex.
    pub fn object_name(&self) -> String {
        match (&self.object, &self.id) {
            (Some(label), _) => format!("{label:?}"),
            (None, Some(id)) => format!("id {}", hex(id)),
            (None, None) => "?".into(),
        }
    }
}

/// A URI for a key label on a token (what `keys generate` prints).
pub fn key_uri(token: &str, label: &str) -> String {
    format!(
        "pkcs11:token={};object={}",
        percent_encode(token),
        percent_encode(label)
    )
}

/// The URI without its query (where a PIN would be), for error messages.
fn redact(uri: &str) -> String {
    match uri.split_once('?') {
        Some((path, _)) => format!("{path}?…"),
        None => uri.to_owned(),
    }
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_names_its_token_and_key() {
        let uri = KeyUri::parse("pkcs11:token=gw%20token;object=uplink;type=private").unwrap();
        assert_eq!(uri.token, "gw token");
        assert_eq!(uri.object.as_deref(), Some("uplink"));
        let uri = KeyUri::parse("pkcs11:token=gw;id=%01%02").unwrap();
        assert_eq!(uri.id, Some(vec![1, 2]));
        assert_eq!(
            key_uri("gw token", "up/link"),
            "pkcs11:token=gw%20token;object=up%2Flink"
        );
        assert_eq!(
            KeyUri::parse(&key_uri("gw token", "up/link"))
                .unwrap()
                .object
                .as_deref(),
            Some("up/link")
        );
    }

    #[test]
    fn a_pin_in_the_uri_is_refused_and_never_echoed() {
        let err = KeyUri::parse("pkcs11:token=gw;object=k?pin-value=1234").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("carries a PIN"), "{text}");
        assert!(!text.contains("1234"), "{text}");
    }

    #[test]
    fn a_uri_without_token_or_key_is_refused() {
        for uri in [
            "pkcs11:object=k",
            "pkcs11:token=gw",
            "pkcs11:token=gw;bogus=1",
            "file:/x",
            "pkcs11:token=%zz;object=k",
        ] {
            assert!(KeyUri::parse(uri).is_err(), "{uri}");
        }
    }
}
