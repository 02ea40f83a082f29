//! RAUC, reached through its D-Bus API (`de.pengutronix.rauc.Installer` at `/`).
//!
//! The calls the agent makes: `Info` (the bundle's compatible and version; RAUC checks the
//! signature against its keyring there), `InstallBundle` (then the `Progress` property and
//! the `Completed` signal, `LastError` on failure), `GetSlotStatus` (which slot is booted,
//! which versions are installed), the `BootSlot` property, and `Mark("good" | "bad",
//! "booted")` after the health check.
//!
//! The shipped service's user may make these calls and no others: a new call needs its line in
//! `systemd/dbus/fieldlink.conf` (the D-Bus policy the packages install), or the installed
//! agent is refused it (`crates/fieldlink/tests/ota.rs` runs the agent under that policy).

use std::collections::HashMap;

use futures_util::StreamExt as _;
use zbus::zvariant::{OwnedValue, Value};

use crate::config::DbusBus;

#[zbus::proxy(
    interface = "de.pengutronix.rauc.Installer",
    default_service = "de.pengutronix.rauc",
    default_path = "/",
    gen_blocking = false
)]
trait Installer {
    /// Installs a bundle (a path or URL) with options.
    fn install_bundle(&self, source: &str, args: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    /// Marks a slot good, bad or active.
    fn mark(&self, state: &str, slot_identifier: &str) -> zbus::Result<(String, String)>;
    /// Every slot's status.
    fn get_slot_status(&self) -> zbus::Result<Vec<(String, HashMap<String, OwnedValue>)>>;
    /// A bundle's compatible and version (its signature checked).
    fn info(&self, bundle: &str) -> zbus::Result<(String, String)>;
    /// What RAUC is doing: "idle" or "installing".
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    /// The last install's error.
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    /// (percent, message, depth) of the running install.
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;
    /// The booted slot's bootname.
    #[zbus(property)]
    fn boot_slot(&self) -> zbus::Result<String>;
    /// An install ended: 0 on success.
    #[zbus(signal)]
    fn completed(&self, result: i32) -> zbus::Result<()>;
}

/// Why a RAUC call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaucError {
    /// The bus or the service cannot be reached.
    #[error("RAUC cannot be reached on D-Bus: {0}. Hint: is `rauc service` running?")]
    Unreachable(String),
    /// RAUC refused or failed; its words.
    #[error("{0}")]
    Refused(String),
}

impl From<zbus::Error> for RaucError {
    fn from(e: zbus::Error) -> Self {
        match e {
            // RAUC's own error replies carry its words ("signature verification failed…").
            zbus::Error::MethodError(_, Some(text), _) => Self::Refused(text),
            zbus::Error::MethodError(name, None, _) => Self::Refused(name.to_string()),
            other => Self::Unreachable(other.to_string()),
        }
    }
}

/// One slot as RAUC describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slot {
    /// RAUC's name, e.g. `rootfs.1`.
    pub name: String,
    /// The bootloader's name, e.g. `B`.
    pub bootname: Option<String>,
    /// `booted`, `active` or `inactive`.
    pub state: Option<String>,
    /// The version of the bundle last installed there.
    pub version: Option<String>,
    /// `good` or `bad`, as the bootloader has it.
    pub boot_status: Option<String>,
}

/// A connection to RAUC.
#[derive(Debug, Clone)]
pub struct Rauc {
    proxy: InstallerProxy<'static>,
    /// The same object without zbus' property cache: `LastError` and `BootSlot` read fresh
    /// (a cached `LastError` can still be the previous value when `Completed` arrives).
    fresh: InstallerProxy<'static>,
}

impl Rauc {
    /// Connects to RAUC on `bus`.
    pub async fn connect(bus: &DbusBus) -> Result<Self, RaucError> {
        let connection = match bus {
            DbusBus::System => zbus::Connection::system().await,
            DbusBus::Address(address) => {
                zbus::connection::Builder::address(address.as_str())?
                    .build()
                    .await
            }
        }
        .map_err(|e| RaucError::Unreachable(e.to_string()))?;
        let proxy = InstallerProxy::new(&connection).await?;
        let fresh = InstallerProxy::builder(&connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        Ok(Self { proxy, fresh })
    }

    /// The booted slot's bootname (`A`, `B`).
    pub async fn boot_slot(&self) -> Result<String, RaucError> {
        Ok(self.fresh.boot_slot().await?)
    }

    /// Every slot.
    pub async fn slots(&self) -> Result<Vec<Slot>, RaucError> {
        let text = |map: &HashMap<String, OwnedValue>, key: &str| {
            map.get(key)
                .and_then(|v| String::try_from(v.clone()).ok())
                .filter(|s| !s.is_empty())
        };
        Ok(self
            .proxy
            .get_slot_status()
            .await?
            .into_iter()
            .map(|(name, map)| Slot {
                bootname: text(&map, "bootname"),
                state: text(&map, "state"),
                version: text(&map, "bundle.version"),
                boot_status: text(&map, "boot-status"),
                name,
            })
            .collect())
    }

    /// The bundle's (compatible, version); RAUC checks its signature first.
    pub async fn info(&self, bundle: &str) -> Result<(String, String), RaucError> {
        Ok(self.proxy.info(bundle).await?)
    }

    /// Installs `bundle`, calling `progress(percent, message)` as RAUC reports; `Ok` when
    /// RAUC's `Completed` says 0, else RAUC's `LastError`.
    pub async fn install(
        &self,
        bundle: &str,
        mut progress: impl FnMut(i32, String),
    ) -> Result<(), RaucError> {
        // Subscribed before the call, so that a quick install's signal is not missed.
        let mut completed = self.proxy.receive_completed().await?;
        let mut changes = self.proxy.receive_progress_changed().await;
        self.proxy.install_bundle(bundle, HashMap::new()).await?;
        loop {
            tokio::select! {
                signal = completed.next() => {
                    let Some(signal) = signal else {
                        return Err(RaucError::Unreachable("RAUC left the bus during the install".into()));
                    };
                    let result = signal.args()?.result;
                    if result == 0 {
                        return Ok(());
                    }
                    let error = self.fresh.last_error().await.unwrap_or_default();
                    return Err(RaucError::Refused(if error.is_empty() {
                        format!("the install failed (RAUC result {result})")
                    } else {
                        error
                    }));
                }
                Some(change) = changes.next() => {
                    if let Ok((percent, message, _)) = change.get().await {
                        progress(percent, message);
                    }
                }
            }
        }
    }

    /// Marks the booted slot `good` or `bad`; RAUC's message.
    pub async fn mark_booted(&self, state: &str) -> Result<String, RaucError> {
        let (_, message) = self.proxy.mark(state, "booted").await?;
        Ok(message)
    }
}
