//! The HTTPS server: our own accept loop (rustls, then hyper's HTTP/1.1), so that what a
//! client can hold before it has logged in is bounded here: connections served at once
//! (`web.max_connections`; more are closed at once; one address at most half of them), the
//! TLS handshake's time, the time to
//! send a request's headers, the time to answer it (body included), the headers' size, and the
//! body's (see `routes::MAX_BODY`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::tls::KeyResolver;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::Service as _;

use crate::app::App;
use crate::config::WebSettings;
use crate::sessions::{Sessions, random_token};
use crate::users::Accounts;
use crate::{Gateway, WebError, identity, users_file, web_dir};

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers must arrive within this (also the idle time of a kept-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// A request must be answered within this, its body read included: hyper's header timeout
/// does not cover a body trickled a byte at a time, which would hold a connection slot before
/// any login. (A live stream's answer starts at once; its body is not bounded by this.)
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The most a request's headers may take in the read buffer.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Connections one address may hold at once: half of `web.max_connections`, so that one
/// client (a compromised device on the LAN, a script) cannot take every slot from the
/// technician's browser, which itself opens up to six.
fn per_address_limit(max_connections: usize) -> usize {
    (max_connections / 2).max(1)
}

/// Connections held per address (only addresses holding one are in the map).
struct PerAddress {
    held: Mutex<HashMap<IpAddr, usize>>,
    limit: usize,
}

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = held.entry(ip).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: self.clone(),
            ip,
        })
    }
}

/// One connection of an address; given back when dropped.
struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self
            .owner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// The peer's address, for the login throttle.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// The running UI.
#[derive(Debug)]
pub struct WebUi {
    addr: SocketAddr,
    fingerprint: String,
}

impl WebUi {
    /// Builds and starts the UI; see [`crate::start`].
    pub(crate) fn start(
        settings: &WebSettings,
        data_dir: &Path,
        keys: &dyn KeyResolver,
        gateway: Arc<dyn Gateway>,
        tasks: &Shutdown,
    ) -> Result<Self, WebError> {
        let identity = identity::load(settings, &web_dir(data_dir), keys)?;
        let accounts = Accounts::open(users_file(data_dir))?;
        let std_listener =
            std::net::TcpListener::bind(settings.listen).map_err(|source| WebError::Bind {
                addr: settings.listen,
                source,
            })?;
        let addr = std_listener.local_addr().map_err(|source| WebError::Bind {
            addr: settings.listen,
            source,
        })?;
        std_listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(std_listener))
            .map_err(|source| WebError::Bind {
                addr: settings.listen,
                source,
            })
            .map(|listener| {
                let setup_token = accounts.current().is_empty().then(random_token);
                if let Some(token) = &setup_token {
                    // The one secret that must reach the log: whoever reads the log on the
                    // board may make the first admin, and the token dies with its first use.
                    tracing::warn!(
                        "No web UI account yet: open https://{addr}/setup and give the one-time \
                         setup token {token} (or make an admin with `fieldlink users add NAME \
                         --role admin`)"
                    );
                }
                tracing::info!(
                    %addr,
                    fingerprint = %identity.fingerprint,
                    "Web UI listening (HTTPS; check the certificate's SHA-256 fingerprint in the browser)"
                );
                let app = Arc::new(App::new(
                    gateway,
                    accounts,
                    Sessions::new(settings.session_idle, settings.session_max),
                    settings.session_max,
                    identity.chain.clone(),
                    identity.fingerprint.clone(),
                    setup_token,
                    tasks.clone(),
                ));
                let acceptor = TlsAcceptor::from(identity.config.clone());
                tasks.spawn_vital(
                    "web",
                    "accept",
                    accept_loop(
                        listener,
                        acceptor,
                        app,
                        settings.max_connections,
                        tasks.clone(),
                    ),
                );
                Self {
                    addr,
                    fingerprint: identity.fingerprint,
                }
            })
    }

    /// Where it listens (the port is known when `web.port` was 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The SHA-256 fingerprint of its certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Arc<App>,
    max_connections: usize,
    tasks: Shutdown,
) {
    let router = crate::routes::router(app);
    let slots = Arc::new(Semaphore::new(max_connections));
    let per_address = Arc::new(PerAddress {
        held: Mutex::new(HashMap::new()),
        limit: per_address_limit(max_connections),
    });
    loop {
        let (tcp, peer) = tokio::select! {
            () = tasks.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "The web UI cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = per_address.take(peer.ip()) else {
            tracing::debug!(%peer, "Web UI connection refused: this address holds half of web.max_connections");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "Web UI connection refused: web.max_connections reached");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stop = tasks.clone();
        tasks.spawn(async move {
            let _slots = (slot, address_slot);
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                tracing::debug!(%peer, "Web UI TLS handshake failed or timed out");
                return;
            };
            let service = hyper::service::service_fn(move |mut request| {
                request.extensions_mut().insert(Peer(peer));
                let answer = router.clone().call(request);
                async move {
                    match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
                        Ok(answered) => answered,
                        Err(_) => Ok(axum::response::IntoResponse::into_response((
                            axum::http::StatusCode::REQUEST_TIMEOUT,
                            [(axum::http::header::CONNECTION, "close")],
                            "the request took too long\n",
                        ))),
                    }
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES.max(8192))
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "Web UI connection ended");
                    }
                }
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
                }
            }
        });
    }
}
