//! The connector: a fresh TLS configuration for each connection attempt (renewed certificates,
//! changed CRLs), handed to the bridge.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use fieldlink_core::tls::{ClientTls, KeyResolver, PeerChain, TlsPolicy, read_certs, read_crls};
use rumqttc::Transport;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName};

use fieldlink_core::shutdown::Shutdown;

use crate::bridge::{Bridge, Target, Tunnel};
use crate::config::{UplinkSettings, UplinkTls};
pub use crate::dial::Resolve;
use crate::dial::SocketTuning;
pub use crate::error::UplinkError;
use crate::psk::Psk;
use crate::rotation::{Identity, Rotation};
use crate::{bridge, expiry, psk};

/// Builds a fresh TLS configuration for each connection attempt, so that renewed
/// certificates and updated CRLs are picked up, and hands it to the bridge.
pub(crate) struct Connector {
    pub(crate) policy: TlsPolicy,
    pub(crate) tls: UplinkTls,
    pub(crate) crl_files: Vec<PathBuf>,
    pub(crate) alpn: Vec<Vec<u8>>,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) bridge: Bridge,
    pub(crate) crl_stamps: Vec<Option<SystemTime>>,
    /// When a CRL in use reaches its nextUpdate: look at the files again then, so that a CRL
    /// going stale under a live session raises its alarm on time.
    crl_recheck_at: Option<SystemTime>,
    /// The cloud's chain, as verified in the last handshake.
    pub(crate) peer_chain: PeerChain,
    /// Where our mutual-TLS key comes from (a file, or a token through `fieldlink-keys`).
    keys: Arc<dyn KeyResolver>,
    /// Renewed certificate files: checked, tried, promoted or refused.
    pub(crate) rotation: Rotation,
    /// When `cert_file` and `ca_file` last changed, as of the last attempt.
    identity_stamps: Vec<Option<SystemTime>>,
}

impl Connector {
    pub(crate) fn new(
        settings: &UplinkSettings,
        runtime_dir: &Path,
        resolver: Arc<dyn Resolve>,
        tasks: &Shutdown,
        keys: Arc<dyn KeyResolver>,
    ) -> Result<Self, UplinkError> {
        let policy = TlsPolicy {
            min_version: settings.min_tls_version,
            stale_crl: settings.stale_crl,
        };
        let server_name = ServerName::try_from(settings.host.clone())
            .map_err(|_| UplinkError::HostName(settings.host.clone()))?;
        let bridge = Bridge::start(
            runtime_dir,
            Target {
                host: settings.host.clone(),
                port: settings.port,
                resolver,
                connect_timeout: settings.connect_timeout,
                tuning: SocketTuning {
                    // A backstop behind the drain loop's own stall detection.
                    user_timeout: settings.stall_timeout * 2,
                    // Longer than any silence of a healthy session (its pings come first).
                    keepalive_idle: settings.keep_alive + settings.stall_timeout,
                },
            },
            tasks,
        )?;
        if let UplinkTls::Psk { psk_file } = &settings.tls {
            let connector = psk::connector(Psk::read(psk_file)?, settings.min_tls_version)
                .map_err(UplinkError::Psk)?;
            bridge.set_tunnel(Tunnel::Psk(connector));
        }
        let mut connector = Self {
            policy,
            tls: settings.tls.clone(),
            crl_files: settings.crl_files.clone(),
            alpn: settings
                .alpn
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            server_name,
            bridge,
            crl_stamps: Vec::new(),
            crl_recheck_at: None,
            peer_chain: PeerChain::default(),
            keys,
            rotation: Rotation::default(),
            identity_stamps: Vec::new(),
        };
        // Fail at start on unreadable files, rather than at the first connection.
        connector.transport()?;
        Ok(connector)
    }

    /// Host, port and transport for rumqttc's next attempt: always our bridge's socket.
    pub(crate) fn transport(&mut self) -> Result<(String, u16, Transport), UplinkError> {
        let socket = (
            self.bridge.socket().display().to_string(),
            0,
            Transport::Unix,
        );
        if matches!(self.tls, UplinkTls::Psk { .. }) {
            return Ok(socket);
        }
        self.crl_stamps = self.crl_files.iter().map(|p| modified(p)).collect();
        self.identity_stamps = self.identity_files().iter().map(|p| modified(p)).collect();
        // Resolved for each attempt: a token that went away is retried, not fatal (and not
        // a reason to refuse a renewed certificate).
        let key = match &self.tls {
            UplinkTls::Mutual { key, .. } => Some(self.keys.resolve(key)?),
            _ => None,
        };
        let mut crls = Vec::new();
        self.crl_recheck_at = None;
        for path in self.crl_files.clone() {
            let read = read_crls(&path)?;
            self.review_crl(&path, &read);
            crls.extend(read);
        }
        let read = self.read_identity().map_err(|e| e.to_string());
        let verdict = match &read {
            Ok(on_disk) if self.rotation.differs_from_proven(on_disk) => {
                self.check_candidate(on_disk, key.clone(), &crls)
            }
            _ => Ok(()),
        };
        let identity = match self.rotation.choose(read, |_| verdict) {
            Some(identity) => identity,
            None => {
                // Nothing proven yet: the files as they are; their problems are this
                // attempt's.
                let identity = self.read_identity()?;
                self.rotation.start(identity.clone());
                identity
            }
        };
        let config = self.config_for(&identity, key, crls)?;
        self.bridge.set_tunnel(Tunnel::Rustls {
            config: Arc::new(config),
            name: self.server_name.clone(),
        });
        Ok(socket)
    }

    /// `cert_file` (mutual TLS) and `ca_file`, when set.
    fn identity_files(&self) -> Vec<PathBuf> {
        match &self.tls {
            UplinkTls::ServerAuth { ca_file } => ca_file.iter().cloned().collect(),
            UplinkTls::Mutual {
                ca_file, cert_file, ..
            } => std::iter::once(cert_file.clone())
                .chain(ca_file.iter().cloned())
                .collect(),
            UplinkTls::Psk { .. } => Vec::new(),
        }
    }

    /// What `cert_file` and `ca_file` hold now.
    fn read_identity(&self) -> Result<Identity, UplinkError> {
        let (ca_file, cert_file) = match &self.tls {
            UplinkTls::ServerAuth { ca_file } => (ca_file.as_deref(), None),
            UplinkTls::Mutual {
                ca_file, cert_file, ..
            } => (ca_file.as_deref(), Some(cert_file)),
            UplinkTls::Psk { .. } => (None, None),
        };
        Ok(Identity {
            chain: cert_file
                .map(|p| read_certs(p))
                .transpose()?
                .unwrap_or_default(),
            cas: ca_file.map(read_certs).transpose()?.unwrap_or_default(),
        })
    }

    /// Why renewed files cannot be tried: expired, a CA file without a CA, or a TLS
    /// configuration that cannot be built from them (a certificate that is not our key's).
    fn check_candidate(
        &self,
        candidate: &Identity,
        key: Option<Arc<dyn fieldlink_core::tls::KeySource>>,
        crls: &[CertificateRevocationListDer<'static>],
    ) -> Result<(), String> {
        let ca_file_set = match &self.tls {
            UplinkTls::ServerAuth { ca_file } | UplinkTls::Mutual { ca_file, .. } => {
                ca_file.is_some()
            }
            UplinkTls::Psk { .. } => false,
        };
        if let Some(problem) = candidate.problem(ca_file_set, SystemTime::now()) {
            return Err(problem);
        }
        self.config_for(candidate, key, crls.to_vec())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The TLS configuration for `identity` (our chain and the CAs) with our key.
    fn config_for(
        &self,
        identity: &Identity,
        key: Option<Arc<dyn fieldlink_core::tls::KeySource>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<rustls::ClientConfig, UplinkError> {
        let roots = if identity.cas.is_empty() {
            roots(None)?
        } else {
            let mut roots = RootCertStore::empty();
            for cert in &identity.cas {
                roots
                    .add(cert.clone())
                    .map_err(|source| UplinkError::CaCertificate {
                        path: self.ca_file().unwrap_or_default(),
                        source,
                    })?;
            }
            roots
        };
        let identity = key.map(|key| (identity.chain.clone(), key));
        Ok(self.policy.client_config_with(ClientTls {
            roots,
            crls,
            identity,
            alpn: self.alpn.clone(),
            peer_chain: Some(self.peer_chain.clone()),
        })?)
    }

    fn ca_file(&self) -> Option<PathBuf> {
        match &self.tls {
            UplinkTls::ServerAuth { ca_file } | UplinkTls::Mutual { ca_file, .. } => {
                ca_file.clone()
            }
            UplinkTls::Psk { .. } => None,
        }
    }

    /// Whether `cert_file` or `ca_file` changed since the last look into a candidate that
    /// passes the checks: worth a reconnect (at a quiet moment) to try it with the cloud. A
    /// candidate that fails them is refused here, without touching the session.
    pub(crate) fn renewed_identity(&mut self) -> bool {
        let stamps: Vec<_> = self.identity_files().iter().map(|p| modified(p)).collect();
        if stamps == self.identity_stamps {
            return false;
        }
        self.identity_stamps = stamps;
        let Ok(on_disk) = self.read_identity() else {
            return false; // half written, perhaps: looked at again at the next change
        };
        if !self.rotation.is_new(&on_disk) {
            return false;
        }
        let key = match &self.tls {
            UplinkTls::Mutual { key, .. } => match self.keys.resolve(key) {
                Ok(key) => Some(key),
                Err(_) => return false, // the token is away: the next attempt says so
            },
            _ => None,
        };
        let mut crls = Vec::new();
        for path in &self.crl_files {
            match read_crls(path) {
                Ok(read) => crls.extend(read),
                Err(_) => return false,
            }
        }
        match self.check_candidate(&on_disk, key, &crls) {
            Ok(()) => true,
            Err(why) => {
                self.rotation.refuse(on_disk, &why);
                false
            }
        }
    }

    /// Raises or clears `path`'s stale-CRL alarm and notes when to look again.
    fn review_crl(&mut self, path: &Path, crls: &[CertificateRevocationListDer<'_>]) {
        let next =
            fieldlink_core::crl::review(path, crls, self.policy.stale_crl, SystemTime::now());
        self.crl_recheck_at = match (self.crl_recheck_at, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Looks at the CRL files again once one of them has reached its nextUpdate. The live
    /// session stays: a stale CRL concerns new handshakes only.
    pub(crate) fn review_crls_when_due(&mut self) {
        if self.crl_recheck_at.is_none_or(|at| SystemTime::now() < at) {
            return;
        }
        self.crl_recheck_at = None;
        for path in self.crl_files.clone() {
            match read_crls(&path) {
                Ok(crls) => self.review_crl(&path, &crls),
                Err(e) => tracing::warn!(error = %e, "Cannot read a CRL file again"),
            }
        }
    }

    /// Whether a CRL file changed since the transport was built.
    pub(crate) fn crls_changed(&self) -> bool {
        self.crl_files
            .iter()
            .map(|p| modified(p))
            .ne(self.crl_stamps.iter().copied())
    }

    /// Certificates in use, for the expiry monitor.
    pub(crate) fn certificates(&self) -> Vec<(String, CertificateDer<'static>)> {
        let mut out = Vec::new();
        let (ca_file, cert_file) = match &self.tls {
            UplinkTls::ServerAuth { ca_file } => (ca_file, None),
            UplinkTls::Mutual {
                ca_file, cert_file, ..
            } => (ca_file, Some(cert_file)),
            UplinkTls::Psk { .. } => (&None, None),
        };
        if let Some(chain) = cert_file.and_then(|p| read_certs(p).ok()) {
            out.extend(
                chain
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| (chain_role("client", i), c)),
            );
        }
        let server_chain = self.peer_chain.latest();
        let anchor_subject = server_chain.last().and_then(expiry::issuer);
        out.extend(
            server_chain
                .into_iter()
                .enumerate()
                .map(|(i, c)| (chain_role("server", i), c)),
        );
        if let Some(cas) = ca_file.as_ref().and_then(|p| read_certs(p).ok()) {
            // A bundle of many CAs (a system-style bundle) is not ours to watch: only the CA
            // that anchors the server's chain is. A small trust file is watched whole until
            // the first handshake tells which one anchors.
            let watch_all = anchor_subject.is_none() && cas.len() <= SMALL_TRUST_FILE;
            out.extend(
                cas.into_iter()
                    .enumerate()
                    .filter(|(_, ca)| {
                        watch_all
                            || (anchor_subject.is_some() && expiry::subject(ca) == anchor_subject)
                    })
                    .map(|(i, c)| (format!("ca-{i}"), c)),
            );
        }
        out
    }

    /// Why the bridge could not connect, if it could not.
    pub(crate) fn take_link_error(&self) -> Option<bridge::LinkError> {
        self.bridge.take_error()
    }
}

/// Up to this many CAs in `uplink.ca_file` are all watched for expiry before the first
/// handshake.
const SMALL_TRUST_FILE: usize = 8;

/// "client", "client-chain-1", ...: the end entity, then the intermediates.
pub(crate) fn chain_role(side: &str, i: usize) -> String {
    if i == 0 {
        side.to_owned()
    } else {
        format!("{side}-chain-{i}")
    }
}

pub(crate) fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

pub(crate) fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, UplinkError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|source| UplinkError::CaCertificate {
                        path: path.to_owned(),
                        source,
                    })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(UplinkError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}
