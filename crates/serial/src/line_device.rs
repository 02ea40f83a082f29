//! One task per line device: it owns the serial port, frames what arrives into lines, parses
//! them into values and publishes those. A port that fails or vanishes is reopened with backoff.
//! A device that sends no valid line for `offline_after` windows of `timeout` is offline.

use std::time::{Duration, Instant};

use fieldlink_core::shutdown::Shutdown;
use tokio::io::AsyncReadExt as _;

use crate::codec::{self, Value};
use crate::config::{Link, Protocol};
use crate::device::Device;
use crate::line_protocol::{Frame, Framer, LineParser};
use crate::modbus::open_serial;
use crate::payload;

/// Longest pause between attempts to reopen the port.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(5);
/// Bytes read from the port at once.
const READ_CHUNK: usize = 512;

/// Runs a line device until shutdown.
pub async fn run(mut device: Device, shutdown: Shutdown) {
    let (Link::Serial(serial), Protocol::Lines(settings)) =
        (device.cfg.link.clone(), device.cfg.protocol.clone())
    else {
        return;
    };
    let Some(parser) = LineParser::new(&settings, &device.cfg.points) else {
        tracing::error!(device = %device.cfg.name, "The line pattern does not compile: device not read");
        return;
    };
    let mut framer = Framer::new(settings.delimiter, settings.max_line);
    let mut backoff = Duration::from_millis(100);
    let mut buf = [0u8; READ_CHUNK];
    let mut parsed: Vec<(usize, Value)> = Vec::new();
    let mut values: Vec<(usize, Value)> = Vec::new();
    let mut errors: Vec<&'static str> = Vec::new();
    'open: loop {
        let mut port = match open_serial(&serial) {
            Ok(port) => {
                backoff = Duration::from_millis(100);
                tracing::info!(device = %device.cfg.name, port = %serial.path.display(), "Port open");
                port
            }
            Err(e) => {
                tracing::debug!(device = %device.cfg.name, error = %e, "Port cannot be opened");
                device.error("transport");
                // A port that cannot be opened is a window without a line. The next attempt
                // comes after the backoff, but never later than one window (`timeout`): a
                // longer wait would stretch the windows, and offline would come after more than
                // `offline_after` of them.
                let mut out = Vec::new();
                device.poll_done(false, &mut out);
                device.publish(out).await;
                tokio::select! {
                    () = shutdown.cancelled() => break 'open,
                    () = tokio::time::sleep(backoff.min(device.cfg.timeout)) => {}
                }
                backoff = (backoff * 2).min(MAX_REOPEN_BACKOFF);
                continue;
            }
        };
        framer.reset();
        loop {
            let read = tokio::select! {
                () = shutdown.cancelled() => break 'open,
                read = tokio::time::timeout(device.cfg.timeout, port.read(&mut buf)) => read,
            };
            let n = match read {
                Err(_) => {
                    // A silent window.
                    let mut out = Vec::new();
                    device.poll_done(false, &mut out);
                    device.publish(out).await;
                    continue;
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    // EOF or EIO: the adapter was unplugged or the pty closed.
                    tracing::warn!(device = %device.cfg.name, "Port closed: reopening");
                    device.error("transport");
                    continue 'open;
                }
                Ok(Ok(n)) => n,
            };
            values.clear();
            errors.clear();
            framer.push(buf.get(..n).unwrap_or_default(), |frame| match frame {
                Frame::Overlong => errors.push("overlong"),
                Frame::Line(line) => match parser.parse(line, &mut parsed) {
                    Ok(()) => values.append(&mut parsed),
                    Err(e) => errors.push(e.kind()),
                },
            });
            for kind in &errors {
                device.error(kind);
            }
            if values.is_empty() {
                continue;
            }
            let now = Instant::now();
            let ts = payload::Stamp::now();
            let mut out = Vec::with_capacity(values.len() + 2);
            device.poll_done(true, &mut out);
            for (i, raw) in values.drain(..) {
                let Some(point) = device.cfg.points.get(i) else {
                    continue;
                };
                let value = codec::to_engineering(raw, point);
                device.offer(i, &value, now, ts, &mut out);
                parsed.push((i, value));
            }
            device.snapshot(&parsed, ts, &mut out);
            parsed.clear();
            device.publish(out).await;
        }
    }
    tracing::info!(device = %device.cfg.name, "Line device stopped");
}
