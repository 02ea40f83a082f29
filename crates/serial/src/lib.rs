//! fieldlink's field-device bridge: Modbus RTU/TCP devices and line-oriented serial devices
//! (ASCII, NMEA 0183, JSON lines) in, one MQTT message per value out; write commands from
//! MQTT to Modbus holding registers and coils.
//!
//! # What it does
//! - **Values in.** Each `[[devices]]` entry is polled (Modbus) or listened to (lines). Every
//!   value is decoded (type, word and byte order), scaled (`scale`, `offset`) and published when
//!   it changed by more than its `deadband`, or when its `heartbeat` is due, as
//!   `{"value":…,"unit":…,"quality":"good","ts":<unix ms>}` (plus `"ts_synced":false` when the
//!   wall clock was not synchronized at reading time) on the `[bridge] value_topic`
//!   (e.g. `{site}/{device}/{point}`), through the [`Ingress`] port: a routed value is durable in
//!   the queue before it is published locally. A device can also publish one snapshot per poll.
//! - **Commands in.** A message on a writable point's `command_topic` (a JSON value, or
//!   `{"value":…, "id":…}`) is checked against the point's type, range and writability, written
//!   with function code 05 (coil), 06 (one register) or 16 (several registers), and answered on
//!   `response_topic` with `ok`, `exception` (and its code), `timeout`, `invalid` (and why) or
//!   `failed` (the link is down); after an `ok` the point is read back at once. Commands arrive through [`LocalBus::subscribe`]; who may send
//!   them is the broker's ACLs' business.
//!
//! # Scheduling
//! One task per link: every device naming the same serial `port` shares one task that owns the
//! port, so an RS-485 line carries one transaction at a time; devices at the same TCP address
//! share one connection. The task runs each device's poll groups (its points of equal
//! `interval`) when they are due, earliest first, and takes write commands between polls.
//! A group's points are coalesced into as few reads as possible ([`plan`]): contiguous or
//! near-contiguous (within `max_gap`) ranges of one table, up to 125 registers or 2000 bits.
//! A line device has its own port and task.
//!
//! # Faults
//! Every request has the device's `timeout` (tokio-modbus's async client has none of its own)
//! and up to `retries` retries with exponential backoff. A timeout or transport error drops the
//! connection; the next request reopens it (with backoff), so an unplugged USB adapter, a closed
//! pty or a restarted TCP server is found again without a restart. Timeouts, exceptions, CRC,
//! transport, protocol and decode errors, garbage, bad-checksum and overlong lines are counted per
//! device (`fieldlink_serial_errors_total{device,kind}`); nothing on the wire can panic the
//! bridge. After `offline_after` failed polls in a row a device is offline: the status board says
//! so, each point gets a `"quality":"bad"` reading, the retained `status_topic` says `offline`,
//! and the device is polled every `offline_interval` until it answers, when it says `online`.
//!
//! # Not supported
//! - Kernel RS-485 mode (`TIOCSRS485`): the serial library has no call for it, so `rs485 = true`
//!   is rejected by the configuration with a hint. Use an adapter with automatic direction
//!   control, or switch the UART to RS-485 in the device tree.
//! - Timing on a real line (the 3.5-character gap, turnaround delays) is tokio-modbus's and the
//!   UART's; it is tested on ptys only, which ignore the baud rate.
//! - Function code 15 (write multiple coils) is never needed: a point is one coil. Function 23,
//!   file records and device identification are not used.
//! - Writes to line devices (they are read-only).
//!
//! ```
//! use fieldlink_serial::line_protocol::nmea_sentence;
//! assert_eq!(nmea_sentence("$GPGLL,4916.45,N*38"), None, "wrong checksum");
//! assert_eq!(nmea_sentence("$GPGLL,4916.45,N*3B"), Some("GPGLL,4916.45,N"));
//! ```

pub mod codec;
pub mod config;
pub mod deadband;
mod device;
mod line_device;
pub mod line_protocol;
mod modbus;
pub mod payload;
pub mod plan;

use std::collections::HashMap;
use std::sync::Arc;

use fieldlink_core::ports::{BusError, Ingress, LocalBus, StatusReporter};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::topic::{TopicError, TopicFilter};
use tokio::sync::mpsc;

use crate::config::{BridgeSettings, DeviceSettings, Link, Protocol, TemplateVars};
use crate::device::{Board, Device, Shared};

/// Write commands waiting for one link: a few, because each takes a transaction on the line.
const COMMAND_CAPACITY: usize = 16;

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The local broker refused the subscription to a device's command topic (ours or the
    /// broker's fault: the gateway cannot run without it).
    #[error("cannot subscribe to the commands of device {device:?}: {source}")]
    Subscribe {
        /// The device.
        device: String,
        /// What the bus said.
        source: BusError,
    },
    /// A command topic filter could not be built from the template (validated configuration
    /// never gives one: a bug).
    #[error("the command topic of device {device:?} is not a valid filter: {source}")]
    CommandTopic {
        /// The device.
        device: String,
        /// Why.
        source: TopicError,
    },
}

/// The field-device bridge.
#[derive(Debug)]
pub struct Bridge;

impl Bridge {
    /// Starts one task per link (and per line device) on `shutdown`'s tracker, and subscribes
    /// to the command topics of every device with a writable point. `status` is the bridge's
    /// entry on the status board: `Degraded("offline: …")` while a device does not answer.
    pub fn start(
        bridge: BridgeSettings,
        devices: Vec<DeviceSettings>,
        ingress: Arc<dyn Ingress>,
        bus: Arc<dyn LocalBus>,
        status: StatusReporter,
        shutdown: Shutdown,
    ) -> Result<(), BridgeError> {
        let board = Arc::new(Board::new(status));
        let shared = Shared {
            bridge: Arc::new(bridge),
            ingress,
            board: board.clone(),
        };
        // Devices grouped by link, in file order.
        let mut links: Vec<(Link, Vec<DeviceSettings>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for device in devices {
            if let Protocol::Lines(_) = device.protocol {
                let task = format!("the reader of line device {:?}", device.name);
                let d = Device::new(device, shared.clone());
                shutdown.spawn_vital("devices", task, line_device::run(d, shutdown.clone()));
                continue;
            }
            let key = match &device.link {
                Link::Serial(s) => format!("serial:{}", s.path.display()),
                Link::Tcp(addr) => format!("tcp:{addr}"),
            };
            match index.get(&key) {
                Some(&i) => links[i].1.push(device),
                None => {
                    index.insert(key, links.len());
                    links.push((device.link.clone(), vec![device]));
                }
            }
        }
        for (link, devices) in links {
            let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
            for (i, device) in devices.iter().enumerate() {
                if device.points.iter().any(|p| p.writable) {
                    subscribe(&shared, &*bus, device, i, tx.clone(), &shutdown)?;
                }
            }
            let devices = devices
                .into_iter()
                .map(|d| Device::new(d, shared.clone()))
                .collect();
            let task = format!("the poller of link {}", describe(&link));
            shutdown.spawn_vital(
                "devices",
                task,
                modbus::run(link, devices, rx, shutdown.clone()),
            );
        }
        let s = shutdown.clone();
        shutdown.spawn(async move {
            s.cancelled().await;
            board.stopped();
        });
        Ok(())
    }
}

/// A link as the logs name it.
fn describe(link: &Link) -> String {
    match link {
        Link::Serial(s) => s.path.display().to_string(),
        Link::Tcp(addr) => format!("tcp:{addr}"),
    }
}

/// Forwards a device's commands into its link's queue.
fn subscribe(
    shared: &Shared,
    bus: &dyn LocalBus,
    device: &DeviceSettings,
    index: usize,
    tx: mpsc::Sender<modbus::Command>,
    shutdown: &Shutdown,
) -> Result<(), BridgeError> {
    // Rendering "+" as the point gives the filter of all the device's commands.
    let filter = shared.bridge.command_topic.render(TemplateVars {
        site: &shared.bridge.site,
        device: &device.name,
        point: "+",
    });
    let filter = TopicFilter::new(filter).map_err(|source| BridgeError::CommandTopic {
        device: device.name.clone(),
        source,
    })?;
    let mut rx =
        bus.subscribe(&filter, COMMAND_CAPACITY)
            .map_err(|source| BridgeError::Subscribe {
                device: device.name.clone(),
                source,
            })?;
    let s = shutdown.clone();
    shutdown.spawn(async move {
        loop {
            let message = tokio::select! {
                () = s.cancelled() => break,
                m = rx.recv() => match m { Some(m) => m, None => break },
            };
            if tx
                .send(modbus::Command {
                    device: index,
                    message,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    Ok(())
}
