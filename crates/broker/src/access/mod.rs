//! PLACEHOLDER until the access-control module lands (branch `edge-auth`): anonymous and
//! certificate/PSK identities only, no passwords, every topic allowed.

use fieldlink_core::topic::{TopicFilter, TopicName};

/// Who a client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name: username, certificate CN/SAN or PSK identity.
    pub name: String,
    /// Groups from the credentials file.
    pub groups: Vec<String>,
    /// No credentials were given.
    pub anonymous: bool,
}

impl Identity {
    /// A client without credentials.
    pub fn anonymous() -> Self {
        Self {
            name: String::new(),
            groups: Vec::new(),
            anonymous: true,
        }
    }
}

/// The outcome of a password check.
#[derive(Debug)]
pub enum PasswordCheck {
    /// Known user, right password.
    Ok(Identity),
    /// No such user.
    UnknownUser,
    /// Wrong password.
    BadPassword,
}

/// Credentials and ACLs.
#[derive(Debug, Default)]
pub struct Access {
    _private: (),
}

impl Access {
    /// Checks a username and password.
    pub async fn check_password(&self, _username: &str, _password: &[u8]) -> PasswordCheck {
        PasswordCheck::UnknownUser
    }

    /// The identity for a certificate or PSK name.
    pub fn identity_for(&self, name: &str) -> Identity {
        Identity {
            name: name.to_owned(),
            groups: Vec::new(),
            anonymous: false,
        }
    }

    /// Whether `who` may publish on `topic`.
    pub fn may_publish(&self, _who: &Identity, _client_id: &str, _topic: &TopicName) -> bool {
        true
    }

    /// Whether `who` may subscribe to `filter`.
    pub fn may_subscribe(&self, _who: &Identity, _client_id: &str, _filter: &TopicFilter) -> bool {
        true
    }
}
