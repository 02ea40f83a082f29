//! fieldlink core: the types and ports every other fieldlink crate meets through.
//!
//! - [`clock`]: whether the wall clock is synchronized (boards without an RTC);
//! - [`config`]: what every configuration section shares: the reader that keeps spans, the error
//!   collector (all mistakes at once), the checks of small values; each section lives with its
//!   component;
//! - [`fault`]: whose fault an error is (the peer, the configuration, the environment, a bug);
//! - [`topic`]: validated MQTT topic names and filters, with `+`/`#` matching;
//! - [`message`]: the message that travels from ingress through the queue to the uplink;
//! - [`ports`]: the traits that connect the domain crates (outbox, local bus, component status);
//! - [`shutdown`]: the process-wide shutdown token;
//! - [`tls`]: the one place that builds TLS configurations, with the one crypto provider;
//! - [`metrics`]: every metric name, in one place;
//! - [`uplink_state`]: the uplink's one state model (connected, stalled, refused, ...);
//! - [`logging`]: `tracing` set up for a terminal or for journald.
//!
//! ```
//! use fieldlink_core::topic::{TopicFilter, TopicName};
//! let filter = TopicFilter::new("site/+/temperature").unwrap();
//! assert!(filter.matches(&TopicName::new("site/boiler/temperature").unwrap()));
//! ```

pub mod clock;
pub mod config;
pub mod der;
pub mod fault;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod ports;
pub mod shutdown;
pub mod tls;
pub mod topic;
pub mod topic_map;
pub mod uplink_state;
