//! fieldlink core: the types and ports every other fieldlink crate meets through.
//!
//! - [`alarms`]: problems the operator must fix, for the status (process-wide);
//! - [`clock`]: whether the wall clock is synchronized (boards without an RTC);
//! - [`crl`]: CRL freshness (a CRL past its nextUpdate refuses, or warns, and raises an alarm);
//! - [`config`]: what every configuration section shares: the reader that keeps spans, the error
//!   collector (all mistakes at once), the checks of small values; each section lives with its
//!   component;
//! - [`fault`]: whose fault an error is (the peer, the configuration, the environment, a bug);
//! - [`topic`]: validated MQTT topic names and filters, with `+`/`#` matching;
//! - [`message`]: the message that travels from ingress through the queue to the uplink;
//! - [`ports`]: the traits that connect the domain crates (outbox, local bus, component status);
//! - [`private_fs`]: directories 0700 and files 0600 whatever the umask (created or tightened);
//! - [`shutdown`]: the process-wide shutdown token;
//! - [`tls`]: the one place that builds TLS configurations, with the one crypto provider;
//! - [`metrics`]: every metric name, in one place;
//! - [`uplink_state`]: the uplink's one state model (connected, stalled, refused, ...);
//! - [`logging`]: `tracing` set up for a terminal or for journald;
//! - [`x509`]: the fields fieldlink reads from certificates and CRLs (x509-cert, not our own parser).
//!
//! ```
//! use fieldlink_core::topic::{TopicFilter, TopicName};
//! let filter = TopicFilter::new("site/+/temperature").unwrap();
//! assert!(filter.matches(&TopicName::new("site/boiler/temperature").unwrap()));
//! ```

pub mod alarms;
pub mod clock;
pub mod config;
pub mod crl;
pub mod fault;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod password;
pub mod ports;
pub mod private_fs;
pub mod shutdown;
pub mod status;
pub mod tls;
pub mod topic;
pub mod topic_map;
pub mod uplink_state;
pub mod x509;
