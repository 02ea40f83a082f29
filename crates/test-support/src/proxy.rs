//! Bad networks on loopback: a TCP proxy that can black-hole or throttle, and an address
//! whose connection attempts hang.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP proxy on a free loopback port in front of `upstream`.
///
/// - [`Proxy::black_hole`]: the connections open now stop forwarding, both ways, and stay
///   open (what a gateway sees when a NAT entry expires or a modem hands over); new
///   connections pass.
/// - [`Proxy::throttle`]: every connection forwards at most so many bytes per second in each
///   direction (a weak cellular signal).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Connections are numbered from 1; those numbered up to this are black-holed.
    frozen_up_to: AtomicU64,
    /// Bytes per second per direction; 0: unlimited.
    rate: AtomicU64,
    accepted: AtomicU64,
    /// Bytes forwarded from upstream to the client, all connections.
    downstream_bytes: AtomicU64,
    /// When bytes were last forwarded from upstream to the client, per connection.
    last_downstream: Mutex<HashMap<u64, Instant>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = state.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let up = tokio::spawn(forward(id, client_read, server_write, state.clone(), false));
                let down =
                    tokio::spawn(forward(id, server_read, client_write, state.clone(), true));
                let mut tasks = state.tasks.lock().unwrap_or_else(PoisonError::into_inner);
                tasks.extend([up.abort_handle(), down.abort_handle()]);
            }
        });
        shared
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(accept.abort_handle());
        Self { addr, shared }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from upstream to clients so far.
    pub fn downstream_bytes(&self) -> u64 {
        self.shared.downstream_bytes.load(Ordering::SeqCst)
    }

    /// When bytes were last forwarded from upstream to the client of connection `n` (from 1,
    /// in the order accepted): the last byte that client received.
    pub fn last_downstream(&self, n: u64) -> Option<Instant> {
        self.shared
            .last_downstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&n)
            .copied()
    }

    /// The connections open now forward nothing more, either way, and stay open; later ones
    /// pass.
    pub fn black_hole(&self) {
        let open = self.shared.accepted.load(Ordering::SeqCst);
        self.shared.frozen_up_to.store(open, Ordering::SeqCst);
    }

    /// At most `bytes_per_second` per direction and connection (0: unlimited).
    pub fn throttle(&self, bytes_per_second: u64) {
        self.shared.rate.store(bytes_per_second, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

async fn forward(
    id: u64,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Arc<Shared>,
    downstream: bool,
) {
    // Small reads, so that a throttled link trickles instead of bursting.
    let mut buf = vec![0u8; 512];
    loop {
        let read = from.read(&mut buf).await;
        if id <= shared.frozen_up_to.load(Ordering::SeqCst) {
            // Black-holed: hold both sockets open and never forward again (not even a close).
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let rate = shared.rate.load(Ordering::SeqCst);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if downstream {
            shared
                .downstream_bytes
                .fetch_add(n as u64, Ordering::SeqCst);
            shared
                .last_downstream
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, Instant::now());
        }
    }
    let _ = to.shutdown().await;
}

/// A loopback address whose TCP connection attempts hang: a listening socket whose accept
/// queue is full, so the kernel drops further SYNs (as a firewall that drops, not refuses).
#[derive(Debug)]
pub struct SilentAddress {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _queued: StdTcpStream,
}

impl SilentAddress {
    /// On 127.0.0.1, a free port. Checks that an attempt does hang before returning.
    pub fn start() -> Self {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        listener.bind(&any.into()).expect("bound on loopback");
        // Backlog 0: one connection fills the accept queue; it is never accepted.
        listener.listen(0).expect("listening");
        let addr = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("the silent address");
        let queued = StdTcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .expect("the first connection fills the queue");
        let probe = StdTcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(
            probe.is_err(),
            "a connection to a full accept queue was expected to hang"
        );
        Self {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }

    /// The address that does not answer.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
