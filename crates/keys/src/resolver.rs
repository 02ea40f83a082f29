//! The key resolver the binary hands to the uplink and the broker: key files as files, `pkcs11:`
//! URIs through the token, each token key opened once and reopened when its token went away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use fieldlink_core::tls::{FileKey, KeyRef, KeyResolver, KeySource, TlsError};

use crate::config::KeysSettings;
use crate::error::KeyError;
use crate::key::{TokenKey, TokenKeySource};
use crate::token::Tokens;
use crate::uri::KeyUri;

/// Resolves key files and token keys.
#[derive(Debug)]
pub struct Pkcs11Keys {
    tokens: Option<Arc<Tokens>>,
    /// Token keys by URI, while their session lives.
    open: Mutex<HashMap<String, Arc<TokenKey>>>,
}

impl Pkcs11Keys {
    /// Nothing is opened until a key is asked for.
    pub fn new(settings: &KeysSettings) -> Self {
        Self {
            tokens: settings
                .pkcs11
                .clone()
                .map(|pkcs11| Arc::new(Tokens::new(pkcs11))),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The module's tokens, when `[keys]` names a module.
    pub fn tokens(&self) -> Option<&Arc<Tokens>> {
        self.tokens.as_ref()
    }

    /// The key `uri` names, opened now or kept from before while its token still answers.
    pub fn token_key(&self, uri: &str) -> Result<Arc<TokenKey>, KeyError> {
        let parsed = KeyUri::parse(uri)?;
        let tokens = self
            .tokens
            .as_ref()
            .ok_or_else(|| KeyError::NotConfigured {
                uri: uri.to_owned(),
            })?;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = open.get(uri) {
            if key.is_alive() {
                return Ok(key.clone());
            }
            tracing::warn!(
                key = uri,
                "The token's session ended (token removed or reset): opening it again"
            );
            open.remove(uri);
        }
        let opened = tokens
            .open(&parsed.token, parsed.serial.as_deref())
            .and_then(|session| TokenKey::find(session, &parsed, uri.to_owned()));
        match opened {
            Ok(key) => {
                let key = Arc::new(key);
                open.insert(uri.to_owned(), key.clone());
                Ok(key)
            }
            Err(e) => {
                if e.fault() == fieldlink_core::fault::Fault::Environment {
                    // The token or the module failed: start afresh next time, so that a token
                    // that comes back is found. Every key of the module is opened again.
                    open.clear();
                    tokens.reset();
                }
                Err(e)
            }
        }
    }
}

impl KeyResolver for Pkcs11Keys {
    fn resolve(&self, key: &KeyRef) -> Result<Arc<dyn KeySource>, TlsError> {
        match key {
            KeyRef::File(path) => Ok(Arc::new(FileKey(path.clone()))),
            KeyRef::Pkcs11(uri) => match self.token_key(uri) {
                Ok(key) => Ok(Arc::new(TokenKeySource(key))),
                Err(e) => Err(TlsError::KeyUnavailable {
                    key: uri.clone(),
                    problem: e.to_string(),
                }),
            },
        }
    }
}
