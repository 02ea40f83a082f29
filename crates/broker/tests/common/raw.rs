//! A raw MQTT client over a plain socket: it sends exactly the bytes a test asks for (a
//! library would refuse to misbehave), and reads packets back one at a time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

pub use fieldlink_test_support::mqtt_bytes::{frame, string, varint};

/// A CONNECT and what it may carry.
#[derive(Clone)]
pub struct Connect<'a> {
    /// 4: MQTT 3.1.1, 5: MQTT 5.
    pub level: u8,
    pub client_id: &'a [u8],
    pub clean: bool,
    pub keep_alive: u16,
    pub login: Option<(&'a str, &'a str)>,
    /// Will topic and payload.
    pub will: Option<(&'a str, &'a [u8])>,
    /// MQTT 5 will delay interval (seconds), with the same session expiry.
    pub will_delay: Option<u32>,
}

impl Default for Connect<'_> {
    fn default() -> Self {
        Self {
            level: 4,
            client_id: b"",
            clean: true,
            keep_alive: 30,
            login: None,
            will: None,
            will_delay: None,
        }
    }
}

impl Connect<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        let v5 = self.level == 5;
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if self.will.is_some() {
            flags |= 0x04;
        }
        if self.login.is_some() {
            flags |= 0xc0;
        }
        let mut body = string(b"MQTT");
        body.push(self.level);
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        if v5 {
            let mut props = Vec::new();
            if let Some(delay) = self.will_delay {
                props.push(0x11); // session expiry interval
                props.extend(delay.to_be_bytes());
            }
            body.extend(varint(props.len()));
            body.extend(props);
        }
        body.extend(string(self.client_id));
        if let Some((topic, payload)) = self.will {
            if v5 {
                let mut props = Vec::new();
                if let Some(delay) = self.will_delay {
                    props.push(0x18); // will delay interval
                    props.extend(delay.to_be_bytes());
                }
                body.extend(varint(props.len()));
                body.extend(props);
            }
            body.extend(string(topic.as_bytes()));
            body.extend(string(payload));
        }
        if let Some((user, password)) = self.login {
            body.extend(string(user.as_bytes()));
            body.extend(string(password.as_bytes()));
        }
        frame(0x10, &body)
    }
}

/// A PUBLISH; `properties` are MQTT 5 property bytes (`None` for 3.1.1).
pub fn publish(
    topic: &str,
    payload: &[u8],
    qos: u8,
    pkid: u16,
    dup: bool,
    properties: Option<&[u8]>,
) -> Vec<u8> {
    let mut body = string(topic.as_bytes());
    if qos > 0 {
        body.extend(pkid.to_be_bytes());
    }
    if let Some(props) = properties {
        body.extend(varint(props.len()));
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    frame(0x30 | (u8::from(dup) << 3) | (qos << 1), &body)
}

/// A SUBSCRIBE to `filters` at `qos`.
pub fn subscribe(pkid: u16, filters: &[&str], qos: u8, v5: bool) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for filter in filters {
        body.extend(string(filter.as_bytes()));
        body.push(qos);
    }
    frame(0x82, &body)
}

/// A PUBREL for `pkid`.
pub fn pubrel(pkid: u16) -> Vec<u8> {
    frame(0x62, &pkid.to_be_bytes())
}

/// What a read brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// First byte and body of one packet.
    Packet(u8, Vec<u8>),
    /// The broker closed the connection.
    Closed,
    /// Nothing within the time given.
    Nothing,
}

impl Read {
    /// The packet type (high nibble of the first byte), if a packet.
    pub fn kind(&self) -> Option<u8> {
        match self {
            Self::Packet(first, _) => Some(first >> 4),
            _ => None,
        }
    }

    pub fn body(&self) -> &[u8] {
        match self {
            Self::Packet(_, body) => body,
            _ => &[],
        }
    }
}

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// A client over a stream the test set up itself.
    pub fn over(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects to the broker on `port` at 127.0.0.1, from `from` (any loopback address).
    pub async fn open(port: u16, from: IpAddr) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let stream = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects from 127.0.0.1 and sends `connect`; returns the client and its CONNACK.
    pub async fn connect(port: u16, connect: &Connect<'_>) -> (Self, Read) {
        let mut raw = Self::open(port, IpAddr::from([127, 0, 0, 1])).await;
        raw.send(&connect.bytes()).await;
        let ack = raw.read(Duration::from_secs(10)).await;
        (raw, ack)
    }

    /// Sends bytes; a broken connection is not an error here (reads tell).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, within `limit`.
    pub async fn read(&mut self, limit: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((first, body, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Read::Packet(first, body);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Read::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the broker closes the connection (`true`) or `limit` passes (`false`),
    /// throwing away whatever comes.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

fn parse(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let first = *buf.first()?;
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let start = 2 + i;
            let body = buf.get(start..start + len)?;
            return Some((first, body.to_vec(), start + len));
        }
    }
    None
}

/// Counts panics anywhere in this test process (the broker runs in it): a test of "no panic"
/// installs it first and checks it last.
pub mod panics {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static PANICS: AtomicUsize = AtomicUsize::new(0);

    pub fn count() {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    }

    pub fn seen() -> usize {
        PANICS.load(Ordering::SeqCst)
    }
}
