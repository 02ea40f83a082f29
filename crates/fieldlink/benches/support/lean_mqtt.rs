//! A lean MQTT load generator for the broker bench: publishers write frames encoded once
//! (only the packet id and the send time are patched per message), the subscriber walks the
//! frames it reads without building anything per message. So the generator's cost per message
//! hardly depends on the protocol version or on the properties a publish carries, and what a
//! row shows is the broker's. (With rumqttc as the generator, an MQTT 5 publish's properties
//! are cloned, encoded and decoded per message, on the same two cores as the broker: that
//! cost showed in the brokers' rows.)
//!
//! Speaks just what the bench needs: CONNECT (clean), SUBSCRIBE one filter, PUBLISH at QoS 0
//! or 1, PUBACK, MQTT 3.1.1 or 5.

use std::io;
use std::time::{Duration, Instant};

use fieldlink_test_support::mqtt_bytes::{frame, publish_parts, string, varint};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Publishes in flight per publisher at QoS 1 (rumqttc's setting in the other generator).
pub const INFLIGHT: usize = 100;

/// How each publish is encoded.
#[derive(Clone)]
pub struct Spec {
    pub v5: bool,
    pub qos: u8,
    pub topic: String,
    /// An MQTT 5 publish's property block, without its length (empty: none).
    pub properties: Vec<u8>,
    pub payload_len: usize,
}

/// MQTT 5 properties of a publish: Message Expiry Interval and two user properties.
pub fn expiry_and_user_properties() -> Vec<u8> {
    let mut p = vec![0x02];
    p.extend_from_slice(&3600u32.to_be_bytes());
    for (k, v) in [("site", "north-field"), ("unit", "celsius")] {
        p.push(0x26);
        p.extend(string(k.as_bytes()));
        p.extend(string(v.as_bytes()));
    }
    p
}

/// A publish frame, with where its packet id and payload start.
struct Template {
    bytes: Vec<u8>,
    pkid_at: Option<usize>,
    payload_at: usize,
}

impl Template {
    fn new(spec: &Spec) -> Self {
        let mut body = string(spec.topic.as_bytes());
        let pkid = (spec.qos > 0).then(|| {
            body.extend_from_slice(&[0, 1]);
            body.len() - 2
        });
        if spec.v5 {
            body.extend(varint(spec.properties.len()));
            body.extend_from_slice(&spec.properties);
        }
        let payload = body.len();
        body.resize(body.len() + spec.payload_len, 0);
        let bytes = frame(0x30 | (spec.qos << 1), &body);
        let header = bytes.len() - body.len();
        Self {
            pkid_at: pkid.map(|p| p + header),
            payload_at: payload + header,
            bytes,
        }
    }

    /// Appends the publish with packet id `pkid`, sent now.
    fn put(&self, out: &mut Vec<u8>, pkid: u16, sent_nanos: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.pkid_at {
            out[start + at..start + at + 2].copy_from_slice(&pkid.to_be_bytes());
        }
        let at = start + self.payload_at;
        out[at..at + 8].copy_from_slice(&sent_nanos.to_be_bytes());
    }
}

/// Frames read from a stream, one at a time, out of one buffer.
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    fn new() -> Self {
        Self {
            buf: vec![0; 1 << 16],
            start: 0,
            end: 0,
        }
    }

    /// The next whole frame in the buffer (first byte, body), if there is one.
    fn next(&mut self) -> Option<(u8, &[u8])> {
        let data = &self.buf[self.start..self.end];
        let (mut len, mut shift, mut i) = (0usize, 0, 1);
        loop {
            let byte = *data.get(i)?;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if data.len() < i + len {
            return None;
        }
        let first = data[0];
        let at = self.start + i;
        self.start = at + len;
        Some((first, &self.buf[at..at + len]))
    }

    /// Reads more from `io`: `Ok(false)` at its end.
    async fn fill<S: AsyncRead + Unpin>(&mut self, io: &mut S) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = io.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next frame, reading as needed.
    async fn read<S: AsyncRead + Unpin>(&mut self, io: &mut S) -> io::Result<(u8, Vec<u8>)> {
        loop {
            if let Some((first, body)) = self.next() {
                return Ok((first, body.to_vec()));
            }
            if !self.fill(io).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// Connects as `client_id` with a clean session; fails unless the CONNACK accepts it.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    v5: bool,
    client_id: &str,
) -> io::Result<()> {
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[if v5 { 5 } else { 4 }, 0x02, 0, 30]);
    if v5 {
        body.push(0);
    }
    body.extend(string(client_id.as_bytes()));
    io.write_all(&frame(0x10, &body)).await?;
    let (first, body) = Reader::new().read(io).await?;
    if first >> 4 != 2 || body.get(1) != Some(&0) {
        return Err(io::Error::other(format!("CONNECT refused: {body:?}")));
    }
    Ok(())
}

/// Subscribes `filter` at `qos` and waits for the SUBACK.
pub async fn subscribe<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    v5: bool,
    filter: &str,
    qos: u8,
) -> io::Result<()> {
    let mut body = vec![0, 1];
    if v5 {
        body.push(0);
    }
    body.extend(string(filter.as_bytes()));
    body.push(qos);
    io.write_all(&frame(0x82, &body)).await?;
    let mut reader = Reader::new();
    loop {
        let (first, body) = reader.read(io).await?;
        if first >> 4 == 9 {
            return match body.last() {
                Some(granted) if *granted < 0x80 => Ok(()),
                _ => Err(io::Error::other("SUBSCRIBE refused")),
            };
        }
    }
}

/// Publishes `count` messages (at `rate` msgs/s when given, else as fast as the window of
/// [`INFLIGHT`] unacknowledged QoS 1 publishes allows), the first 8 payload bytes the send
/// time; returns once the last is acknowledged (QoS 1) or written (QoS 0).
pub async fn publish<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    spec: &Spec,
    count: u64,
    rate: Option<f64>,
    now_nanos: fn() -> u64,
) -> io::Result<()> {
    let template = Template::new(spec);
    let (mut rd, mut wr) = tokio::io::split(io);
    let window = tokio::sync::Semaphore::new(INFLIGHT);
    let qos1 = spec.qos > 0;
    let sends = async {
        let mut out = Vec::with_capacity(template.bytes.len() * INFLIGHT);
        let began = Instant::now();
        let mut sent = 0u64;
        while sent < count {
            let due = rate.map(|r| began + Duration::from_secs_f64(sent as f64 / r));
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            // As many as the window has room for (one when paced), in one write.
            let mut batch = if due.is_some() { 1 } else { INFLIGHT as u64 };
            if qos1 {
                window.acquire().await.map_err(io::Error::other)?.forget();
                let more = window.available_permits().min(batch as usize - 1);
                if more > 0 {
                    window
                        .try_acquire_many(more as u32)
                        .map_err(io::Error::other)?
                        .forget();
                }
                batch = 1 + more as u64;
            }
            for _ in 0..batch.min(count - sent) {
                template.put(&mut out, (sent % 65_535 + 1) as u16, now_nanos());
                sent += 1;
            }
            wr.write_all(&out).await?;
            out.clear();
        }
        wr.flush().await
    };
    let acks = async {
        if !qos1 {
            return Ok(());
        }
        let mut reader = Reader::new();
        let mut acked = 0u64;
        while acked < count {
            if !reader.fill(&mut rd).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut took = 0;
            while let Some((first, _)) = reader.next() {
                if first >> 4 == 4 {
                    took += 1;
                }
            }
            acked += took;
            window.add_permits(took as usize);
        }
        Ok(())
    };
    let (sent, acked) = tokio::join!(sends, acks);
    sent.and(acked)
}

/// Receives until `expected` publishes have come or 3 s pass without any; acknowledges QoS 1.
/// The latency of each (now minus the send time in its payload), and when the last came.
pub async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    v5: bool,
    expected: u64,
    now_nanos: fn() -> u64,
) -> (Vec<u64>, Instant) {
    let mut reader = Reader::new();
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut last = Instant::now();
    let mut acks = Vec::new();
    while (latencies.len() as u64) < expected {
        while let Some((first, body)) = reader.next() {
            if first >> 4 != 3 {
                continue;
            }
            let Some((pkid, at)) = publish_parts(first, body, v5) else {
                continue;
            };
            if let Some(pkid) = pkid {
                acks.extend_from_slice(&[0x40, 2, pkid[0], pkid[1]]);
            }
            let sent = body
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes);
            latencies.push(now_nanos().saturating_sub(sent));
            last = Instant::now();
        }
        if !acks.is_empty() {
            if io.write_all(&acks).await.is_err() {
                break;
            }
            acks.clear();
        }
        if (latencies.len() as u64) >= expected {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(3), reader.fill(io)).await {
            Ok(Ok(true)) => {}
            // Three quiet seconds, or the end: whatever did not arrive is lost.
            _ => break,
        }
    }
    (latencies, last)
}
