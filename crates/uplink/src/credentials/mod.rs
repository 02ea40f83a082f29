//! How the uplink logs in inside MQTT: a user name and a password read from a file, a JWT we
//! sign ([`jwt`]), or an Azure IoT Hub SAS token ([`sas`]).
//!
//! A fresh [`Login`] is made for every connection: a password file is read again (a changed
//! password is used at the next connection), a token is signed anew with its full lifetime.
//! Tokens carry their expiry; the drain loop renews them at [`RENEW_AT`] of their life with a
//! clean reconnect. Secrets live in zeroizing buffers, never in `Debug` output, logs, errors or
//! the status: only the user name, the token kind and its expiry are shown.

pub(crate) mod jwt;
pub(crate) mod sas;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::UplinkError;
use crate::config::{UplinkCredentials, UplinkSettings};

/// A token is renewed when this share of its life has passed: early enough that a slow
/// reconnect (DNS, TLS, a busy broker) still finishes well before it expires.
pub(crate) const RENEW_AT: f64 = 0.8;

/// What the uplink logs in with, ready to make a [`Login`] per connection.
pub(crate) enum Credentials {
    Password {
        username: String,
        password_file: std::path::PathBuf,
    },
    Jwt(jwt::JwtMaker),
    AzureSas(sas::SasMaker),
}

/// The user name and password of one connection.
pub(crate) struct Login {
    pub(crate) username: String,
    pub(crate) password: Zeroizing<String>,
    /// When the password (a token) was made and when it expires; `None` for a password.
    pub(crate) validity: Option<(SystemTime, SystemTime)>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Login {
    /// When to renew it: at [`RENEW_AT`] of its life; `None` when it does not expire.
    pub(crate) fn renew_at(&self) -> Option<SystemTime> {
        let (issued, expires) = self.validity?;
        let life = expires.duration_since(issued).unwrap_or_default();
        Some(issued + life.mul_f64(RENEW_AT))
    }
}

impl Credentials {
    /// The credentials `settings` ask for, their files checked now (so that a missing key
    /// stops the start, not the first connection); `None` without credentials.
    pub(crate) fn load(
        settings: &UplinkSettings,
        keys: &Arc<dyn fieldlink_core::tls::KeyResolver>,
    ) -> Result<Option<Self>, UplinkError> {
        let Some(credentials) = &settings.credentials else {
            return Ok(None);
        };
        let made = match credentials {
            UplinkCredentials::Password {
                username,
                password_file,
            } => {
                // Read once now to fail early; read again at each connection.
                read_secret(password_file)?;
                Self::Password {
                    username: username.clone(),
                    password_file: password_file.clone(),
                }
            }
            UplinkCredentials::Jwt(jwt) => Self::Jwt(jwt::JwtMaker::new(jwt, keys.clone())?),
            UplinkCredentials::AzureSas { key_file, lifetime } => Self::AzureSas(
                sas::SasMaker::new(key_file, &settings.host, &settings.client_id, *lifetime)?,
            ),
        };
        Ok(Some(made))
    }

    /// The login for a connection made `now`.
    pub(crate) fn login(&self, now: SystemTime) -> Result<Login, UplinkError> {
        match self {
            Self::Password {
                username,
                password_file,
            } => Ok(Login {
                username: username.clone(),
                password: read_secret(password_file)?,
                validity: None,
            }),
            Self::Jwt(maker) => maker.login(now),
            Self::AzureSas(maker) => Ok(maker.login(now)),
        }
    }

    /// The user name the cloud sees, for messages about a refusal.
    pub(crate) fn username(&self) -> &str {
        match self {
            Self::Password { username, .. } => username,
            Self::Jwt(maker) => maker.username(),
            Self::AzureSas(maker) => maker.username(),
        }
    }

    /// What the status calls it: `password`, `jwt ES256`, `jwt RS256`, `azure-sas`.
    pub(crate) fn kind(&self) -> String {
        match self {
            Self::Password { .. } => "password".into(),
            Self::Jwt(maker) => format!("jwt {}", maker.algorithm()),
            Self::AzureSas(_) => "azure-sas".into(),
        }
    }
}

/// Seconds since the epoch (0 before it: a clock that wrong is refused earlier).
pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// From Unix seconds.
pub(crate) fn from_unix(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// The first line of a secret file: it must be readable by its owner only, unless systemd
/// handed it over as a credential (`$CREDENTIALS_DIRECTORY`, which systemd protects itself).
/// Errors say what is wrong with the file, never what it holds.
pub(crate) fn read_secret(path: &Path) -> Result<Zeroizing<String>, UplinkError> {
    let text = fieldlink_core::private_fs::read_secret_file(path)
        .map_err(|e| secret_file_error(path, &e))?;
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let line = std::str::from_utf8(first).map_err(|_| UplinkError::Credentials {
        path: path.to_owned(),
        problem: "its first line is not UTF-8 text".into(),
    })?;
    if line.is_empty() {
        return Err(UplinkError::Credentials {
            path: path.to_owned(),
            problem: "its first line is empty; write the secret on the first line".into(),
        });
    }
    Ok(Zeroizing::new(line.to_owned()))
}

/// A key or password file must not be readable by others (systemd credentials aside).
pub(crate) fn check_private(path: &Path) -> Result<(), UplinkError> {
    fieldlink_core::private_fs::check_secret_file(path).map_err(|e| secret_file_error(path, &e))
}

fn secret_file_error(path: &Path, e: &fieldlink_core::private_fs::SecretFileError) -> UplinkError {
    UplinkError::Credentials {
        path: path.to_owned(),
        problem: format!("{e}; {}", e.hint()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_password_is_the_first_line_without_its_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "s3cret pass\r\nignored\n", 0o600);
        assert_eq!(read_secret(&path).unwrap().as_str(), "s3cret pass");
        let path = file(dir.path(), "only", 0o400);
        assert_eq!(read_secret(&path).unwrap().as_str(), "only");
    }

    #[test]
    fn an_open_or_empty_password_file_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "hunter2\n", 0o644);
        let err = read_secret(&path).unwrap_err().to_string();
        assert!(err.contains("readable by other users"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let path = file(dir.path(), "\nhunter2\n", 0o600);
        let err = read_secret(&path).unwrap_err().to_string();
        assert!(err.contains("first line is empty"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_token_is_renewed_at_four_fifths_of_its_life() {
        let issued = from_unix(1_800_000_000);
        let login = Login {
            username: "u".into(),
            password: Zeroizing::new("pw-secret".into()),
            validity: Some((issued, issued + Duration::from_secs(100))),
        };
        assert_eq!(login.renew_at(), Some(issued + Duration::from_secs(80)));
        assert!(!format!("{login:?}").contains("pw-secret"));
    }
}
