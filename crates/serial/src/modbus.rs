//! One task per Modbus link (a serial line or a TCP endpoint): it owns the connection, runs the
//! poll groups of every device on the link in turn, one transaction at a time, and carries out
//! write commands between polls.
//!
//! A request that times out or fails on the transport drops the connection: the next request
//! reopens it (a late answer can then never be taken for the answer to the next request, and a
//! vanished USB adapter or pty is found again when it comes back).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fieldlink_core::metrics as names;
use fieldlink_core::shutdown::Shutdown;
use tokio::sync::mpsc;
use tokio_modbus::client::{Client as _, Context, Reader as _, Writer as _};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{ExceptionCode, Slave};

use crate::codec::{self, Value};
use crate::config::{Link, PointSettings, Protocol, SerialSettings, Source, Table};
use crate::device::{self, Device};
use crate::payload;
use crate::plan::{self, Read, Span};

mod command;

pub use command::Command;
use command::write;

/// Longest pause between retries: the backoff doubles from 50 ms up to this.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(2);
/// Longest pause between attempts to reopen a link that cannot be opened.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(5);
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A device's poll group: its points of one interval, and the planned reads.
struct Group {
    interval: Duration,
    reads: Vec<Read>,
    /// The group's points (indices into the device's points), in the order `reads` refers to.
    points: Vec<usize>,
    next: Instant,
}

struct LinkDevice {
    device: Device,
    unit: u8,
    groups: Vec<Group>,
    /// Command topic → point index (every point: read-only ones are refused with a reason).
    commands: HashMap<String, usize>,
}

/// Why a request failed.
#[derive(Debug)]
enum Failure {
    Exception(ExceptionCode),
    Timeout,
    /// Transport (port gone, connection refused), CRC or protocol error.
    Link(String),
}

enum Reply {
    Bits(Vec<bool>),
    Done,
    Words(Vec<u16>),
}

enum Request<'a> {
    Read(Table, u16, u16),
    WriteCoil(u16, bool),
    WriteRegister(u16, u16),
    WriteRegisters(u16, &'a [u16]),
}

/// The link: how to (re)open it, and the open connection.
struct Connection {
    link: Link,
    context: Option<Context>,
    /// When the next open may be tried (backoff after failures).
    next_open: Instant,
    open_backoff: Duration,
    label: String,
}

/// Runs a link until shutdown.
pub async fn run(
    link: Link,
    devices: Vec<Device>,
    mut commands: mpsc::Receiver<Command>,
    shutdown: Shutdown,
) {
    let label = match &link {
        Link::Serial(s) => s.path.display().to_string(),
        Link::Tcp(addr) => addr.to_string(),
    };
    let now = Instant::now();
    let mut devices: Vec<LinkDevice> = devices.into_iter().map(|d| prepare(d, now)).collect();
    let mut conn = Connection {
        link,
        context: None,
        next_open: now,
        open_backoff: Duration::from_millis(100),
        label,
    };
    tracing::info!(link = %conn.label, devices = devices.len(), "Modbus link started");
    // Closed when no device of the link has a writable point, or when the bus is gone.
    let mut commands_open = true;
    loop {
        let Some((d, g, due)) = next_due(&devices) else {
            // No poll group at all: only commands.
            tokio::select! {
                () = shutdown.cancelled() => break,
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(cmd) => write(&mut conn, &mut devices, cmd, &shutdown).await,
                    None => commands_open = false,
                },
            }
            if !commands_open {
                shutdown.cancelled().await;
                break;
            }
            continue;
        };
        // Not biased: when the line is saturated, polls and commands take turns at random
        // rather than one starving the other.
        tokio::select! {
            () = shutdown.cancelled() => break,
            cmd = commands.recv(), if commands_open => match cmd {
                Some(cmd) => write(&mut conn, &mut devices, cmd, &shutdown).await,
                None => commands_open = false,
            },
            () = tokio::time::sleep_until(due.into()) => {
                poll(&mut conn, &mut devices[d], g, &shutdown).await;
            }
        }
    }
    if let Some(mut ctx) = conn.context.take() {
        let _ = tokio::time::timeout(Duration::from_millis(200), ctx.disconnect()).await;
    }
    tracing::info!(link = %conn.label, "Modbus link stopped");
}

fn prepare(device: Device, now: Instant) -> LinkDevice {
    let unit = match device.cfg.protocol {
        Protocol::Modbus { unit, .. } => unit,
        Protocol::Lines(_) => 0,
    };
    let max_gap = match device.cfg.protocol {
        Protocol::Modbus { max_gap, .. } => max_gap,
        Protocol::Lines(_) => 0,
    };
    let mut intervals: Vec<Duration> = device.cfg.points.iter().map(|p| p.interval).collect();
    intervals.sort();
    intervals.dedup();
    let groups = intervals
        .into_iter()
        .map(|interval| {
            let points: Vec<usize> = device
                .cfg
                .points
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.interval == interval && matches!(p.source, Source::Register { .. })
                })
                .map(|(i, _)| i)
                .collect();
            let spans: Vec<Span> = points
                .iter()
                .filter_map(|&i| span(&device.cfg.points[i]))
                .collect();
            Group {
                interval,
                reads: plan::plan(&spans, max_gap),
                points,
                next: now,
            }
        })
        .collect();
    let bridge = device.bridge();
    let commands = device
        .cfg
        .points
        .iter()
        .enumerate()
        // Read-only points too, so that a command to one is answered "not writable".
        .map(|(i, p)| {
            let topic = device::topic(
                &bridge.command_topic,
                &bridge.site,
                &device.cfg.name,
                &p.name,
            );
            (topic.as_str().to_owned(), i)
        })
        .collect();
    LinkDevice {
        device,
        unit,
        groups,
        commands,
    }
}

fn span(point: &PointSettings) -> Option<Span> {
    match point.source {
        Source::Register { table, address, .. } => Some(Span {
            table,
            address,
            count: point.data_type.registers(),
        }),
        Source::Field(_) => None,
    }
}

/// The group due first: (device, group, when).
fn next_due(devices: &[LinkDevice]) -> Option<(usize, usize, Instant)> {
    devices
        .iter()
        .enumerate()
        .flat_map(|(d, dev)| {
            dev.groups
                .iter()
                .enumerate()
                .map(move |(g, grp)| (d, g, grp.next))
        })
        .min_by_key(|(_, _, next)| *next)
}

async fn poll(conn: &mut Connection, dev: &mut LinkDevice, g: usize, shutdown: &Shutdown) {
    let Some(group) = dev.groups.get(g) else {
        return;
    };
    let reads = group.reads.clone();
    let points = group.points.clone();
    let mut values: Vec<(usize, Value)> = Vec::with_capacity(points.len());
    let mut failed = 0usize;
    for read in &reads {
        let request = Request::Read(read.table, read.start, read.count);
        match transact(conn, &dev.device, dev.unit, &request, shutdown).await {
            Ok(reply) => decode_read(&dev.device, read, &points, &reply, &mut values),
            // The device answered, so it is online; the exception is counted.
            Err(Failure::Exception(code)) => {
                tracing::debug!(device = %dev.device.cfg.name, ?code, start = read.start, "Exception");
            }
            Err(_) => failed += 1,
        }
        if shutdown.is_triggered() {
            return;
        }
    }
    let now = Instant::now();
    let ts = payload::Stamp::now();
    let mut out = Vec::with_capacity(values.len() + 2);
    let ok = reads.is_empty() || failed < reads.len();
    dev.device.poll_done(ok, &mut out);
    for (i, v) in &values {
        dev.device.offer(*i, v, now, ts, &mut out);
    }
    dev.device.snapshot(&values, ts, &mut out);
    let period = if dev.device.is_offline() {
        dev.device.cfg.offline_interval
    } else {
        dev.groups[g].interval
    };
    let group = &mut dev.groups[g];
    // Keep the rhythm, but never try to catch up on missed polls in a burst.
    group.next = (group.next + period).max(now);
    dev.device.publish(out).await;
}

fn decode_read(
    dev: &Device,
    read: &Read,
    points: &[usize],
    reply: &Reply,
    values: &mut Vec<(usize, Value)>,
) {
    for &k in &read.points {
        let Some(&i) = points.get(k) else { continue };
        let Some(point) = dev.cfg.points.get(i) else {
            continue;
        };
        let Source::Register {
            address,
            word_order,
            byte_order,
            ..
        } = point.source
        else {
            continue;
        };
        let offset = usize::from(address - read.start.min(address));
        let raw = match reply {
            Reply::Words(words) => words
                .get(offset..)
                .and_then(|w| codec::decode(point.data_type, w, word_order, byte_order)),
            Reply::Bits(bits) => bits.get(offset).map(|b| Value::Bool(*b)),
            Reply::Done => None,
        };
        match raw {
            Some(raw) => values.push((i, codec::to_engineering(raw, point))),
            None => dev.error("decode"),
        }
    }
}

/// Sends one request with the device's timeout and retries; reopens the link as needed.
async fn transact(
    conn: &mut Connection,
    dev: &Device,
    unit: u8,
    request: &Request<'_>,
    shutdown: &Shutdown,
) -> Result<Reply, Failure> {
    let mut backoff = Duration::from_millis(50);
    let mut last = Failure::Timeout;
    for attempt in 0..=dev.cfg.retries {
        if attempt > 0 {
            tokio::select! {
                () = shutdown.cancelled() => return Err(last),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
        }
        let ctx = match conn.open().await {
            Ok(ctx) => ctx,
            Err(e) => {
                dev.error("transport");
                // Retrying cannot help a link that does not open (an unplugged adapter): the
                // poll fails now, and the link is tried again when its backoff allows.
                return Err(Failure::Link(e));
            }
        };
        ctx.set_slave(Slave(unit));
        let started = Instant::now();
        let outcome = tokio::time::timeout(dev.cfg.timeout, call(ctx, request)).await;
        dev.request(started);
        match outcome {
            Ok(Ok(Ok(reply))) => return Ok(reply),
            // The device answered: retrying would get the same answer.
            Ok(Ok(Err(code))) => {
                dev.error("exception");
                return Err(Failure::Exception(code));
            }
            Ok(Err(e)) => {
                let kind = classify(&e);
                dev.error(kind);
                conn.drop_context();
                last = Failure::Link(format!("{kind}: {e}"));
            }
            Err(_) => {
                dev.error("timeout");
                conn.drop_context();
                last = Failure::Timeout;
            }
        }
    }
    Err(last)
}

async fn call(ctx: &mut Context, request: &Request<'_>) -> tokio_modbus::Result<Reply> {
    Ok(match *request {
        Request::Read(Table::Holding, start, n) => ctx
            .read_holding_registers(start, n)
            .await?
            .map(Reply::Words),
        Request::Read(Table::Input, start, n) => {
            ctx.read_input_registers(start, n).await?.map(Reply::Words)
        }
        Request::Read(Table::Coil, start, n) => ctx.read_coils(start, n).await?.map(Reply::Bits),
        Request::Read(Table::Discrete, start, n) => {
            ctx.read_discrete_inputs(start, n).await?.map(Reply::Bits)
        }
        Request::WriteCoil(addr, on) => {
            ctx.write_single_coil(addr, on).await?.map(|()| Reply::Done)
        }
        Request::WriteRegister(addr, w) => ctx
            .write_single_register(addr, w)
            .await?
            .map(|()| Reply::Done),
        Request::WriteRegisters(addr, ws) => ctx
            .write_multiple_registers(addr, ws)
            .await?
            .map(|()| Reply::Done),
    })
}

/// The `kind` label of a client error.
///
/// tokio-modbus resynchronises on a frame with a bad CRC by dropping bytes; only when that
/// fails 20 times does it return `InvalidData`, counted here as `crc`. A single corrupted
/// answer therefore mostly shows as the `timeout` it causes.
fn classify(e: &tokio_modbus::Error) -> &'static str {
    match e {
        tokio_modbus::Error::Protocol(_) => "protocol",
        tokio_modbus::Error::Transport(io)
            if io.kind() == std::io::ErrorKind::InvalidData || io.to_string().contains("CRC") =>
        {
            "crc"
        }
        tokio_modbus::Error::Transport(_) => "transport",
    }
}

impl Connection {
    /// The open connection, opening it first if its backoff allows. Until the next attempt is
    /// due, a link that could not be opened fails at once: the backoff spaces out the attempts
    /// to open, it must not stretch every request (waiting it out per request made a vanished
    /// port take minutes, not `offline_after` polls, to read as offline).
    async fn open(&mut self) -> Result<&mut Context, String> {
        if self.context.is_none() {
            let now = Instant::now();
            if now < self.next_open {
                return Err(format!(
                    "the link is down; next attempt to open it in {} ms",
                    (self.next_open - now).as_millis()
                ));
            }
            match open(&self.link).await {
                Ok(ctx) => {
                    metrics::counter!(names::SERIAL_OPENS_TOTAL, "result" => "ok").increment(1);
                    tracing::debug!(link = %self.label, "Link open");
                    self.open_backoff = Duration::from_millis(100);
                    self.context = Some(ctx);
                }
                Err(e) => {
                    metrics::counter!(names::SERIAL_OPENS_TOTAL, "result" => "failed").increment(1);
                    tracing::debug!(link = %self.label, error = %e, "Link cannot be opened");
                    self.next_open = Instant::now() + self.open_backoff;
                    self.open_backoff = (self.open_backoff * 2).min(MAX_REOPEN_BACKOFF);
                    return Err(e);
                }
            }
        }
        self.context.as_mut().ok_or_else(|| "not open".to_owned())
    }

    fn drop_context(&mut self) {
        self.context = None;
    }
}

async fn open(link: &Link) -> Result<Context, String> {
    match link {
        Link::Serial(serial) => {
            let port =
                open_serial(serial).map_err(|e| format!("{}: {e}", serial.path.display()))?;
            Ok(tokio_modbus::client::rtu::attach(port))
        }
        Link::Tcp(addr) => {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    Ok(tokio_modbus::client::tcp::attach(stream))
                }
                Ok(Err(e)) => Err(format!("{addr}: {e}")),
                Err(_) => Err(format!("{addr}: connect timed out")),
            }
        }
    }
}

/// Opens a serial port with the configured framing, discarding anything already received.
pub fn open_serial(serial: &SerialSettings) -> tokio_serial::Result<tokio_serial::SerialStream> {
    use crate::config::Parity;
    use tokio_serial::{DataBits, SerialPort as _, SerialPortBuilderExt as _, StopBits};
    let parity = match serial.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = match serial.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let stop_bits = if serial.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let path = serial.path.to_string_lossy();
    let port = tokio_serial::new(path, serial.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .open_native_async()?;
    // Stale bytes (a late answer to a request that timed out) must not start the next frame.
    let _ = port.clear(tokio_serial::ClearBuffer::All);
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_link_that_does_not_open_fails_at_once_until_its_next_attempt() {
        // A port nobody listens on: connecting is refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let mut conn = Connection {
            link: Link::Tcp(addr),
            context: None,
            next_open: Instant::now(),
            // Long enough that waiting it out could not go unnoticed.
            open_backoff: Duration::from_secs(60),
            label: addr.to_string(),
        };
        assert!(conn.open().await.is_err(), "refused");
        let before = Instant::now();
        for _ in 0..5 {
            let error = conn.open().await.err().expect("still down");
            assert!(error.contains("next attempt"), "{error}");
        }
        assert!(
            before.elapsed() < Duration::from_secs(30),
            "no request waits for the reopen backoff"
        );
    }
}
