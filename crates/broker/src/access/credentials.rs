//! The credentials file: one `name:<argon2 PHC string>[:group1,group2]` per line, `#` comments
//! and blank lines allowed, mode 0600. Read by the broker, written by `fieldlink credentials`.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use fieldlink_core::password::{self, Hash as PasswordHash};

/// Why the credentials file cannot be read or written. Messages name the file (and line) and
/// never show a hash or a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The file cannot be read or its metadata cannot be had (the operator's to fix).
    #[error("cannot read the credentials file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Group or others may read or write the file (the operator's to fix).
    #[error(
        "the credentials file {path:?} is accessible to group or others (mode {mode:04o}). \
         Hint: chmod 600 {path:?}"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not `name:hash[:groups]` or its hash is unusable (the operator's to fix).
    #[error("{path:?} line {line}: {problem}. Hint: {hint}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong (never the hash itself).
        problem: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A name or group cannot be stored in the file (the caller's mistake).
    #[error("{what} {value:?} cannot be stored. Hint: {hint}")]
    InvalidName {
        /// `"user name"` or `"group"`.
        what: &'static str,
        /// The name.
        value: String,
        /// What is allowed.
        hint: &'static str,
    },
    /// Hashing a new password failed (the system's randomness, or a bug of ours).
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The file cannot be written (the operator's to fix).
    #[error("cannot write the credentials file {path:?}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The users of the credentials file: name, password hash and groups.
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<String, User>,
}

#[derive(Clone)]
struct User {
    hash: PasswordHash,
    groups: Vec<String>,
}

impl fmt::Debug for Credentials {
    /// Names and groups only: hashes are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.users.iter().collect();
        names.sort_by_key(|(name, _)| name.as_str());
        f.debug_map()
            .entries(names.iter().map(|(name, u)| (name, &u.groups)))
            .finish()
    }
}

impl Credentials {
    /// Reads the file at `path`, refusing it when group or others may access it.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let (text, _) = read_checked(path)?;
        Self::parse(&text, path)
    }

    /// Parses the text of a credentials file; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CredentialsError> {
        let mut users: HashMap<String, (usize, User)> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let Some(entry) =
                parse_line(line).map_err(|(problem, hint)| CredentialsError::Line {
                    path: path.to_owned(),
                    line: n,
                    problem,
                    hint,
                })?
            else {
                continue;
            };
            if let Some((first, _)) = users.get(entry.name) {
                return Err(CredentialsError::Line {
                    path: path.to_owned(),
                    line: n,
                    problem: format!("user {:?} is already defined on line {first}", entry.name),
                    hint: "keep one line per user (fieldlink credentials add replaces it)",
                });
            }
            users.insert(
                entry.name.to_owned(),
                (
                    n,
                    User {
                        hash: entry.hash,
                        groups: entry.groups,
                    },
                ),
            );
        }
        Ok(Self {
            users: users.into_iter().map(|(k, (_, u))| (k, u)).collect(),
        })
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there is no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `name` is a user.
    pub fn contains(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// The groups of `name`; `None` when `name` is not a user.
    pub fn groups(&self, name: &str) -> Option<&[String]> {
        self.users.get(name).map(|u| u.groups.as_slice())
    }

    /// Whether `password` is `name`'s. Blocking: argon2 takes tens to hundreds of
    /// milliseconds; the broker calls it through [`super::Access::check_password`].
    pub fn verify(&self, name: &str, password: &[u8]) -> bool {
        self.users
            .get(name)
            .is_some_and(|u| verify_hash(&u.hash, password))
    }

    pub(super) fn hash_of(&self, name: &str) -> Option<&PasswordHash> {
        self.users.get(name).map(|u| &u.hash)
    }
}

/// Hashes `password` into a PHC string with fieldlink's parameters
/// ([`fieldlink_core::password::HASH_PARAMS`]) and a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, CredentialsError> {
    password::hash_password(password).map_err(|e| CredentialsError::Hash(e.to_string()))
}

/// Sets `name`'s password and groups in the file at `path`: its line is replaced (where it was)
/// or appended; every other line, comments included, is kept. The file is created with mode
/// 0600 when missing, and replaced atomically (temporary file, fsync, rename).
pub fn set_user(
    path: &Path,
    name: &str,
    password: &[u8],
    groups: &[String],
) -> Result<(), CredentialsError> {
    check_name(name)?;
    for group in groups {
        check_group(group)?;
    }
    let text = read_existing(path)?;
    let mut line = format!("{name}:{}", hash_password(password)?);
    if !groups.is_empty() {
        line.push(':');
        line.push_str(&groups.join(","));
    }
    let mut lines: Vec<String> = Vec::new();
    let mut replaced = false;
    for old in text.lines() {
        if line_name(old) == Some(name) {
            if !replaced {
                lines.push(line.clone());
                replaced = true;
            }
        } else {
            lines.push(old.to_owned());
        }
    }
    if !replaced {
        lines.push(line);
    }
    write_atomically(path, &lines)
}

/// Removes `name`'s line from the file at `path`; `Ok(false)` when there was none.
pub fn remove_user(path: &Path, name: &str) -> Result<bool, CredentialsError> {
    let text = read_existing(path)?;
    let before = text.lines().count();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| line_name(l) != Some(name))
        .map(str::to_owned)
        .collect();
    if lines.len() == before {
        return Ok(false);
    }
    write_atomically(path, &lines)?;
    Ok(true)
}

pub(super) fn verify_hash(hash: &PasswordHash, password: &[u8]) -> bool {
    password::verify(hash, password)
}

struct Entry<'a> {
    name: &'a str,
    hash: PasswordHash,
    groups: Vec<String>,
}

/// One line: `Ok(None)` for a comment or a blank line. Errors never contain the hash.
fn parse_line(line: &str) -> Result<Option<Entry<'_>>, (String, &'static str)> {
    const FORMAT: &str = "write name:<argon2 PHC string>[:group1,group2], e.g. with \
                          `fieldlink credentials add NAME`";
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let mut fields = trimmed.splitn(3, ':');
    let name = fields.next().unwrap_or_default();
    let Some(hash) = fields.next() else {
        return Err(("expected name:hash, found no ':'".into(), FORMAT));
    };
    let groups = fields.next();
    if let Err(CredentialsError::InvalidName { hint, .. }) = check_name(name) {
        return Err((format!("the user name {name:?} is not valid"), hint));
    }
    let hash = password::parse_hash(hash).map_err(|problem| {
        (
            format!("the password hash of {name:?}: {problem}"),
            "set the password again with `fieldlink credentials add NAME`",
        )
    })?;
    let mut group_list = Vec::new();
    for group in groups.unwrap_or_default().split(',') {
        let group = group.trim();
        if group.is_empty() {
            continue;
        }
        if let Err(CredentialsError::InvalidName { hint, .. }) = check_group(group) {
            return Err((
                format!("the group {group:?} of {name:?} is not valid"),
                hint,
            ));
        }
        group_list.push(group.to_owned());
    }
    Ok(Some(Entry {
        name,
        hash,
        groups: group_list,
    }))
}

/// The user name on a line, if it is a user line.
fn line_name(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    trimmed.split(':').next()
}

fn check_name(name: &str) -> Result<(), CredentialsError> {
    let bad = name.is_empty()
        || name.starts_with('#')
        || name.contains(|ch: char| ch == ':' || ch.is_whitespace() || ch.is_control());
    if bad {
        return Err(CredentialsError::InvalidName {
            what: "user name",
            value: name.to_owned(),
            hint: "use a non-empty name without ':', spaces or control characters, not \
                   starting with '#'",
        });
    }
    Ok(())
}

fn check_group(group: &str) -> Result<(), CredentialsError> {
    let bad = group.is_empty()
        || group
            .contains(|ch: char| ch == ':' || ch == ',' || ch.is_whitespace() || ch.is_control());
    if bad {
        return Err(CredentialsError::InvalidName {
            what: "group",
            value: group.to_owned(),
            hint: "use a non-empty group name without ',', ':', spaces or control characters",
        });
    }
    Ok(())
}

/// What identifies one version of the file: a rewrite (rename) changes the inode, an edit in
/// place the mtime or the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
}

pub(super) fn stamp(path: &Path) -> Result<Stamp, CredentialsError> {
    let meta = std::fs::metadata(path).map_err(|source| CredentialsError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Stamp {
        ino: meta.ino(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        len: meta.len(),
    })
}

/// Reads the file after checking its mode; returns its text and its stamp.
pub(super) fn read_checked(path: &Path) -> Result<(String, Stamp), CredentialsError> {
    let read_error = |source| CredentialsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CredentialsError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::io::read_to_string(file).map_err(read_error)?;
    let stamp = Stamp {
        ino: meta.ino(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        len: meta.len(),
    };
    Ok((text, stamp))
}

/// The file's text for editing: empty when it does not exist yet; it must parse, so that an
/// edit never hides a broken line.
fn read_existing(path: &Path) -> Result<String, CredentialsError> {
    match read_checked(path) {
        Ok((text, _)) => {
            Credentials::parse(&text, path)?;
            Ok(text)
        }
        Err(CredentialsError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(String::new())
        }
        Err(e) => Err(e),
    }
}

fn write_atomically(path: &Path, lines: &[String]) -> Result<(), CredentialsError> {
    let mut text = lines.join("\n");
    text.push('\n');
    fieldlink_core::private_fs::replace_atomically(path, text.as_bytes()).map_err(|source| {
        CredentialsError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordHasher as _;
    use argon2::{Algorithm, Argon2, Params, Version};

    fn path() -> PathBuf {
        PathBuf::from("/etc/fieldlink/credentials")
    }

    /// A hash made with cheap parameters, so that tests stay fast.
    pub(crate) fn cheap_hash(password: &[u8]) -> String {
        let params = Params::new(64, 1, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_with_salt(password, b"saltsaltsaltsalt")
            .unwrap()
            .to_string()
    }

    fn line_error(text: &str) -> (usize, String) {
        match Credentials::parse(text, &path()) {
            Err(e @ CredentialsError::Line { line, .. }) => (line, e.to_string()),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn comments_blank_lines_and_groups_are_read() {
        let text = format!(
            "# site users\n\n  \nalice:{}:ops,sensors\n  # bob left\nbob:{}\ncarol:{}:\n",
            cheap_hash(b"a"),
            cheap_hash(b"b"),
            cheap_hash(b"c")
        );
        let creds = Credentials::parse(&text, &path()).unwrap();
        assert_eq!(creds.len(), 3);
        assert_eq!(
            creds.groups("alice").unwrap(),
            ["ops".to_owned(), "sensors".to_owned()]
        );
        assert!(creds.groups("bob").unwrap().is_empty());
        assert!(creds.groups("carol").unwrap().is_empty());
        assert!(creds.groups("dave").is_none());
        assert!(creds.verify("alice", b"a"));
        assert!(!creds.verify("alice", b"b"));
        assert!(!creds.verify("dave", b"a"));
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_without_the_hash() {
        let good = cheap_hash(b"pw");
        let cases = [
            (format!("# c\nalice {good}\n"), 2, "no ':'"),
            (format!("alice:{good}\n:{good}\n"), 2, "user name \"\""),
            ("\n\nalice:plaintext-password\n".to_owned(), 3, "not a valid PHC string"),
            (
                format!("alice:{good}\n\nalice:{good}\n"),
                3,
                "already defined on line 1",
            ),
            (
                format!("alice:{good}:ops team\n"),
                1,
                "group \"ops team\"",
            ),
            (
                "alice:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
                    .to_owned(),
                1,
                "not an argon2id hash",
            ),
            (
                format!(
                    "alice:{}\n",
                    good.replace("m=64,", "m=4194304,")
                ),
                1,
                "more than 256 MiB",
            ),
        ];
        for (text, line, words) in cases {
            let (n, shown) = line_error(&text);
            assert_eq!(n, line, "{shown}");
            assert!(shown.contains(words), "{shown} lacks {words:?}");
            assert!(shown.contains("/etc/fieldlink/credentials"), "{shown}");
            assert!(shown.contains("Hint:"), "{shown}");
            assert!(!shown.contains("plaintext-password"), "{shown}");
            assert!(!shown.contains("$argon2"), "{shown}");
            assert!(!shown.contains("$pbkdf2"), "{shown}");
        }
    }

    #[test]
    fn debug_never_shows_hashes() {
        let creds =
            Credentials::parse(&format!("alice:{}:ops\n", cheap_hash(b"pw")), &path()).unwrap();
        let shown = format!("{creds:?}");
        assert!(shown.contains("alice") && shown.contains("ops"), "{shown}");
        assert!(!shown.contains("argon2"), "{shown}");
    }

    #[test]
    fn a_file_others_may_read_is_refused_with_a_chmod_hint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(&file, format!("alice:{}\n", cheap_hash(b"pw"))).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Credentials::load(&file).unwrap_err();
            assert!(matches!(e, CredentialsError::Permissions { .. }), "{e:?}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Credentials::load(&file).unwrap().contains("alice"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Credentials::load(&file).unwrap().contains("alice"));
    }

    #[test]
    fn set_and_remove_keep_other_lines_and_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(&file, format!("# keep me\nbob:{}\n", cheap_hash(b"b"))).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        set_user(&file, "alice", b"first", &["ops".into()]).unwrap();
        set_user(&file, "alice", b"second", &[]).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# keep me\nbob:"), "{text}");
        assert_eq!(text.matches("alice:").count(), 1, "{text}");
        let creds = Credentials::load(&file).unwrap();
        assert!(creds.verify("alice", b"second"));
        assert!(!creds.verify("alice", b"first"));
        assert!(creds.groups("alice").unwrap().is_empty());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(remove_user(&file, "alice").unwrap());
        assert!(!remove_user(&file, "alice").unwrap());
        let creds = Credentials::load(&file).unwrap();
        assert!(!creds.contains("alice") && creds.contains("bob"));
        assert!(matches!(
            set_user(&file, "a:b", b"x", &[]),
            Err(CredentialsError::InvalidName { .. })
        ));
        assert!(matches!(
            set_user(&file, "a", b"x", &["a,b".into()]),
            Err(CredentialsError::InvalidName { .. })
        ));
    }

    #[test]
    fn a_new_file_is_created_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("new-credentials");
        set_user(&file, "alice", b"pw", &["ops".into(), "night".into()]).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"),
            "{text}"
        );
        assert!(text.trim_end().ends_with(":ops,night"), "{text}");
    }
}
