//! Sessions: a random token in a `__Host-` cookie (`Secure; HttpOnly; SameSite=Strict`), held in
//! memory only (a restart logs everyone out, and nothing about them reaches the SD card), with
//! an idle and an absolute timeout, a CSRF token each, and a bounded count.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::users::Role;

/// The cookie's name. `__Host-` makes browsers refuse it unless it is `Secure`, has
/// `Path=/` and no `Domain`: another host cannot plant or read it.
pub const COOKIE: &str = "__Host-fieldlink";

/// Sessions held at once; the least recently used goes when a login needs room.
const MAX_SESSIONS: usize = 64;

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The account.
    pub user: String,
    /// Its role at login; checked against the accounts file at every request.
    pub role: Role,
    /// The token every state-changing request must carry.
    pub csrf: String,
    created: Instant,
    used: Instant,
}

/// Every session, by token.
#[derive(Debug)]
pub struct Sessions {
    idle: Duration,
    max: Duration,
    by_token: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// No session yet; sessions end after `idle` unused or `max` after their login.
    pub fn new(idle: Duration, max: Duration) -> Self {
        Self {
            idle,
            max,
            by_token: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session for `user`; returns its token (the cookie's value).
    pub fn start(&self, user: &str, role: Role) -> String {
        let token = random_token();
        let now = Instant::now();
        let session = Session {
            user: user.to_owned(),
            role,
            csrf: random_token(),
            created: now,
            used: now,
        };
        let mut all = self.lock();
        all.retain(|_, s| self.alive(s, now));
        if all.len() >= MAX_SESSIONS {
            let oldest = all
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                all.remove(&oldest);
            }
        }
        all.insert(token.clone(), session);
        token
    }

    /// The session of `token`, if it is alive; its idle time starts again.
    pub fn touch(&self, token: &str) -> Option<Session> {
        let now = Instant::now();
        let mut all = self.lock();
        let session = all.get_mut(token)?;
        if !self.alive(session, now) {
            all.remove(token);
            return None;
        }
        session.used = now;
        Some(session.clone())
    }

    /// Ends the session of `token`.
    pub fn end(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Ends every session of `user` (removed, or its password changed).
    pub fn end_user(&self, user: &str) {
        self.lock().retain(|_, s| s.user != user);
    }

    /// Sessions alive now.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|s| self.alive(s, now)).count()
    }

    fn alive(&self, session: &Session, now: Instant) -> bool {
        now.duration_since(session.used) < self.idle
            && now.duration_since(session.created) < self.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_token.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// 256 random bits, URL-safe base64.
pub fn random_token() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    // The system's randomness failing is not something a web request can recover from; ring
    // reads getrandom(2), which does not fail once the kernel's pool is initialised.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random number generator works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Set-Cookie` value that starts a session.
pub fn cookie(token: &str, max: Duration) -> String {
    format!(
        "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        max.as_secs()
    )
}

/// The `Set-Cookie` value that ends one in the browser.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session token in a request's `Cookie` header, if any.
pub fn token_in(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_when_idle_or_old_or_asked() {
        let sessions = Sessions::new(Duration::from_millis(50), Duration::from_secs(60));
        let token = sessions.start("ada", Role::Admin);
        assert_eq!(sessions.touch(&token).unwrap().user, "ada");
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.touch(&token).is_none(), "idle too long");

        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_millis(50));
        let token = sessions.start("ada", Role::Admin);
        std::thread::sleep(Duration::from_millis(30));
        assert!(sessions.touch(&token).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(sessions.touch(&token).is_none(), "older than the maximum");

        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        let a = sessions.start("ada", Role::Admin);
        let b = sessions.start("bob", Role::Viewer);
        sessions.end(&a);
        assert!(sessions.touch(&a).is_none());
        sessions.end_user("bob");
        assert!(sessions.touch(&b).is_none());
    }

    #[test]
    fn sessions_are_bounded_and_the_least_recently_used_goes() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        let first = sessions.start("ada", Role::Admin);
        let tokens: Vec<_> = (0..MAX_SESSIONS)
            .map(|_| sessions.start("x", Role::Viewer))
            .collect();
        assert_eq!(sessions.count(), MAX_SESSIONS);
        assert!(sessions.touch(&first).is_none(), "the oldest made room");
        assert!(sessions.touch(tokens.last().unwrap()).is_some());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("a=1; {COOKIE}=tok; b=2").parse().unwrap(),
        );
        assert_eq!(token_in(&headers), Some("tok"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }
}
