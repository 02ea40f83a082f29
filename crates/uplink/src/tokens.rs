//! The tokens the uplink logs in with, made on demand at a given time: for checks against
//! other implementations (PyJWT, Microsoft's SDK, a broker's verifier) and for tools. The
//! uplink itself makes a fresh one for every connection.
//!
//! ```no_run
//! # use std::path::PathBuf;
//! # use std::time::Duration;
//! use fieldlink_core::tls::KeyRef;
//! use fieldlink_uplink::config::JwtSettings;
//! let settings = JwtSettings {
//!     username: "gw-7".into(),
//!     key: KeyRef::File(PathBuf::from("/etc/fieldlink/token.key")),
//!     audience: "fieldlink".into(),
//!     subject: "gw-7".into(),
//!     lifetime: Duration::from_secs(3600),
//!     key_id: None,
//!     claims: "{}".into(),
//! };
//! let token = fieldlink_uplink::tokens::jwt(&settings, 1_800_000_000).unwrap();
//! assert_eq!(token.split('.').count(), 3);
//! ```

use std::path::Path;

use crate::UplinkError;
use crate::config::JwtSettings;
use crate::credentials::{jwt::JwtMaker, sas};

/// The JWT the uplink would send if it connected at `issued_at` (Unix seconds).
pub fn jwt(settings: &JwtSettings, issued_at: u64) -> Result<String, UplinkError> {
    let maker = JwtMaker::new(settings, std::sync::Arc::new(fieldlink_core::tls::FileKeys))?;
    let token = maker.token(issued_at, issued_at + settings.lifetime.as_secs())?;
    Ok(token.as_str().to_owned())
}

/// The Azure IoT Hub SAS token for device `device_id` of hub `host`, expiring at `expiry`
/// (Unix seconds), signed with the base64 key in `key_file`.
pub fn azure_sas(
    key_file: &Path,
    host: &str,
    device_id: &str,
    expiry: u64,
) -> Result<String, UplinkError> {
    let maker = sas::SasMaker::new(key_file, host, device_id, std::time::Duration::ZERO)?;
    Ok(maker.token_at(expiry).as_str().to_owned())
}

/// The user name Azure IoT Hub expects from device `device_id` of hub `host`.
pub fn azure_username(host: &str, device_id: &str) -> String {
    sas::username(host, device_id)
}
