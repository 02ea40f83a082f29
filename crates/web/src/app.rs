//! What every handler shares.

use std::sync::{Arc, Mutex, PoisonError};

use fieldlink_core::shutdown::Shutdown;
use rustls_pki_types::CertificateDer;
use tokio::sync::Semaphore;

use crate::Gateway;
use crate::sessions::Sessions;
use crate::throttle::Throttle;
use crate::users::Accounts;

/// Password checks at once: each holds argon2's 19 MiB while it runs.
pub(crate) const MAX_VERIFICATIONS: usize = 2;

pub(crate) struct App {
    pub(crate) gateway: Arc<dyn Gateway>,
    pub(crate) accounts: Accounts,
    pub(crate) sessions: Sessions,
    pub(crate) throttle: Throttle,
    /// Bounds the memory and CPU password checks take, whatever the number of attempts.
    pub(crate) verifications: Arc<Semaphore>,
    /// Bounds the live-data streams open at once.
    pub(crate) live_streams: Arc<Semaphore>,
    /// The one-time token that makes the first admin; `None` once an account exists.
    setup_token: Mutex<Option<String>>,
    /// How long a session lives at most (the cookie's Max-Age).
    pub(crate) session_max: std::time::Duration,
    /// The UI's own certificate chain and its fingerprint, for the certificates page.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) fingerprint: String,
    /// Ends the live streams when the gateway stops.
    pub(crate) shutdown: Shutdown,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        gateway: Arc<dyn Gateway>,
        accounts: Accounts,
        sessions: Sessions,
        session_max: std::time::Duration,
        chain: Vec<CertificateDer<'static>>,
        fingerprint: String,
        setup_token: Option<String>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            gateway,
            accounts,
            sessions,
            throttle: Throttle::default(),
            verifications: Arc::new(Semaphore::new(MAX_VERIFICATIONS)),
            live_streams: Arc::new(Semaphore::new(crate::live::MAX_STREAMS)),
            setup_token: Mutex::new(setup_token),
            session_max,
            chain,
            fingerprint,
            shutdown,
        }
    }

    /// Whether the setup token is still to be used (no account has been made with it).
    pub(crate) fn setup_pending(&self) -> bool {
        self.setup_token().is_some()
    }

    /// Takes the setup token if `token` is it: it works once, even for two requests at the
    /// same instant. Give it back with [`Self::return_setup_token`] if the account could not
    /// be made.
    pub(crate) fn claim_setup_token(&self, token: &str) -> Option<String> {
        let mut held = self.setup_token();
        if held
            .as_deref()
            .is_some_and(|t| crate::sessions::same_secret(t, token))
        {
            held.take()
        } else {
            None
        }
    }

    /// Gives back a claimed token whose account could not be made.
    pub(crate) fn return_setup_token(&self, token: String) {
        *self.setup_token() = Some(token);
    }

    fn setup_token(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.setup_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
