//! Files and directories that only the service user may read, whatever the umask.
//!
//! The queue holds every payload bound for the cloud, so its directory is 0700 and its files
//! 0600, set explicitly: a umask of 022 (the usual default) or a data directory someone made
//! 0755 by hand must not leave them world-readable. An existing directory or file that others
//! can read is tightened; one we may not change is refused with what to do.
//!
//! Secret files the operator gives us (PSKs, a token's PIN, a cloud password or signing key)
//! are never changed, only checked: [`read_secret_file`].

use std::fs::Permissions;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Mode bits for the group and others.
const OTHERS: u32 = 0o077;

/// Why a path could not be made private.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// It could not be created or inspected (the environment: a missing parent, a read-only
    /// file system).
    #[error("{path}: cannot create or inspect it: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Others can read it and we may not change that (the operator's setup).
    #[error(
        "{path} is readable by other users (mode {mode:o}) and fieldlink may not change that: \
         {source}. Hint: `chmod go= {path}` as its owner, or use a directory of the service's own"
    )]
    TooOpen {
        /// The path.
        path: PathBuf,
        /// Its mode.
        mode: u32,
        /// Why chmod failed.
        source: std::io::Error,
    },
}

impl PrivateError {
    /// Whose fault it is: a path that cannot be created is the environment's; one left open to
    /// others that fieldlink may not tighten is the operator's setup.
    pub fn fault(&self) -> crate::fault::Fault {
        match self {
            Self::Io { .. } => crate::fault::Fault::Environment,
            Self::TooOpen { .. } => crate::fault::Fault::Config,
        }
    }
}

/// What [`private_dir`] or [`private_file`] did to an existing path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was created, or was private already.
    Private,
    /// Others could read it: the mode shown was tightened.
    Tightened {
        /// The mode it had.
        from: u32,
    },
}

/// Creates `dir` (and missing parents) as 0700, or tightens an existing one that others can
/// read. Parents that exist are left as they are.
pub fn private_dir(dir: &Path) -> Result<Outcome, PrivateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PrivateError::Io {
            path: dir.to_owned(),
            source,
        })?;
    tighten(dir, 0o700)
}

/// [`private_dir`] for a directory inside the data directory: a new one is given its parent's
/// owner, so that one made by an administrator's command as root stays the service's.
pub fn private_subdir(dir: &Path) -> Result<Outcome, PrivateError> {
    use std::os::unix::fs::MetadataExt as _;
    let existed = dir.exists();
    let outcome = private_dir(dir)?;
    if !existed && let Some(parent) = dir.parent() {
        let give = |source| PrivateError::Io {
            path: dir.to_owned(),
            source,
        };
        let owner = std::fs::metadata(parent).map_err(give)?;
        match std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid())) {
            // Only root may give a directory away; anyone else keeps it as their own.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            other => other.map_err(give)?,
        }
    }
    Ok(outcome)
}

/// Creates the file `path` as 0600 if it does not exist, or tightens it if others can read it.
pub fn private_file(path: &Path) -> Result<Outcome, PrivateError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(Outcome::Private),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => tighten(path, 0o600),
        Err(source) => Err(PrivateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Tightens `path` if it exists and others can read it; nothing if it does not exist.
pub fn tighten_if_present(path: &Path) -> Result<Outcome, PrivateError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(Outcome::Private);
    }
    tighten(path, 0o600)
}

/// Replaces `path` with `bytes` as a 0600 file so that a reader, a crash or a power cut sees
/// the old content or the new one, never half of it: written to a temporary file beside it,
/// synced, renamed over it, and the directory synced (the rename's own durability).
///
/// The file keeps the owner of the file it replaces, and a new file gets its directory's: an
/// administrator edits as root what the service (its own user) must go on reading.
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` is masked by the umask and ignored for an existing file: set it outright.
        file.set_permissions(Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        let owner = std::fs::metadata(path).or_else(|_| std::fs::metadata(&dir))?;
        let mine = file.metadata()?;
        if (owner.uid(), owner.gid()) != (mine.uid(), mine.gid()) {
            match std::os::unix::fs::fchown(&file, Some(owner.uid()), Some(owner.gid())) {
                // Only root may give a file away; anyone else writes it as their own.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                other => other?,
            }
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn tighten(path: &Path, private: u32) -> Result<Outcome, PrivateError> {
    let mode = std::fs::metadata(path)
        .map_err(|source| PrivateError::Io {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & OTHERS == 0 {
        return Ok(Outcome::Private);
    }
    std::fs::set_permissions(path, Permissions::from_mode(private)).map_err(|source| {
        PrivateError::TooOpen {
            path: path.to_owned(),
            mode,
            source,
        }
    })?;
    Ok(Outcome::Tightened { from: mode })
}

/// Why a secret file cannot be used. What it holds never appears here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// Missing, or the service user may not read it.
    #[error("cannot read it: {0}")]
    Unreadable(std::io::Error),
    /// Others may read it: the secret may be known already.
    #[error("it is readable by other users")]
    OpenToOthers,
}

impl SecretFileError {
    /// What the operator should do.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "check the path and that the service user may read it",
            Self::OpenToOthers => {
                "chmod 600 it: it holds a secret (or hand it over as a systemd credential)"
            }
        }
    }
}

/// Checks that the secret file `path` is readable by its owner only, unless systemd handed it
/// over as a credential (under `$CREDENTIALS_DIRECTORY`, which systemd itself keeps private).
pub fn check_secret_file(path: &Path) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(SecretFileError::Unreadable)?;
    if meta.permissions().mode() & OTHERS != 0 && !from_systemd_credentials(path) {
        return Err(SecretFileError::OpenToOthers);
    }
    Ok(())
}

/// The bytes of the secret file `path`, after [`check_secret_file`]; wiped when dropped.
pub fn read_secret_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, SecretFileError> {
    check_secret_file(path)?;
    std::fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(SecretFileError::Unreadable)
}

fn from_systemd_credentials(path: &Path) -> bool {
    under_credentials(path, std::env::var_os("CREDENTIALS_DIRECTORY").as_deref())
}

/// Whether `path` names a file inside the credentials directory `dir`: a `..` anywhere in it
/// could lead out of the directory while still starting with it, so such a path is judged as
/// any other file.
fn under_credentials(path: &Path, dir: Option<&std::ffi::OsStr>) -> bool {
    dir.is_some_and(|dir| {
        !dir.is_empty()
            && path.starts_with(dir)
            && !path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_only_when_others_cannot_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"s3cret\n").unwrap();
        std::fs::set_permissions(&secret, Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&read_secret_file(&secret).unwrap()[..], b"s3cret\n");
        std::fs::set_permissions(&secret, Permissions::from_mode(0o640)).unwrap();
        let open = read_secret_file(&secret).unwrap_err();
        assert!(matches!(open, SecretFileError::OpenToOthers), "{open}");
        assert!(open.hint().contains("chmod 600"));
        assert!(!open.to_string().contains("s3cret"));
        let missing = read_secret_file(&dir.path().join("none")).unwrap_err();
        assert!(
            matches!(missing, SecretFileError::Unreadable(_)),
            "{missing}"
        );
    }

    #[test]
    fn only_a_file_inside_the_credentials_directory_is_a_credential() {
        let dir = Some(std::ffi::OsStr::new("/run/credentials/fieldlink.service"));
        let inside = Path::new("/run/credentials/fieldlink.service/token-pin");
        assert!(under_credentials(inside, dir));
        for outside in [
            "/run/credentials/fieldlink.service/../other.service/token-pin",
            "/run/credentials/fieldlink.service/../../../etc/fieldlink/token.pin",
            "/run/credentials/fieldlink.serviceX/token-pin",
            "/etc/fieldlink/token.pin",
        ] {
            assert!(!under_credentials(Path::new(outside), dir), "{outside}");
        }
        assert!(!under_credentials(inside, None));
        assert!(!under_credentials(inside, Some(std::ffi::OsStr::new(""))));
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_replaced_file_keeps_its_owner_and_a_new_one_gets_its_directory_s() {
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            eprintln!("needs root to give files away (CI runs as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let owner = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let new = dir.path().join("new");
        replace_atomically(&new, b"1").unwrap();
        assert_eq!(owner(&new), (65534, 65534));
        let kept = dir.path().join("kept");
        std::fs::write(&kept, b"0").unwrap();
        std::os::unix::fs::chown(&kept, Some(1), Some(1)).unwrap();
        replace_atomically(&kept, b"1").unwrap();
        assert_eq!(owner(&kept), (1, 1));
        assert_eq!(mode(&kept), 0o600);
    }

    #[test]
    fn new_paths_are_private_and_open_ones_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        assert_eq!(private_dir(&dir).unwrap(), Outcome::Private);
        assert_eq!(mode(&dir), 0o700);

        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            private_dir(&dir).unwrap(),
            Outcome::Tightened { from: 0o755 }
        );
        assert_eq!(mode(&dir), 0o700);

        let file = dir.join("queue.db");
        assert_eq!(private_file(&file).unwrap(), Outcome::Private);
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            private_file(&file).unwrap(),
            Outcome::Tightened { from: 0o644 }
        );
        assert_eq!(mode(&file), 0o600);

        let absent = dir.join("queue.db-wal");
        assert_eq!(tighten_if_present(&absent).unwrap(), Outcome::Private);
        assert!(!absent.exists(), "not created");
    }
}
