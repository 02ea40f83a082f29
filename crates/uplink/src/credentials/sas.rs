//! Azure IoT Hub SAS tokens: `SharedAccessSignature sr={uri}&sig={sig}&se={expiry}`, where the
//! signature is HMAC-SHA256, keyed with the device's (base64-decoded) symmetric key, over the
//! URL-encoded resource URI, a newline and the expiry in Unix seconds; the user name is
//! `{host}/{device}/?api-version=2021-04-12` and the client id the device id.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use super::{Login, from_unix, read_secret, unix_seconds};
use crate::UplinkError;

/// The IoT Hub MQTT API version the user name names (Microsoft's current GA version).
const API_VERSION: &str = "2021-04-12";

pub(crate) struct SasMaker {
    key: Zeroizing<Vec<u8>>,
    resource: String,
    username: String,
    lifetime: Duration,
}

impl SasMaker {
    /// Reads the device key (base64) from `key_file` for device `device_id` of hub `host`.
    pub(crate) fn new(
        key_file: &Path,
        host: &str,
        device_id: &str,
        lifetime: Duration,
    ) -> Result<Self, UplinkError> {
        let text = read_secret(key_file)?;
        let key =
            Zeroizing::new(
                STANDARD
                    .decode(text.trim())
                    .map_err(|_| UplinkError::Credentials {
                        path: key_file.to_owned(),
                        problem: "not a base64 key; copy the device's primary key from the IoT Hub"
                            .into(),
                    })?,
            );
        Ok(Self {
            key,
            resource: format!("{host}/devices/{device_id}"),
            username: username(host, device_id),
            lifetime,
        })
    }

    pub(crate) fn username(&self) -> &str {
        &self.username
    }

    /// A token issued `now`.
    pub(crate) fn login(&self, now: SystemTime) -> Login {
        let expiry = unix_seconds(now) + self.lifetime.as_secs();
        Login {
            username: self.username.clone(),
            password: self.token_at(expiry),
            validity: Some((now, from_unix(expiry))),
        }
    }

    /// The token expiring at `expiry` (Unix seconds).
    pub(crate) fn token_at(&self, expiry: u64) -> Zeroizing<String> {
        token(&self.key, &self.resource, expiry)
    }
}

/// `{host}/{device}/?api-version=...`: neither part URL-encoded, as Azure wants it.
pub(crate) fn username(host: &str, device_id: &str) -> String {
    format!("{host}/{device_id}/?api-version={API_VERSION}")
}

/// The SAS token for `resource` expiring at `expiry` (Unix seconds), signed with `key`.
pub(crate) fn token(key: &[u8], resource: &str, expiry: u64) -> Zeroizing<String> {
    let resource = url_encode(resource);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, format!("{resource}\n{expiry}").as_bytes());
    let signature = url_encode(&STANDARD.encode(tag.as_ref()));
    Zeroizing::new(format!(
        "SharedAccessSignature sr={resource}&sig={signature}&se={expiry}"
    ))
}

/// Percent-encodes everything but RFC 3986's unreserved characters (as Python's
/// `urllib.parse.quote(s, safe="")`, which Microsoft's SDK uses).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_characters_are_percent_encoded() {
        assert_eq!(
            url_encode("hub.azure-devices.net/devices/dev 1+a=b~"),
            "hub.azure-devices.net%2Fdevices%2Fdev%201%2Ba%3Db~"
        );
    }
}
