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

use fieldlink_core::fault::Fault;
use fieldlink_core::tls::{KeyResolver, TlsError, TlsPolicy, read_certs, read_crls, read_psk_file};
use rustls::RootCertStore;
use rustls::server::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::admission::Ticket;
use super::session::{self, Peer};
use super::{EdgeContext, metric};
use crate::config::{CertIdentity, ListenerSettings, ListenerTls};

/// How a listener secures its connections.
pub(crate) enum Security {
    Plain,
    Rustls(Arc<RustlsServer>),
    Psk(Arc<PskServer>),
}

/// Why a listener's security could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// A certificate, key, CA, CRL or PSK file cannot be read or used, or rustls refused the
    /// combination (e.g. a key that does not match the certificate).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A certificate in `ca_file` is not a usable trust anchor.
    #[error("{path:?}: not a usable CA certificate: {source}")]
    CaCertificate {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// openssl could not set up TLS-PSK.
    #[error("{0}")]
    Openssl(#[from] openssl::error::ErrorStack),
    /// The listener's TLS mode and the server built for it disagree.
    #[error("not a rustls listener")]
    NotRustls,
}

impl SecurityError {
    /// Whose fault it is: the files the configuration names are the operator's to fix; a
    /// failing libssl is the environment's; a mode mismatch is a bug.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Tls(_) | Self::CaCertificate { .. } => Fault::Config,
            Self::Openssl(_) => Fault::Environment,
            Self::NotRustls => Fault::Bug,
        }
    }
}

type SetupError = SecurityError;

impl Security {
    /// Loads every file the listener needs, so that a mistake is an error at start.
    /// Keys are resolved by `keys` (a file, or a token through `fieldlink-keys`).
    pub(crate) fn prepare(
        listener: &ListenerSettings,
        keys: Arc<dyn KeyResolver>,
    ) -> Result<Self, SetupError> {
        let policy = TlsPolicy {
            min_version: listener.min_tls_version,
            stale_crl: match &listener.tls {
                ListenerTls::Mutual { stale_crl, .. } => *stale_crl,
                _ => Default::default(),
            },
        };
        match &listener.tls {
            ListenerTls::None => Ok(Self::Plain),
            ListenerTls::ServerAuth { .. } | ListenerTls::Mutual { .. } => {
                let server = RustlsServer {
                    policy,
                    tls: listener.tls.clone(),
                    keys,
                    current: RwLock::new(None),
                    refused: Mutex::new(None),
                };
                server.reload()?;
                Ok(Self::Rustls(Arc::new(server)))
            }
            ListenerTls::Psk {
                psk_file,
                allow_plain_psk,
            } => Ok(Self::Psk(Arc::new(PskServer::new(
                psk_file.clone(),
                listener.min_tls_version,
                *allow_plain_psk,
            )?))),
        }
    }
}

/// A rustls server configuration, rebuilt when a CRL file changes.
pub(crate) struct RustlsServer {
    policy: TlsPolicy,
    tls: ListenerTls,
    keys: Arc<dyn KeyResolver>,
    current: RwLock<Option<Loaded>>,
    /// The files' stamps when a candidate was last refused: not tried again until they change.
    refused: Mutex<Option<Vec<Option<SystemTime>>>>,
}

/// A built configuration, the CRL files' modification times it was built from, and when one
/// of its CRLs reaches its nextUpdate (then the files are reviewed again, to raise the alarm).
struct Loaded {
    config: Arc<ServerConfig>,
    stamps: Vec<Option<SystemTime>>,
    recheck_at: Option<SystemTime>,
}

impl Loaded {
    fn is_current(&self, stamps: &[Option<SystemTime>]) -> bool {
        self.stamps == stamps && self.recheck_at.is_none_or(|at| SystemTime::now() < at)
    }
}

impl RustlsServer {
    fn crl_files(&self) -> &[PathBuf] {
        match &self.tls {
            ListenerTls::Mutual { crl_files, .. } => crl_files,
            _ => &[],
        }
    }

    /// The files whose change makes a new configuration: the CRLs, the listener's certificate
    /// chain (a renewed certificate, rotated without a restart) and the device CAs.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = self.crl_files().to_vec();
        match &self.tls {
            ListenerTls::ServerAuth { cert_file, .. } => files.push(cert_file.clone()),
            ListenerTls::Mutual {
                cert_file, ca_file, ..
            } => files.extend([cert_file.clone(), ca_file.clone()]),
            _ => {}
        }
        files
    }

    /// Builds the configuration from the files as they are now and puts it in force; on any
    /// error (unreadable, a certificate that is not the key's, an expired candidate) the one
    /// in force stays: validate, then promote.
    fn reload(&self) -> Result<(), SetupError> {
        let stamps = stamps(&self.watched_files());
        let (cert_file, key) = match &self.tls {
            ListenerTls::ServerAuth { cert_file, key }
            | ListenerTls::Mutual { cert_file, key, .. } => (cert_file, key),
            _ => return Err(SecurityError::NotRustls),
        };
        let chain = read_certs(cert_file)?;
        let replacing = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if replacing {
            // A candidate replacing a working certificate must be valid now (at start, the
            // clients' own check says so more precisely).
            let expired = chain
                .first()
                .and_then(|c| fieldlink_core::x509::not_after(c))
                .zip(
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .ok(),
                )
                .is_some_and(|(not_after, now)| not_after < now.as_secs() as i64);
            if expired {
                return Err(SecurityError::Tls(TlsError::File {
                    path: cert_file.clone(),
                    problem: "the new certificate has expired".into(),
                    hint: "install a renewed certificate",
                }));
            }
        }
        let mut recheck_at: Option<SystemTime> = None;
        let clients = match &self.tls {
            ListenerTls::Mutual {
                ca_file, crl_files, ..
            } => {
                let mut roots = RootCertStore::empty();
                // Every CA in the file is trusted, not only the first.
                for ca in read_certs(ca_file)? {
                    roots
                        .add(ca)
                        .map_err(|source| SecurityError::CaCertificate {
                            path: ca_file.clone(),
                            source,
                        })?;
                }
                let mut crls = Vec::new();
                for path in crl_files {
                    let read = read_crls(path)?;
                    let next = fieldlink_core::crl::review(
                        path,
                        &read,
                        self.policy.stale_crl,
                        SystemTime::now(),
                    );
                    recheck_at = match (recheck_at, next) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    crls.extend(read);
                }
                Some((roots, crls))
            }
            _ => None,
        };
        let config =
            self.policy
                .listener_config(chain, self.keys.resolve(key)?.as_ref(), clients)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Loaded {
            config: Arc::new(config),
            stamps,
            recheck_at,
        });
        Ok(())
    }

    /// The configuration for the next handshake: rebuilt first when a CRL file changed, so a
    /// revoked certificate's next connection is refused, or when a CRL reached its nextUpdate
    /// (so that its alarm is raised); sessions already up are untouched.
    fn config(&self) -> Option<Arc<ServerConfig>> {
        let now = stamps(&self.watched_files());
        let changed = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            current
                .as_ref()
                .is_none_or(|loaded| !loaded.is_current(&now))
        };
        let refused_before = {
            let refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
            refused.as_ref() == Some(&now)
        };
        if changed && !refused_before {
            match self.reload() {
                Ok(()) => {
                    *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    tracing::info!(
                        "TLS files reviewed (certificate, CAs, CRLs): in force from the next handshake; sessions stay"
                    )
                }
                Err(e) => {
                    // Once per change of the files, not once per handshake.
                    *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
                    tracing::error!(error = %e, "A TLS file changed but cannot be used; the previous ones stay in force")
                }
            }
        }
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|loaded| loaded.config.clone())
    }

    /// The device's name from its certificate, as the listener says to read it.
    fn identity(&self, stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<String> {
        let ListenerTls::Mutual { identity, .. } = &self.tls else {
            return None;
        };
        let cert = stream.get_ref().1.peer_certificates()?.first()?;
        match identity {
            CertIdentity::CommonName => fieldlink_core::x509::common_name(cert),
            CertIdentity::SubjectAltName => fieldlink_core::x509::first_dns_name(cert),
        }
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// TLS 1.2 PSK suites with forward secrecy (an ephemeral ECDH share on each side, so a key
/// leaked later does not decrypt recorded traffic), AEAD only: the only such suite.
const TLS12_PSK_SUITES: &str = "ECDHE-PSK-CHACHA20-POLY1305";
/// Plain PSK key exchange, no forward secrecy: only where `allow_plain_psk` says so, for
/// devices that cannot do better.
const TLS12_PLAIN_PSK_SUITES: &str =
    "PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305";
// TLS 1.3 PSK through the callback needs a SHA-256 suite.
const TLS13_PSK_SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";
/// `SSL_OP_ALLOW_NO_DHE_KEX`: lets TLS 1.3 use `psk_ke` (no ECDHE). Without it OpenSSL's
/// server insists on `psk_dhe_ke`. openssl-sys does not name the bit.
const ALLOW_NO_DHE_KEX: u64 = 1 << 10;
/// Length of the key handed to openssl for an unknown identity (see the callback).
const DECOY_KEY_LEN: usize = 32;

/// TLS-PSK with openssl (rustls has no PSK); keys re-read when the file changes.
pub(crate) struct PskServer {
    context: openssl::ssl::SslContext,
    /// Where the callback leaves the identity it accepted (openssl does not keep it for
    /// TLS 1.3).
    identity: openssl::ex_data::Index<openssl::ssl::Ssl, String>,
    /// Where it leaves an identity it does not know, for our log only.
    unknown: openssl::ex_data::Index<openssl::ssl::Ssl, String>,
    keys: Arc<RwLock<HashMap<String, Vec<u8>>>>,
    file: PathBuf,
    stamp: Mutex<Option<SystemTime>>,
}

impl PskServer {
    fn new(
        file: PathBuf,
        min: fieldlink_core::tls::MinTlsVersion,
        allow_plain_psk: bool,
    ) -> Result<Self, SetupError> {
        use openssl::ssl::{SslContext, SslMethod, SslOptions, SslVersion};
        let keys = Arc::new(RwLock::new(load_psk(&file)?));
        let mut builder = SslContext::builder(SslMethod::tls_server())?;
        let lowest = match min {
            fieldlink_core::tls::MinTlsVersion::Tls12 => SslVersion::TLS1_2,
            fieldlink_core::tls::MinTlsVersion::Tls13 => SslVersion::TLS1_3,
        };
        let tls12_suites = if allow_plain_psk {
            tracing::warn!(
                file = %file.display(),
                "allow_plain_psk: TLS-PSK suites without forward secrecy are accepted; a PSK \
                 that leaks decrypts every recorded session of its device"
            );
            builder.set_options(SslOptions::from_bits_retain(ALLOW_NO_DHE_KEX));
            format!("{TLS12_PSK_SUITES}:{TLS12_PLAIN_PSK_SUITES}")
        } else {
            TLS12_PSK_SUITES.to_owned()
        };
        builder
            .set_min_proto_version(Some(lowest))
            .and_then(|()| builder.set_cipher_list(&tls12_suites))
            .and_then(|()| builder.set_ciphersuites(TLS13_PSK_SUITES))?;
        let lookup = keys.clone();
        let index = openssl::ssl::Ssl::new_ex_index::<String>()?;
        let unknown = openssl::ssl::Ssl::new_ex_index::<String>()?;
        builder.set_psk_server_callback(move |ssl, identity, out| {
            let name = identity.map(|i| String::from_utf8_lossy(i).into_owned());
            let keys = lookup.read().unwrap_or_else(PoisonError::into_inner);
            match name.as_deref().and_then(|n| keys.get(n)) {
                Some(key) if key.len() <= out.len() => {
                    out[..key.len()].copy_from_slice(key);
                    ssl.set_ex_data(index, name.unwrap_or_default());
                    Ok(key.len())
                }
                // An unknown identity gets a random key, so that its handshake fails exactly
                // as a wrong key does (a bad MAC or binder): refusing it outright (alert 115,
                // or a TLS 1.3 fallback to certificates) would tell an attacker which
                // identities exist.
                _ => {
                    let len = DECOY_KEY_LEN.min(out.len());
                    let decoy = &mut out[..len];
                    openssl::rand::rand_bytes(decoy)?;
                    ssl.set_ex_data(unknown, name.unwrap_or_default());
                    Ok(decoy.len())
                }
            }
        });
        Ok(Self {
            context: builder.build(),
            identity: index,
            unknown,
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
    Ok(read_psk_file(file)?
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
                            if let Some(name) = tls.ssl().ex_data(server.unknown) {
                                tracing::info!(listener = %listener.name, %addr, identity = %name.escape_debug(), "Refused: unknown PSK identity (the client is told no more than for a wrong key)");
                            }
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
