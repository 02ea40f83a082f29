//! What the agent keeps across restarts and reboots: the update in hand and where it is,
//! the slots as last seen. One JSON file in the download directory, replaced atomically
//! (temporary file, fsync, rename, fsync of the directory), so a power cut leaves the old or
//! the new state, never a torn one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rauc::Slot;
use crate::request::InstallRequest;

/// The state file's name in the download directory.
pub const STATE_FILE: &str = "state.json";

/// Where an update is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Fetching the bundle (resumed after a restart).
    Downloading,
    /// Verified, RAUC installing it (started again after a restart).
    Installing,
    /// In the other slot, which is primary now; the reboot waits for its window.
    Installed,
    /// The reboot was asked for.
    Rebooting,
    /// Booted into the new slot; the health check runs.
    Checking,
    /// The health check failed: the slot is marked bad, a reboot falls back.
    MarkedBad,
    /// Kept: the slot is marked good.
    Done,
    /// Refused or failed; nothing was installed.
    Failed,
    /// The previous slot is booted again.
    RolledBack,
}

impl Phase {
    /// Whether the update is over.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::RolledBack)
    }
}

/// One update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// What the cloud asked.
    pub request: InstallRequest,
    /// Where it is.
    pub phase: Phase,
    /// The slot booted when it was installed (the one to fall back to).
    pub from_slot: Option<String>,
    /// The version running when it was installed.
    pub from_version: Option<String>,
    /// The slot it was installed into.
    pub to_slot: Option<String>,
    /// The outcome in words (an error, or what happened).
    pub result: Option<String>,
    /// When it started, ms since the Unix epoch.
    pub started_ms: i64,
    /// When it ended, ms since the Unix epoch.
    pub finished_ms: Option<i64>,
    /// The boot in which the reboot into the new slot was asked for: a restart of fieldlink
    /// in the same boot finds the reboot still to do, not a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_asked_in: Option<String>,
    /// When the health check began: a restart of fieldlink in the same boot goes on with the
    /// same deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_began: Option<CheckBegan>,
}

/// When a health check began, on the boot clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckBegan {
    /// The boot's id.
    pub boot: String,
    /// Milliseconds since that boot.
    pub uptime_ms: u64,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The update in hand, or the last one.
    pub job: Option<Job>,
    /// The booted slot's bootname, as last seen.
    pub booted: Option<String>,
    /// Every slot, as last seen.
    #[serde(default)]
    pub slots: Vec<Slot>,
}

impl State {
    /// The running version: the booted slot's bundle version, as RAUC has it.
    pub fn running_version(&self) -> Option<&str> {
        let booted = self.booted.as_deref()?;
        self.slots
            .iter()
            .find(|s| s.bootname.as_deref() == Some(booted))
            .and_then(|s| s.version.as_deref())
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the OTA state file {path:?}: {problem}")]
pub struct StateError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub problem: String,
}

/// Reads the state in `dir`; an absent file is the empty state.
pub fn load(dir: &Path) -> Result<State, StateError> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError {
            path,
            problem: format!("unreadable ({e}); move it aside to start afresh"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(StateError {
            path,
            problem: e.to_string(),
        }),
    }
}

/// Replaces the state in `dir` atomically.
pub fn save(dir: &Path, state: &State) -> Result<(), StateError> {
    use std::io::Write as _;
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let err = |e: std::io::Error| StateError {
        path: path.clone(),
        problem: e.to_string(),
    };
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_written_before_the_boot_fields_is_read() {
        let old = r#"{"job":{"request":{"id":"r","url":"https://x/b.raucb","sha256":"00",
            "version":"1.0.0","not_before":null,"allow_downgrade":false},"phase":"rebooting",
            "from_slot":"A","from_version":null,"to_slot":"B","result":null,"started_ms":1,
            "finished_ms":null},"booted":"A","slots":[]}"#;
        let state: State = serde_json::from_str(old).unwrap();
        let job = state.job.unwrap();
        assert_eq!(job.phase, Phase::Rebooting);
        assert_eq!(job.reboot_asked_in, None);
        assert_eq!(job.check_began, None);
    }
}
