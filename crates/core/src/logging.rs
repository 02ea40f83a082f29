//! `tracing` set up once for the process.
//!
//! `RUST_LOG` is honoured (default `info`). Under systemd (`JOURNAL_STREAM` set) lines carry no
//! timestamp and no colour, because journald stamps them itself.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if under_journald() {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
    // An error only means a subscriber is already installed (tests, embedding).
    drop(result);
}

/// Whether stderr goes to the systemd journal.
fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}
