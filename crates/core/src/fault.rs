//! Whose fault an error is, so that the caller, the log line and the operator know who must act
//! (as rustls sorts its errors into the peer's misbehaviour, the configuration and itself).
//!
//! Every error type that crosses a crate boundary in fieldlink says, through a `fault()` method,
//! which of these it is; its `Display` keeps telling the operator what to do.

use std::fmt;

/// Who must act to make an error go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// fieldlink itself: a bug to report; nothing the operator can change fixes it.
    Bug,
    /// The operator's configuration (or a file it names holds the wrong thing): change it.
    Config,
    /// The machine or the network: a full or failing disk, permissions, a library of the
    /// system, the cloud out of reach. Fix it, or wait for it to come back.
    Environment,
    /// The other side (a client, the cloud broker, a field device) broke the rules or refused.
    Peer,
}

impl Fault {
    /// A short name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bug => "bug",
            Self::Config => "config",
            Self::Environment => "environment",
            Self::Peer => "peer",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
