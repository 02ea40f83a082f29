//! Listeners and their transports: plain TCP, TLS and mutual TLS (rustls), TLS-PSK (openssl).
//!
//! A TLS handshake runs in its own task under a timeout, and at most `max_handshakes` run at
//! once per listener: a new connection over the cap pushes out the oldest handshake still in
//! progress. Idle sockets that never send a ClientHello therefore cost a slot each for a
//! while, but can never keep a real client from being served.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use fieldlink_core::config::{CertIdentity, ListenerSettings, ListenerTls};
use fieldlink_core::tls::{FileKey, TlsPolicy, read_certs, read_crls, read_psk_file};
use rustls::RootCertStore;
use rustls::server::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::admission::Ticket;
use super::session::{self, Peer};
use super::{EdgeContext, metric};

/// How a listener secures its connections.
pub(crate) enum Security {
    Plain,
    Rustls(Arc<RustlsServer>),
    Psk(Arc<PskServer>),
}

/// Why a listener's security could not be set up (a file missing or unusable).
pub(crate) type SetupError = String;

impl Security {
    /// Loads every file the listener needs, so that a mistake is an error at start.
    pub(crate) fn prepare(listener: &ListenerSettings) -> Result<Self, SetupError> {
        let policy = TlsPolicy {
            min_version: listener.min_tls_version,
        };
        match &listener.tls {
            ListenerTls::None => Ok(Self::Plain),
            ListenerTls::ServerAuth { .. } | ListenerTls::Mutual { .. } => {
                let server = RustlsServer {
                    policy,
                    tls: listener.tls.clone(),
                    current: RwLock::new(None),
                };
                server.reload()?;
                Ok(Self::Rustls(Arc::new(server)))
            }
            ListenerTls::Psk { psk_file } => Ok(Self::Psk(Arc::new(PskServer::new(
                psk_file.clone(),
                listener.min_tls_version,
            )?))),
        }
    }
}

/// A rustls server configuration, rebuilt when a CRL file changes.
pub(crate) struct RustlsServer {
    policy: TlsPolicy,
    tls: ListenerTls,
    current: RwLock<Option<Loaded>>,
}

/// A built configuration and the CRL files' modification times it was built from.
type Loaded = (Arc<ServerConfig>, Vec<Option<SystemTime>>);

impl RustlsServer {
    fn crl_files(&self) -> &[PathBuf] {
        match &self.tls {
            ListenerTls::Mutual { crl_files, .. } => crl_files,
            _ => &[],
        }
    }

    fn reload(&self) -> Result<(), SetupError> {
        let stamps = stamps(self.crl_files());
        let (cert_file, key_file) = match &self.tls {
            ListenerTls::ServerAuth {
                cert_file,
                key_file,
            }
            | ListenerTls::Mutual {
                cert_file,
                key_file,
                ..
            } => (cert_file, key_file),
            _ => return Err("not a rustls listener".into()),
        };
        let chain = read_certs(cert_file).map_err(|e| e.to_string())?;
        let clients = match &self.tls {
            ListenerTls::Mutual {
                ca_file, crl_files, ..
            } => {
                let mut roots = RootCertStore::empty();
                // Every CA in the file is trusted, not only the first.
                for ca in read_certs(ca_file).map_err(|e| e.to_string())? {
                    roots
                        .add(ca)
                        .map_err(|e| format!("{ca_file:?}: not a usable CA certificate: {e}"))?;
                }
                let mut crls = Vec::new();
                for path in crl_files {
                    crls.extend(read_crls(path).map_err(|e| e.to_string())?);
                }
                Some((roots, crls))
            }
            _ => None,
        };
        let config = self
            .policy
            .listener_config(chain, &FileKey(key_file.clone()), clients)
            .map_err(|e| e.to_string())?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            Some((Arc::new(config), stamps));
        Ok(())
    }

    /// The configuration for the next handshake: rebuilt first when a CRL file changed, so a
    /// revoked certificate's next connection is refused; sessions already up are untouched.
    fn config(&self) -> Option<Arc<ServerConfig>> {
        let changed = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            current
                .as_ref()
                .is_none_or(|(_, old)| *old != stamps(self.crl_files()))
        };
        if changed {
            match self.reload() {
                Ok(()) => tracing::info!(
                    "A CRL file changed: client certificates are checked against it from now on"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "A CRL file changed but cannot be used; the previous one stays in force")
                }
            }
        }
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|(config, _)| config.clone())
    }

    /// The device's name from its certificate, as the listener says to read it.
    fn identity(&self, stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<String> {
        let ListenerTls::Mutual { identity, .. } = &self.tls else {
            return None;
        };
        let cert = stream.get_ref().1.peer_certificates()?.first()?;
        match identity {
            CertIdentity::CommonName => fieldlink_core::der::common_name(cert),
            CertIdentity::SubjectAltName => fieldlink_core::der::first_dns_name(cert),
        }
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

const TLS12_PSK_SUITES: &str = "ECDHE-PSK-CHACHA20-POLY1305:DHE-PSK-AES256-GCM-SHA384:\
    DHE-PSK-AES128-GCM-SHA256:DHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384:\
    PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305";
// TLS 1.3 PSK through the callback needs a SHA-256 suite.
const TLS13_PSK_SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";

/// TLS-PSK with openssl (rustls has no PSK); keys re-read when the file changes.
pub(crate) struct PskServer {
    context: openssl::ssl::SslContext,
    /// Where the callback leaves the identity it accepted (openssl does not keep it for
    /// TLS 1.3).
    identity: openssl::ex_data::Index<openssl::ssl::Ssl, String>,
    keys: Arc<RwLock<HashMap<String, Vec<u8>>>>,
    file: PathBuf,
    stamp: Mutex<Option<SystemTime>>,
}

impl PskServer {
    fn new(file: PathBuf, min: fieldlink_core::tls::MinTlsVersion) -> Result<Self, SetupError> {
        use openssl::ssl::{SslContext, SslMethod, SslVersion};
        let keys = Arc::new(RwLock::new(load_psk(&file)?));
        let mut builder =
            SslContext::builder(SslMethod::tls_server()).map_err(|e| e.to_string())?;
        let lowest = match min {
            fieldlink_core::tls::MinTlsVersion::Tls12 => SslVersion::TLS1_2,
            fieldlink_core::tls::MinTlsVersion::Tls13 => SslVersion::TLS1_3,
        };
        builder
            .set_min_proto_version(Some(lowest))
            .and_then(|()| builder.set_cipher_list(TLS12_PSK_SUITES))
            .and_then(|()| builder.set_ciphersuites(TLS13_PSK_SUITES))
            .map_err(|e| e.to_string())?;
        let lookup = keys.clone();
        let index = openssl::ssl::Ssl::new_ex_index::<String>().map_err(|e| e.to_string())?;
        builder.set_psk_server_callback(move |ssl, identity, out| {
            let identity = identity.and_then(|i| std::str::from_utf8(i).ok());
            let keys = lookup.read().unwrap_or_else(PoisonError::into_inner);
            match identity.and_then(|i| keys.get(i).map(|k| (i, k))) {
                Some((name, key)) if key.len() <= out.len() => {
                    out[..key.len()].copy_from_slice(key);
                    ssl.set_ex_data(index, name.to_owned());
                    Ok(key.len())
                }
                // Zero length: unknown identity, the handshake fails.
                _ => Ok(0),
            }
        });
        Ok(Self {
            context: builder.build(),
            identity: index,
            keys,
            stamp: Mutex::new(std::fs::metadata(&file).and_then(|m| m.modified()).ok()),
            file,
        })
    }

    fn refresh(&self) {
        let now = std::fs::metadata(&self.file)
            .and_then(|m| m.modified())
            .ok();
        let mut stamp = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if *stamp == now {
            return;
        }
        *stamp = now;
        match load_psk(&self.file) {
            Ok(keys) => {
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
                tracing::info!(file = %self.file.display(), "PSK file reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "The PSK file changed but cannot be used; the previous keys stay")
            }
        }
    }
}

fn load_psk(file: &std::path::Path) -> Result<HashMap<String, Vec<u8>>, SetupError> {
    Ok(read_psk_file(file)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|e| (e.identity, e.key))
        .collect())
}

/// TLS handshakes in progress on one listener, oldest first.
struct Handshakes {
    cap: usize,
    pending: Mutex<VecDeque<(u64, CancellationToken)>>,
    next: AtomicU64,
}

/// One handshake's place; it leaves the list when dropped.
struct Slot {
    id: u64,
    token: CancellationToken,
    owner: Arc<Handshakes>,
}

impl Handshakes {
    fn admit(self: &Arc<Self>) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        while pending.len() >= self.cap {
            if let Some((_, oldest)) = pending.pop_front() {
                oldest.cancel();
            }
        }
        pending.push_back((id, token.clone()));
        Slot {
            id,
            token,
            owner: self.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pending = self
            .owner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.retain(|(id, _)| *id != self.id);
    }
}

/// Accepts connections on `tcp` until shutdown.
pub(crate) async fn accept_loop(
    tcp: TcpListener,
    listener: Arc<ListenerSettings>,
    security: Security,
    ctx: Arc<EdgeContext>,
) {
    let handshakes = Arc::new(Handshakes {
        cap: listener.max_handshakes,
        pending: Mutex::new(VecDeque::new()),
        next: AtomicU64::new(0),
    });
    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            () = ctx.shutdown.cancelled() => {
                // Connections still in their TLS handshake or CONNECT end with the listener.
                ctx.admission.evict_all();
                break;
            }
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(listener = %listener.name, error = %e, "Cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Counted from accept until authenticated.
        let ticket = ctx.admission.admit(addr.ip());
        let _ = stream.set_nodelay(true);
        let peer = |identity| Peer {
            addr,
            listener: listener.clone(),
            identity,
        };
        match &security {
            Security::Plain => {
                let ctx = ctx.clone();
                let peer = peer(None);
                ctx.shutdown
                    .clone()
                    .spawn(until_evicted(ticket, move |ticket| {
                        session::serve(Box::new(stream), peer, ctx, ticket)
                    }));
            }
            Security::Rustls(server) => {
                let Some(config) = server.config() else {
                    continue;
                };
                let slot = handshakes.admit();
                let (ctx, server, listener) = (ctx.clone(), server.clone(), listener.clone());
                let mut peer = peer(None);
                ctx.shutdown.clone().spawn(until_evicted(ticket, move |ticket| async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let result = handshake(&slot, &listener, acceptor.accept(stream)).await;
                    drop(slot);
                    let Some(tls) = result else { return };
                    peer.identity = server.identity(&tls);
                    if matches!(listener.tls, ListenerTls::Mutual { .. }) && peer.identity.is_none() {
                        tracing::info!(listener = %listener.name, %addr, "Refused: the client certificate names no device");
                        metrics::counter!(metric::REFUSED_TOTAL, "reason" => "no_identity").increment(1);
                        return;
                    }
                    session::serve(Box::new(tls), peer, ctx, ticket).await;
                }));
            }
            Security::Psk(server) => {
                server.refresh();
                let ssl = match openssl::ssl::Ssl::new(&server.context) {
                    Ok(ssl) => ssl,
                    Err(e) => {
                        tracing::error!(error = %e, "Cannot start a PSK session");
                        continue;
                    }
                };
                let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, stream) else {
                    continue;
                };
                let slot = handshakes.admit();
                let (ctx, listener, server) = (ctx.clone(), listener.clone(), server.clone());
                let mut peer = peer(None);
                ctx.shutdown
                    .clone()
                    .spawn(until_evicted(ticket, move |ticket| async move {
                        let accepted = handshake(&slot, &listener, async {
                            Pin::new(&mut tls)
                                .accept()
                                .await
                                .map_err(std::io::Error::other)
                        })
                        .await;
                        drop(slot);
                        if accepted.is_none() {
                            return;
                        }
                        peer.identity = tls.ssl().ex_data(server.identity).cloned();
                        session::serve(Box::new(tls), peer, ctx, ticket).await;
                    }));
            }
        }
    }
}

/// Runs a connection's task until it ends, or until a newer connection pushes it out while
/// it is still unauthenticated (an authenticated session has released its ticket, which then
/// never fires).
async fn until_evicted<F>(ticket: Ticket, task: impl FnOnce(Ticket) -> F)
where
    F: std::future::Future<Output = ()>,
{
    let evicted = ticket.eviction();
    tokio::select! {
        () = task(ticket) => {}
        () = evicted.cancelled() => {
            metrics::counter!(metric::REFUSED_TOTAL, "reason" => "unauthenticated_evicted")
                .increment(1);
        }
    }
}

/// Runs a TLS handshake under the listener's timeout, giving way if a newer one pushes it out.
async fn handshake<T>(
    slot: &Slot,
    listener: &ListenerSettings,
    accept: impl std::future::Future<Output = std::io::Result<T>>,
) -> Option<T> {
    let reason = tokio::select! {
        result = tokio::time::timeout(listener.handshake_timeout, accept) => match result {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => {
                tracing::info!(listener = %listener.name, error = %e, "TLS handshake refused");
                "handshake"
            }
            Err(_) => "handshake_timeout",
        },
        () = slot.token.cancelled() => "handshake_evicted",
    };
    metrics::counter!(metric::REFUSED_TOTAL, "reason" => reason).increment(1);
    None
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain => "Plain",
            Self::Rustls(_) => "Rustls",
            Self::Psk(_) => "Psk",
        })
    }
}
