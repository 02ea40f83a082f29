//! The site layer on disk: `<data dir>/config/site.toml`, replaced atomically, the versions
//! before it kept for a rollback.
//!
//! Writers (the CLI, the web UI) validate the merged result *before* calling
//! [`SiteStore::write`]; this module only makes the replacement safe: the new text is written
//! beside the file, synced and renamed over it (a power cut leaves the old version or the new,
//! never half of one), and the old version is first hard-linked into `history/` (so it is
//! never missing, not even for an instant). The last [`KEEP`] versions are kept.

use std::path::{Path, PathBuf};

use super::layers::{SITE_FORMAT, SITE_READABLE_FROM, SITE_TABLE};
use crate::private_fs;

/// How many earlier versions are kept.
pub const KEEP: usize = 10;

/// Why the site layer could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// A file or directory of the store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The directory could not be made private.
    #[error(transparent)]
    Private(#[from] private_fs::PrivateError),
    /// No kept version has that number.
    #[error(
        "no earlier site configuration numbered {0}; `fieldlink config history` lists those kept"
    )]
    NoSuchVersion(u64),
}

/// One kept version of the site layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Its number: higher is newer.
    pub number: u64,
    /// Its file.
    pub path: PathBuf,
    /// When it was replaced (its last change), seconds since the Unix epoch.
    pub modified: u64,
}

/// The site layer of one data directory.
#[derive(Debug, Clone)]
pub struct SiteStore {
    data_dir: PathBuf,
    dir: PathBuf,
}

impl SiteStore {
    /// The store in `data_dir` (nothing is created until the first write).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            dir: data_dir.join("config"),
        }
    }

    /// The site layer's file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("site.toml")
    }

    fn history_dir(&self) -> PathBuf {
        self.dir.join("history")
    }

    /// The site layer's text; `None` when there is none yet.
    pub fn read(&self) -> Result<Option<String>, SiteError> {
        let path = self.path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SiteError::Io { path, source }),
        }
    }

    /// Replaces the site layer with `text` (already validated by the caller), keeping the
    /// version it replaces.
    pub fn write(&self, text: &str) -> Result<(), SiteError> {
        private_fs::private_dir(&self.dir)?;
        self.give_to_data_dir_owner(&[&self.dir])?;
        let path = self.path();
        if path.exists() {
            let history = self.history_dir();
            private_fs::private_dir(&history)?;
            self.give_to_data_dir_owner(&[&history])?;
            let next = self.history()?.last().map_or(1, |v| v.number + 1);
            let kept = history.join(format!("site.{next}.toml"));
            std::fs::hard_link(&path, &kept).map_err(|source| SiteError::Io {
                path: kept.clone(),
                source,
            })?;
            sync_dir(&history)?;
        }
        // The new file takes its directory's owner (see `replace_atomically`).
        private_fs::replace_atomically(&path, text.as_bytes())
            .map_err(|source| SiteError::Io { path, source })?;
        self.prune()
    }

    /// An administrator runs the CLI as root, the service runs as its own user (systemd's
    /// `DynamicUser=`, which owns the data directory): what root writes here must belong to
    /// the data directory's owner, or the service could not read its own configuration.
    fn give_to_data_dir_owner(&self, dirs: &[&Path]) -> Result<(), SiteError> {
        use std::os::unix::fs::MetadataExt as _;
        let owner = std::fs::metadata(&self.data_dir).map_err(|source| SiteError::Io {
            path: self.data_dir.clone(),
            source,
        })?;
        for path in dirs {
            let meta = std::fs::metadata(path).map_err(|source| SiteError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            if (meta.uid(), meta.gid()) != (owner.uid(), owner.gid()) {
                std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid())).map_err(
                    |source| SiteError::Io {
                        path: path.to_path_buf(),
                        source,
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Where a proposed site layer is written aside while the gateway tries it (the web UI's
    /// apply): `site.toml` itself changes only once the proposal has passed its health check,
    /// so a crash or power cut during the trial starts the gateway on the previous version.
    pub fn trial_path(&self) -> PathBuf {
        self.dir.join("site.trial.toml")
    }

    /// Writes `text` aside as the layer on trial (see [`Self::trial_path`]).
    pub fn write_trial(&self, text: &str) -> Result<(), SiteError> {
        private_fs::private_dir(&self.dir)?;
        self.give_to_data_dir_owner(&[&self.dir])?;
        let path = self.trial_path();
        private_fs::replace_atomically(&path, text.as_bytes())
            .map_err(|source| SiteError::Io { path, source })
    }

    /// Removes the layer on trial, kept or rolled back.
    pub fn remove_trial(&self) -> Result<(), SiteError> {
        let path = self.trial_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SiteError::Io { path, source }),
        }
    }

    /// The kept versions, oldest first.
    pub fn history(&self) -> Result<Vec<Version>, SiteError> {
        let dir = self.history_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SiteError::Io { path: dir, source }),
        };
        let mut versions: Vec<Version> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let number = name
                    .to_str()?
                    .strip_prefix("site.")?
                    .strip_suffix(".toml")?
                    .parse()
                    .ok()?;
                let modified = entry
                    .metadata()
                    .ok()?
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_secs();
                Some(Version {
                    number,
                    path: entry.path(),
                    modified,
                })
            })
            .collect();
        versions.sort_by_key(|v| v.number);
        Ok(versions)
    }

    /// The text of kept version `number`.
    pub fn version(&self, number: u64) -> Result<String, SiteError> {
        let version = self
            .history()?
            .into_iter()
            .find(|v| v.number == number)
            .ok_or(SiteError::NoSuchVersion(number))?;
        std::fs::read_to_string(&version.path).map_err(|source| SiteError::Io {
            path: version.path,
            source,
        })
    }

    fn prune(&self) -> Result<(), SiteError> {
        let versions = self.history()?;
        let excess = versions.len().saturating_sub(KEEP);
        for old in &versions[..excess] {
            std::fs::remove_file(&old.path).map_err(|source| SiteError::Io {
                path: old.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Sets the `[site]` format record of a site layer about to be written: this release's
/// format, or the one already recorded when a newer release wrote the file (its additive keys
/// are kept as they are, so it can still read them after an update).
pub fn stamp(table: &mut toml::Table) {
    let recorded = |table: &toml::Table, key: &str| {
        table
            .get(SITE_TABLE)
            .and_then(|s| s.get(key))
            .and_then(toml::Value::as_integer)
    };
    let format = recorded(table, "format").map_or(SITE_FORMAT, |f| f.max(SITE_FORMAT));
    let readable_from =
        recorded(table, "readable_from").map_or(SITE_READABLE_FROM, |r| r.max(SITE_READABLE_FROM));
    let mut record = toml::Table::new();
    record.insert("format".into(), toml::Value::Integer(format));
    record.insert("readable_from".into(), toml::Value::Integer(readable_from));
    table.insert(SITE_TABLE.into(), toml::Value::Table(record));
}

fn sync_dir(dir: &Path) -> Result<(), SiteError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SiteError::Io {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_write_keeps_the_version_it_replaces_up_to_keep() {
        let dir = tempfile::tempdir().unwrap();
        let store = SiteStore::new(dir.path());
        assert_eq!(store.read().unwrap(), None);
        for i in 0..(KEEP + 3) {
            store.write(&format!("# version {i}\n")).unwrap();
        }
        assert_eq!(
            store.read().unwrap().as_deref(),
            Some(&*format!("# version {}\n", KEEP + 2))
        );
        let history = store.history().unwrap();
        assert_eq!(history.len(), KEEP);
        let newest = history.last().unwrap().number;
        assert_eq!(
            store.version(newest).unwrap(),
            format!("# version {}\n", KEEP + 1)
        );
        assert!(matches!(store.version(1), Err(SiteError::NoSuchVersion(1))));
    }

    #[test]
    fn a_layer_on_trial_leaves_the_site_layer_and_its_history_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SiteStore::new(dir.path());
        store.write("a = 1\n").unwrap();
        store.write_trial("a = 2\n").unwrap();
        assert_eq!(store.read().unwrap().as_deref(), Some("a = 1\n"));
        assert_eq!(
            std::fs::read_to_string(store.trial_path()).unwrap(),
            "a = 2\n"
        );
        assert!(store.history().unwrap().is_empty());
        store.remove_trial().unwrap();
        store.remove_trial().unwrap();
        assert!(!store.trial_path().exists());
    }

    #[test]
    fn the_store_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = SiteStore::new(dir.path());
        store.write("a = 1\n").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.path()), 0o600);
        assert_eq!(mode(&dir.path().join("config")), 0o700);
    }

    #[test]
    fn what_root_writes_belongs_to_the_service_that_owns_the_data_directory() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            eprintln!("needs root to give files away (CI runs as root)");
            return;
        }
        // The service's user owns its data directory (65534: nobody).
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let store = SiteStore::new(dir.path());
        store.write("a = 1\n").unwrap();
        store.write("a = 2\n").unwrap();
        for path in [store.path(), dir.path().join("config/history/site.1.toml")] {
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{path:?}");
        }
    }

    #[test]
    fn a_stamp_never_lowers_a_newer_release_s_record() {
        let mut newer: toml::Table = "[site]\nformat = 7\nreadable_from = 1\n[x]\ny = 1\n"
            .parse()
            .unwrap();
        stamp(&mut newer);
        assert_eq!(newer["site"]["format"].as_integer(), Some(7));
        assert_eq!(newer["site"]["readable_from"].as_integer(), Some(1));
        let mut fresh = toml::Table::new();
        stamp(&mut fresh);
        assert_eq!(fresh["site"]["format"].as_integer(), Some(SITE_FORMAT));
    }
}
