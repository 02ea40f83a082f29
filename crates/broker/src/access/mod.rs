//! Access control of the local broker: who a client is, and what it may publish and subscribe to.
//!
//! The network edge asks this module three kinds of question:
//!
//! - **Who is this?** A client proves itself with a username and password (checked against
//!   the credentials file with [`Access::check_password`]), a client certificate or a TLS-PSK
//!   identity (turned into an [`Identity`] by [`Access::identity_for`]), or not at all
//!   ([`Identity::anonymous`], where a listener allows it).
//! - **May it publish on this topic?** [`Access::may_publish`].
//! - **May it subscribe to this filter?** [`Access::may_subscribe`].
//!
//! # Credentials file
//!
//! `broker.credentials_file` names a file of lines `name:<argon2 PHC string>[:group1,group2]`;
//! `#` starts a comment line, blank lines are skipped. Group or others must have no access to
//! it (`chmod 600`), or it is refused. `fieldlink credentials add NAME [--group G]..` and
//! `fieldlink credentials remove NAME` edit it. The edge calls [`Access::maybe_reload`] (one
//! `stat`) on each CONNECT: when the file changed it is read again; a broken new version is
//! reported once and the previous users stay in force, and connected clients are never
//! dropped by a reload.
//!
//! Passwords are checked with argon2id on tokio's blocking pool, at most
//! [`MAX_CONCURRENT_VERIFICATIONS`] at once (each costs ~19 MiB, see [`HASH_PARAMS`]). An
//! unknown user costs the same work as a known one (a dummy hash with the same parameters is
//! verified), so that user names cannot be probed by timing. That holds for hashes written by
//! `fieldlink credentials add`; a hand-made hash with other parameters takes its own time.
//!
//! # ACL semantics
//!
//! `[[broker.acl]]` rules each name `users`, `groups`, both or neither, and give `publish` and
//! `subscribe` patterns.
//!
//! - **No rule at all:** every admitted client (authenticated, or anonymous where a listener
//!   allows it) may publish and subscribe everywhere. This is the default, fit for a
//!   loopback-only broker; the edge logs a warning for every non-loopback listener in this
//!   case ([`Access::has_rules`]).
//! - **Any rule:** everything is denied unless a rule that applies to the client allows it. A
//!   rule applies to an identity named in its `users`, or in one of its `groups`; a rule with
//!   neither applies to everyone, anonymous clients included. Anonymous clients never match
//!   `users` or `groups`.
//! - **Publish:** allowed when one of the applicable `publish` patterns matches the topic.
//! - **Subscribe:** allowed when one applicable `subscribe` pattern, on its own, covers every
//!   topic the requested filter can match ([`filter_covers`]): `site/#` allows a subscription
//!   to `site/+/temp`, but `site/+/temp` does not allow `site/#`. The edge passes the filter
//!   proper (without a `$share/group/` prefix).
//! - **Placeholders:** in a pattern, `%u` is the identity's name and `%c` the client id, as a
//!   whole level (`devices/%c/#`) or inside one (`users/%u-inbox`). A pattern with `%u` never
//!   applies to an anonymous client. A name or client id that is empty or contains `/`, `+`,
//!   `#` (or NUL) never fills a placeholder: the pattern then allows nothing for that client,
//!   so nobody can reach another level by choosing a clever client id. The edge passes the
//!   client id only where it bound it to the identity (an empty one otherwise): a client that
//!   may choose any id gets no `%c` rights.
//!
//! # Example
//!
//! ```
//! use fieldlink_broker::access::{Access, Identity};
//! use fieldlink_broker::config::{AccessSettings, AclPattern, AclRule};
//! use fieldlink_core::topic::{TopicFilter, TopicName};
//!
//! let settings = AccessSettings {
//!     credentials_file: None,
//!     acl: vec![AclRule {
//!         publish: vec![AclPattern::new("devices/%c/up/#").unwrap()],
//!         subscribe: vec![AclPattern::new("devices/%c/down/#").unwrap()],
//!         ..AclRule::default()
//!     }],
//! };
//! let access = Access::new(&settings).unwrap();
//! let anyone = Identity::anonymous();
//! let topic = TopicName::new("devices/pump-1/up/flow").unwrap();
//! assert!(access.may_publish(&anyone, "pump-1", &topic));
//! assert!(!access.may_publish(&anyone, "pump-2", &topic));
//! let all = TopicFilter::new("devices/#").unwrap();
//! assert!(!access.may_subscribe(&anyone, "pump-1", &all));
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::config::AccessSettings;
use fieldlink_core::topic::{TopicFilter, TopicName};
use tokio::sync::Semaphore;

mod acl;
mod credentials;

pub use acl::{SessionAcl, filter_covers};
pub use credentials::{Credentials, CredentialsError, hash_password, remove_user, set_user};
pub use fieldlink_core::password::HASH_PARAMS;

/// How many password verifications run at once; more wait their turn. Each holds
/// `HASH_PARAMS.0` KiB (19 MiB) while it runs, so a burst of logins costs at most ~40 MiB.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 2;

/// Who a client is, once the edge has admitted it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The user name, certificate name or PSK identity; empty for an anonymous client.
    pub name: String,
    /// The groups of the name in the credentials file.
    pub groups: Vec<String>,
    /// Whether the client gave no identity at all.
    pub anonymous: bool,
}

impl Identity {
    /// A client that gave no identity. Matches only rules without `users` and `groups`, and
    /// never a `%u` pattern.
    pub fn anonymous() -> Self {
        Self {
            name: String::new(),
            groups: Vec::new(),
            anonymous: true,
        }
    }
}

/// The outcome of [`Access::check_password`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The user exists and the password is not theirs (the peer's mistake).
    BadPassword,
    /// The password is right: this is who the client is.
    Ok(Identity),
    /// No such user, or no credentials file (the peer's mistake).
    UnknownUser,
}

/// The access-control state of the broker: credentials (reloaded when their file changes) and
/// ACL rules. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    file: Option<PathBuf>,
    current: RwLock<Current>,
    acl: acl::Acl,
    verifications: Arc<Semaphore>,
    /// How many checks took the unknown-user (dummy hash) path; read by tests.
    dummy_checks: AtomicU64,
}

struct Current {
    credentials: Arc<Credentials>,
    /// The version of the file last looked at (loaded, or found broken).
    seen: Option<credentials::Stamp>,
    /// Whether the file was last found missing or unreadable (and that was reported).
    seen_missing: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("credentials_file", &self.inner.file)
            .field("credentials", &self.credentials())
            .field("acl", &self.inner.acl)
            .finish()
    }
}

impl Access {
    /// Builds the access control of `settings`, reading `credentials_file` when one is set.
    pub fn new(settings: &AccessSettings) -> Result<Self, CredentialsError> {
        let (credentials, seen) = match &settings.credentials_file {
            Some(path) => {
                let (text, stamp) = credentials::read_checked(path)?;
                (Credentials::parse(&text, path)?, Some(stamp))
            }
            None => (Credentials::default(), None),
        };
        Ok(Self::build(
            settings.credentials_file.clone(),
            credentials,
            seen,
            settings,
        ))
    }

    /// Like [`Access::new`], with users given directly instead of read from a file (which is
    /// then neither read nor watched).
    pub fn with_credentials(credentials: Credentials, settings: &AccessSettings) -> Self {
        Self::build(None, credentials, None, settings)
    }

    /// Reads the credentials file again if it changed since it was last looked at (one `stat`
    /// when it did not). `Ok(true)`: new users are in force. An error (unreadable, wrong mode,
    /// bad line) is returned once per version of the file, and the previous users stay in
    /// force; log it and carry on.
    pub fn maybe_reload(&self) -> Result<bool, CredentialsError> {
        let Some(path) = &self.inner.file else {
            return Ok(false);
        };
        let stamp = match credentials::stamp(path) {
            Ok(stamp) => stamp,
            Err(e) => {
                // Gone or unreadable: say so once, not on every CONNECT.
                let mut current = self.write();
                if current.seen_missing {
                    return Ok(false);
                }
                current.seen_missing = true;
                return Err(e);
            }
        };
        let unchanged = {
            let current = self.current();
            current.seen == Some(stamp) && !current.seen_missing
        };
        if unchanged {
            return Ok(false);
        }
        let loaded = credentials::read_checked(path)
            .and_then(|(text, stamp)| Ok((Credentials::parse(&text, path)?, stamp)));
        let mut current = self.write();
        current.seen_missing = false;
        match loaded {
            Ok((credentials, stamp)) => {
                current.credentials = Arc::new(credentials);
                current.seen = Some(stamp);
                Ok(true)
            }
            Err(e) => {
                current.seen = Some(stamp);
                Err(e)
            }
        }
    }

    /// The users in force.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.current().credentials.clone()
    }

    /// Whether any `[[broker.acl]]` rule exists. Without one every admitted client may do
    /// everything: the edge warns about that for non-loopback listeners.
    pub fn has_rules(&self) -> bool {
        !self.inner.acl.is_empty()
    }

    /// Checks `username`'s `password` against the credentials file, on the blocking pool and
    /// at most [`MAX_CONCURRENT_VERIFICATIONS`] at once. An unknown user costs the same
    /// argon2 work as a known one. The future owns what it needs (no borrow of `self`).
    pub fn check_password(
        &self,
        username: &str,
        password: &[u8],
    ) -> impl Future<Output = PasswordCheck> + Send + 'static {
        let inner = self.inner.clone();
        let credentials = self.credentials();
        let username = username.to_owned();
        let mut password = password.to_vec();
        async move {
            let Ok(permit) = inner.verifications.clone().acquire_owned().await else {
                // The semaphore is never closed; deny rather than assume.
                return PasswordCheck::BadPassword;
            };
            let verified = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let outcome = match credentials.hash_of(&username) {
                    Some(hash) => {
                        if credentials::verify_hash(hash, &password) {
                            PasswordCheck::Ok(Identity {
                                groups: credentials
                                    .groups(&username)
                                    .map(<[String]>::to_vec)
                                    .unwrap_or_default(),
                                name: username,
                                anonymous: false,
                            })
                        } else {
                            PasswordCheck::BadPassword
                        }
                    }
                    None => {
                        inner.dummy_checks.fetch_add(1, Ordering::Relaxed);
                        fieldlink_core::password::verify_unknown_user(&password);
                        PasswordCheck::UnknownUser
                    }
                };
                // Best effort: do not leave the password in freed memory.
                password.fill(0);
                std::hint::black_box(&password);
                outcome
            })
            .await;
            // A panic inside argon2 (a bug) denies the login.
            verified.unwrap_or(PasswordCheck::BadPassword)
        }
    }

    /// The identity of a client that proved `name` another way (certificate CN or SAN, TLS-PSK
    /// identity): with the groups the credentials file gives `name`, or none.
    pub fn identity_for(&self, name: &str) -> Identity {
        Identity {
            name: name.to_owned(),
            groups: self
                .credentials()
                .groups(name)
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
            anonymous: false,
        }
    }

    /// Whether `identity`, connected as `client_id`, may publish on `topic`.
    pub fn may_publish(&self, identity: &Identity, client_id: &str, topic: &TopicName) -> bool {
        self.for_session(identity, client_id).may_publish(topic)
    }

    /// Whether `identity`, connected as `client_id`, may subscribe to `filter`: one applicable
    /// pattern must cover every topic `filter` can match.
    pub fn may_subscribe(
        &self,
        identity: &Identity,
        client_id: &str,
        filter: &TopicFilter,
    ) -> bool {
        self.for_session(identity, client_id).may_subscribe(filter)
    }

    /// The rules for one session, resolved once (`%u`, `%c` filled in): what the broker's edge
    /// checks every PUBLISH and SUBSCRIBE of that session against.
    pub fn for_session(&self, identity: &Identity, client_id: &str) -> SessionAcl {
        self.inner.acl.for_session(identity, client_id)
    }

    fn build(
        file: Option<PathBuf>,
        credentials: Credentials,
        seen: Option<credentials::Stamp>,
        settings: &AccessSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                file,
                current: RwLock::new(Current {
                    credentials: Arc::new(credentials),
                    seen,
                    seen_missing: false,
                }),
                acl: acl::Acl::new(&settings.acl),
                verifications: Arc::new(Semaphore::new(MAX_CONCURRENT_VERIFICATIONS)),
                dummy_checks: AtomicU64::new(0),
            }),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Current> {
        self.inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
