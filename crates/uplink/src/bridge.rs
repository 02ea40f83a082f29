//! Our own connection to the cloud, bridged to rumqttc through a private Unix socket.
//!
//! rumqttc 0.25 dials `(host, port)` itself and gives no access to its socket: no TCP options,
//! no choice among a name's addresses, no byte-level view of what arrives, and no TLS-PSK. So
//! rumqttc connects to a Unix socket in a 0700 directory of ours (`Transport::Unix`, plain
//! MQTT), and each connection accepted there is bridged to one we make:
//!
//! 1. every address of `uplink.host` raced, each attempt with its own timeout, socket tuned
//!    ([`crate::dial`]);
//! 2. the TLS handshake, with its own timeout: rustls with our policy and the server's
//!    certificate checked against the configured host name (not the address), or openssl for
//!    PSK ([`crate::psk`]);
//! 3. bytes copied both ways, the time of the last byte from the cloud recorded in a [`Link`]
//!    that the drain loop reads to tell a stalled link from a slow one.
//!
//! A failure of steps 1 and 2 is recorded before rumqttc's side is closed, so that the status
//! says why ("server certificate not trusted") and whether the cloud refused us, rather than
//! rumqttc's "connection closed". The drain loop closes a [`Link`] it gives up on; the bridged
//! connection ends then, even if the dead peer never answers again.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openssl::ssl::SslConnector;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;

use fieldlink_core::shutdown::Shutdown;

use crate::UplinkError;
use crate::dial::{Resolve, SocketTuning, dial};

/// How the bridge secures the connections it makes.
#[derive(Clone)]
pub(crate) enum Tunnel {
    /// rustls; the certificate must name `name` (the configured host).
    Rustls {
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    },
    /// openssl TLS-PSK.
    Psk(Arc<SslConnector>),
}

/// Where the bridged connections go and how long each step may take.
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) resolver: Arc<dyn Resolve>,
    pub(crate) connect_timeout: Duration,
    pub(crate) tuning: SocketTuning,
}

/// Why a bridged connection could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkError {
    /// In plain words.
    pub(crate) text: String,
    /// The cloud said no (TLS alert, certificate), as opposed to could not be reached.
    pub(crate) refused: bool,
    /// A certificate's validity period was the problem (a wrong clock, before time sync).
    pub(crate) about_time: bool,
}

impl LinkError {
    /// A failure the cloud's side caused, in plain words; `clock_synchronized` as in
    /// [`crate::diagnose::explain`].
    pub(crate) fn of(error: &(dyn std::error::Error + 'static), clock_synchronized: bool) -> Self {
        Self {
            text: crate::diagnose::explain(error, clock_synchronized),
            refused: crate::diagnose::is_refusal(error),
            about_time: crate::diagnose::is_clock_error(error),
        }
    }

    /// A failure to reach the cloud at all.
    pub(crate) fn unreachable(text: String) -> Self {
        Self {
            text,
            refused: false,
            about_time: false,
        }
    }
}

/// One bridged connection, as the drain loop sees it.
#[derive(Debug)]
pub(crate) struct Link {
    opened: Instant,
    /// The cloud's address this link reached, once dialled.
    addr: Mutex<Option<SocketAddr>>,
    /// Milliseconds after `opened` of the last byte from the cloud; `u64::MAX`: none yet.
    last_rx_ms: AtomicU64,
    close: Notify,
}

impl Link {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            addr: Mutex::new(None),
            last_rx_ms: AtomicU64::new(u64::MAX),
            close: Notify::new(),
        }
    }

    /// When the last byte from the cloud arrived (the TLS handshake's included).
    pub(crate) fn last_heard(&self) -> Option<Instant> {
        match self.last_rx_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(self.opened + Duration::from_millis(ms)),
        }
    }

    fn heard(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_rx_ms.store(ms, Ordering::Relaxed);
    }

    /// Ends the bridged connection now (the drain loop gave up on it).
    pub(crate) fn close(&self) {
        // notify_one keeps a permit: the connection ends even if it is not waiting yet.
        self.close.notify_one();
    }
}

#[derive(Default)]
struct Shared {
    /// How the next accepted connection is secured (renewed certificates and CRLs are
    /// picked up by building it again before each attempt).
    tunnel: Mutex<Option<Tunnel>>,
    last_error: Mutex<Option<LinkError>>,
    /// An address that failed us after its TCP connect: tried last next time.
    demoted: Mutex<Option<SocketAddr>>,
    current: Mutex<Option<Arc<Link>>>,
}

/// The running bridge: rumqttc connects to [`Bridge::socket`].
pub(crate) struct Bridge {
    dir: PathBuf,
    socket: PathBuf,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// Listens on a Unix socket in a new 0700 directory under `runtime_dir`.
    /// Listens on a private socket in `runtime_dir`; its tasks run on `tasks` and end when the
    /// bridge is dropped.
    pub(crate) fn start(
        runtime_dir: &Path,
        target: Target,
        tasks: &Shutdown,
    ) -> Result<Self, UplinkError> {
        let dir = runtime_dir.join(format!("uplink-{}", std::process::id()));
        let io = |e: std::io::Error| UplinkError::Io {
            path: dir.clone(),
            source: e,
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        // Recreate the mode in case the directory pre-existed with a wider one.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        let socket = dir.join("link.sock");
        let listener = UnixListener::bind(&socket).map_err(io)?;
        let shared = Arc::new(Shared::default());
        let target = Arc::new(target);
        let task = tasks.spawn(accept_loop(listener, target, shared.clone(), tasks.clone()));
        Ok(Self {
            dir,
            socket,
            shared,
            task,
        })
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// How the next connection is secured.
    pub(crate) fn set_tunnel(&self, tunnel: Tunnel) {
        *lock(&self.shared.tunnel) = Some(tunnel);
    }

    /// The last failure to connect, taken (so that an old one is not reported twice).
    pub(crate) fn take_error(&self) -> Option<LinkError> {
        lock(&self.shared.last_error).take()
    }

    /// The connection made for the latest attempt, once dialled.
    pub(crate) fn link(&self) -> Option<Arc<Link>> {
        lock(&self.shared.current).clone()
    }

    /// The current connection's address is tried last next time (the link stalled on it).
    pub(crate) fn demote_link(&self) {
        let addr = lock(&self.shared.current)
            .as_ref()
            .and_then(|link| *lock(&link.addr));
        if addr.is_some() {
            *lock(&self.shared.demoted) = addr;
        }
    }

    /// Ends the current connection (the drain loop gave up on it).
    pub(crate) fn close_link(&self) {
        if let Some(link) = lock(&self.shared.current).take() {
            link.close();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
        self.close_link();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(
    listener: UnixListener,
    target: Arc<Target>,
    shared: Arc<Shared>,
    tasks: Shutdown,
) {
    loop {
        let local = match listener.accept().await {
            Ok((local, _)) => local,
            // Out of file descriptors, most likely: the uplink must not stay cut off for good.
            Err(e) => {
                tracing::warn!(error = %e, "The uplink's private socket cannot accept; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(tunnel) = lock(&shared.tunnel).clone() else {
            continue;
        };
        // One attempt at a time: a new one ends the one before (rumqttc has dropped it).
        let link = Arc::new(Link::new());
        if let Some(old) = lock(&shared.current).replace(link.clone()) {
            old.close();
        }
        let (target, shared) = (target.clone(), shared.clone());
        tasks.spawn(async move {
            let outcome = tokio::select! {
                made = connect(&target, &tunnel, &link, &shared) => made,
                () = link.close.notified() => return,
            };
            match outcome {
                Ok(Cloud::Rustls(tls)) => pump(local, *tls, &link, &shared).await,
                Ok(Cloud::Psk(tls)) => pump(local, *tls, &link, &shared).await,
                // Recorded before rumqttc's side closes (when `local` drops), so the drain
                // loop finds it with rumqttc's error.
                Err(e) => *lock(&shared.last_error) = Some(e),
            }
        });
    }
}

enum Cloud {
    Rustls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Psk(Box<tokio_openssl::SslStream<TcpStream>>),
}

async fn connect(
    target: &Target,
    tunnel: &Tunnel,
    link: &Link,
    shared: &Shared,
) -> Result<Cloud, LinkError> {
    let avoid = *lock(&shared.demoted);
    let (tcp, addr) = dial(
        &target.resolver,
        &target.host,
        target.port,
        target.connect_timeout,
        target.tuning,
        avoid,
    )
    .await
    .map_err(|why| {
        LinkError::unreachable(format!(
            "cannot reach {}:{}: {why}",
            target.host, target.port
        ))
    })?;
    let handshake = async {
        match tunnel {
            Tunnel::Rustls { config, name } => tokio_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), tcp)
                .await
                .map(|tls| Cloud::Rustls(Box::new(tls)))
                .map_err(|e| LinkError::of(&e, fieldlink_core::clock::synchronized())),
            Tunnel::Psk(connector) => crate::psk::handshake(connector, &target.host, tcp)
                .await
                .map(|tls| Cloud::Psk(Box::new(tls))),
        }
    };
    *lock(&link.addr) = Some(addr);
    let outcome = tokio::time::timeout(target.connect_timeout, handshake)
        .await
        .map_err(|_| {
            LinkError::unreachable(format!(
                "TLS handshake with {addr} ({}) unanswered after {:?}",
                target.host, target.connect_timeout
            ))
        })
        .and_then(|handshake| handshake);
    let cloud = match outcome {
        Ok(cloud) => cloud,
        Err(e) => {
            // The cloud's own refusal is the same at every address; anything else may be
            // this address's fault.
            if !e.refused {
                *lock(&shared.demoted) = Some(addr);
            }
            return Err(e);
        }
    };
    link.heard();
    tracing::debug!(%addr, "Uplink TLS session established");
    Ok(cloud)
}

/// Copies both ways until either side ends or the link is closed; every byte from the cloud
/// marks the link as heard. A read error on the cloud's side is recorded (a TLS 1.3 server
/// sends its "certificate required" alert only after the handshake).
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    local: UnixStream,
    cloud: S,
    link: &Link,
    shared: &Shared,
) {
    let (mut from_mqtt, mut to_mqtt) = local.into_split();
    let (mut from_cloud, mut to_cloud) = tokio::io::split(cloud);
    let up = async {
        let mut buf = vec![0u8; BUFFER];
        loop {
            match from_mqtt.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_cloud.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        // rumqttc is done: say goodbye properly (close_notify), unless the cloud is gone.
        let _ = tokio::time::timeout(GOODBYE, to_cloud.shutdown()).await;
    };
    let down = async {
        let mut buf = vec![0u8; BUFFER];
        loop {
            match from_cloud.read(&mut buf).await {
                Ok(0) => return,
                Err(e) => {
                    *lock(&shared.last_error) =
                        Some(LinkError::of(&e, fieldlink_core::clock::synchronized()));
                    return;
                }
                Ok(n) => {
                    link.heard();
                    if to_mqtt.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        () = link.close.notified() => {}
    }
}

/// Copy buffer per direction: one TLS record.
const BUFFER: usize = 16 * 1024;
/// How long a closing connection may take to send its close_notify.
const GOODBYE: Duration = Duration::from_millis(500);
