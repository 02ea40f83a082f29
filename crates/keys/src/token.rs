//! Opening tokens: the module loaded once per process, a token found by its label, a session
//! logged in with the PIN from `[keys]`.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::config::{PinSource, Pkcs11Settings};
use crate::error::KeyError;

/// The PKCS#11 module of `[keys]`, loaded and initialised on first use (C_Initialize may run
/// once per process and module, so every key shares it).
#[derive(Debug)]
pub struct Tokens {
    settings: Pkcs11Settings,
    context: Mutex<Option<Pkcs11>>,
}

/// A logged-in session on one token. PKCS#11 sessions are not thread-safe: one call at a time.
#[derive(Debug)]
pub struct TokenSession {
    /// The token's label.
    pub label: String,
    session: Mutex<Session>,
}

/// A token as `keys list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    /// Its label.
    pub label: String,
    /// Its serial number.
    pub serial: String,
    /// Who made it (SoftHSM project, IBM for tpm2-pkcs11, …).
    pub manufacturer: String,
    /// Its model.
    pub model: String,
}

impl Tokens {
    /// Nothing is loaded until a token is opened.
    pub fn new(settings: Pkcs11Settings) -> Self {
        Self {
            settings,
            context: Mutex::new(None),
        }
    }

    /// The module, loaded and initialised once.
    fn context(&self) -> Result<Pkcs11, KeyError> {
        let mut slot = self.context.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(context) = slot.as_ref() {
            return Ok(context.clone());
        }
        let module = &self.settings.module;
        let failed = |problem: String| KeyError::Module {
            module: module.clone(),
            problem,
        };
        if !module.exists() {
            return Err(failed("no such file".into()));
        }
        let context = Pkcs11::new(module).map_err(|e| failed(crate::error::describe(&e)))?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(failed(crate::error::describe(&e))),
        }
        *slot = Some(context.clone());
        Ok(context)
    }

    /// Unloads the module (C_Finalize, which ends every session), so that the next use loads
    /// it again and sees the tokens as they are now: some modules (SoftHSM2) do not recover
    /// from a token that went away and came back until then.
    pub fn reset(&self) {
        let context = self
            .context
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(Err(e)) = context.map(Pkcs11::finalize) {
            tracing::debug!(error = %e, "C_Finalize failed; loading the module again anyway");
        }
    }

    /// Every token present.
    pub fn list(&self) -> Result<Vec<(Slot, TokenInfo)>, KeyError> {
        let context = self.context()?;
        let failed = |e: CkError| KeyError::Token {
            token: "*".into(),
            call: "C_GetSlotList",
            problem: crate::error::describe(&e),
        };
        let mut out = Vec::new();
        for slot in context.get_slots_with_initialized_token().map_err(failed)? {
            // Uninitialised tokens (SoftHSM2 always offers one more) hold no keys: not listed. A
            // slot emptied between the two calls is simply not listed either.
            if let Ok(info) = context.get_token_info(slot) {
                out.push((
                    slot,
                    TokenInfo {
                        label: info.label().trim_end().to_owned(),
                        serial: info.serial_number().trim_end().to_owned(),
                        manufacturer: info.manufacturer_id().trim_end().to_owned(),
                        model: info.model().trim_end().to_owned(),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// A read-write session on the token labelled `label` (and with `serial`, when given),
    /// logged in as the user with the configured PIN.
    pub fn open(&self, label: &str, serial: Option<&str>) -> Result<Arc<TokenSession>, KeyError> {
        let tokens = self.list()?;
        let slot = tokens
            .iter()
            .find(|(_, t)| t.label == label && serial.is_none_or(|s| t.serial == s))
            .map(|(slot, _)| *slot)
            .ok_or_else(|| KeyError::NoToken {
                label: label.to_owned(),
                present: if tokens.is_empty() {
                    "none".into()
                } else {
                    tokens
                        .iter()
                        .map(|(_, t)| format!("{:?}", t.label))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
        let context = self.context()?;
        let failed = |call: &'static str| {
            move |e: CkError| KeyError::Token {
                token: label.to_owned(),
                call,
                problem: crate::error::describe(&e),
            }
        };
        // Not closed on drop: after a reset (see `reset`) an old session's handle may be a new
        // session's, which a late C_CloseSession would end. A session is dropped only when its
        // token failed, or when the process ends.
        let session = context
            .open_rw_session_no_drop(slot)
            .map_err(failed("C_OpenSession"))?;
        let pin = read_pin(&self.settings.pin)?;
        match session.login(UserType::User, Some(&pin)) {
            // The login state is the token's, shared by every session of the process.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinLocked
                | RvError::PinInvalid
                | RvError::PinLenRange),
                _,
            )) => {
                return Err(KeyError::WrongPin {
                    label: label.to_owned(),
                    rv: format!("{rv:?}"),
                });
            }
            Err(e) => return Err(failed("C_Login")(e)),
        }
        Ok(Arc::new(TokenSession {
            label: label.to_owned(),
            session: Mutex::new(session),
        }))
    }
}

impl TokenSession {
    /// Runs `call` with the session (one call at a time).
    pub fn with<T>(&self, call: impl FnOnce(&Session) -> T) -> T {
        // A PKCS#11 call cannot leave the session half changed on our side: poison is harmless.
        let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        call(&session)
    }

    /// Whether the session still works and is logged in: false once the token went away (its
    /// sessions closed) or was reset (the login gone).
    pub fn is_alive(&self) -> bool {
        use cryptoki::session::SessionState;
        self.with(|s| s.get_session_info()).is_ok_and(|info| {
            matches!(
                info.session_state(),
                SessionState::RwUser | SessionState::RoUser
            )
        })
    }

    /// A failed call on this token as a [`KeyError`].
    pub fn error(&self, call: &'static str, e: CkError) -> KeyError {
        KeyError::Token {
            token: self.label.clone(),
            call,
            problem: crate::error::describe(&e),
        }
    }
}

/// The PIN from its file or systemd credential: the file must be readable by its owner only.
pub fn read_pin(source: &PinSource) -> Result<AuthPin, KeyError> {
    let path = match source {
        PinSource::File(path) => path.clone(),
        PinSource::Credential(name) => {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| KeyError::Pin {
                place: format!("credential {name:?}"),
                problem: "$CREDENTIALS_DIRECTORY is not set".into(),
                hint: "run under systemd with LoadCredential=NAME:/path in the unit, or use pin_file",
            })?;
            Path::new(&dir).join(name)
        }
    };
    read_pin_file(&path)
}

fn read_pin_file(path: &Path) -> Result<AuthPin, KeyError> {
    let bad = |problem: String, hint: &'static str| KeyError::Pin {
        place: format!("{path:?}"),
        problem,
        hint,
    };
    let bytes = fieldlink_core::private_fs::read_secret_file(path)
        .map_err(|e| bad(e.to_string(), e.hint()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        bad(
            "it is not UTF-8 text".into(),
            "write the token's user PIN into it",
        )
    })?;
    // One line; the newline an editor adds is not part of the PIN.
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err(bad(
            "it is empty".into(),
            "write the token's user PIN into it",
        ));
    }
    Ok(AuthPin::from(pin))
}
