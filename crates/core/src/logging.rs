//! `tracing` set up once for the process.
//!
//! `RUST_LOG` is honoured. The default is `info` for fieldlink and nothing from rumqttd, which
//! logs every connection at INFO and ordinary disconnects at ERROR; fieldlink reports what an
//! operator needs itself (`RUST_LOG=info,rumqttd=info` shows rumqttd again); rustls's warnings
//! about the SNI of clients that connect by IP address are left out too. Under systemd (`JOURNAL_STREAM` set) lines carry no
//! timestamp and no colour, because journald stamps them itself.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is not set. `rustls::msgs::handshake` warns about every client
/// that sends an IP address as SNI (most MQTT clients connecting by IP do): the listeners do not
/// use SNI, so it is not news for an operator, and a log full of it hides what is.
pub const DEFAULT_FILTER: &str = "info,rumqttd=off,rustls::msgs::handshake=error";

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init() {
    init_with_default(DEFAULT_FILTER);
}

/// [`init`] with another filter when `RUST_LOG` is not set (the demo keeps its terminal quiet).
pub fn init_with_default(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let colour = std::io::stderr().is_terminal();
    let result = if under_journald() {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.with_ansi(colour).try_init()
    };
    // An error only means a subscriber is already installed (tests, embedding).
    drop(result);
}

/// Whether stderr goes to the systemd journal.
fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}
