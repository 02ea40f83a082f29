//! The web UI's accounts: one `name:role:<argon2id PHC string>` per line in a 0600 file in the
//! data directory (`web/users`), written by `fieldlink users` and by the UI's users page, read
//! again by the running UI when it changes.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use fieldlink_core::password::{self, Hash};

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees everything, changes nothing.
    Viewer,
    /// Sees and changes everything.
    Admin,
}

impl Role {
    /// The word in the file and on the pages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Admin => "admin",
        }
    }

    /// `admin` or `viewer`.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "admin" => Some(Self::Admin),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }
}

/// Why the accounts file cannot be read or written. Messages name the file (and line) and
/// never show a hash or a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// The file cannot be read or written.
    #[error("cannot {action} the web UI's accounts file {path:?}: {source}")]
    Io {
        /// `"read"` or `"write"`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Group or others may read or write the file.
    #[error(
        "the web UI's accounts file {path:?} is accessible to group or others (mode \
         {mode:04o}). Hint: chmod 600 {path:?}"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not `name:role:hash`.
    #[error(
        "{path:?} line {line}: {problem}. Hint: set the account again with `fieldlink users add`"
    )]
    Line {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong (never the hash).
        problem: String,
    },
    /// A name that cannot be an account's.
    #[error("{0:?} cannot be an account name. Hint: use 1-64 letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    /// No such account.
    #[error("there is no account {0:?}")]
    NoSuchUser(String),
    /// The last admin cannot be removed or demoted: nobody could manage the UI any more.
    #[error("{0:?} is the last admin. Hint: make another admin first")]
    LastAdmin(String),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] password::HashError),
}

#[derive(Debug, Clone)]
struct Account {
    role: Role,
    hash: Hash,
}

/// The accounts, as read from the file.
#[derive(Debug, Clone, Default)]
pub struct Users {
    accounts: BTreeMap<String, Account>,
}

impl Users {
    /// Reads the file; no file means no accounts yet.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(UsersError::Io {
                    action: "read",
                    path: path.to_owned(),
                    source,
                });
            }
        };
        check_mode(path)?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, UsersError> {
        let mut accounts = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let bad = |problem: String| UsersError::Line {
                path: path.to_owned(),
                line: index + 1,
                problem,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let (Some(name), Some(role), Some(phc)) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected name:role:hash".into()));
            };
            if !valid_name(name) {
                return Err(bad(format!("the account name {name:?} is not valid")));
            }
            let role = Role::parse(role)
                .ok_or_else(|| bad(format!("the role of {name:?} is neither admin nor viewer")))?;
            let hash = password::parse_hash(phc)
                .map_err(|problem| bad(format!("the password hash of {name:?}: {problem}")))?;
            if accounts
                .insert(name.to_owned(), Account { role, hash })
                .is_some()
            {
                return Err(bad(format!("{name:?} is defined twice")));
            }
        }
        Ok(Self { accounts })
    }

    /// Whether there is no account yet (the UI then takes the one-time setup token).
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// The role of `name`, if it is an account.
    pub fn role(&self, name: &str) -> Option<Role> {
        self.accounts.get(name).map(|a| a.role)
    }

    /// Every account and its role, by name.
    pub fn list(&self) -> Vec<(String, Role)> {
        self.accounts
            .iter()
            .map(|(n, a)| (n.clone(), a.role))
            .collect()
    }

    /// The role of `name` if `password` is its own. Blocking: argon2 takes tens to hundreds
    /// of milliseconds, and costs the same for a name that is no account.
    pub fn verify(&self, name: &str, password: &[u8]) -> Option<Role> {
        match self.accounts.get(name) {
            Some(account) => password::verify(&account.hash, password).then_some(account.role),
            None => {
                password::verify_unknown_user(password);
                None
            }
        }
    }

    fn render(&self) -> String {
        let mut text = String::from(
            "# fieldlink web UI accounts: name:role:argon2id hash. Edit with `fieldlink users`.\n",
        );
        for (name, account) in &self.accounts {
            text.push_str(&format!(
                "{name}:{}:{}\n",
                account.role.as_str(),
                account.hash
            ));
        }
        text
    }

    fn admins(&self) -> usize {
        self.accounts
            .values()
            .filter(|a| a.role == Role::Admin)
            .count()
    }
}

/// Sets `name`'s role and password (adding the account or replacing it) in the file at
/// `path`, created 0600 when missing and replaced atomically. Refuses to demote the last admin.
pub fn set_user(path: &Path, name: &str, role: Role, password: &[u8]) -> Result<(), UsersError> {
    if !valid_name(name) {
        return Err(UsersError::InvalidName(name.to_owned()));
    }
    let mut users = Users::load(path)?;
    if role != Role::Admin && users.role(name) == Some(Role::Admin) && users.admins() == 1 {
        return Err(UsersError::LastAdmin(name.to_owned()));
    }
    let phc = password::hash_password(password)?;
    let hash = password::parse_hash(&phc).map_err(|problem| UsersError::Line {
        path: path.to_owned(),
        line: 0,
        problem: problem.to_owned(),
    })?;
    users
        .accounts
        .insert(name.to_owned(), Account { role, hash });
    write(path, &users)
}

/// Removes `name` from the file at `path`. Refuses to remove the last admin.
pub fn remove_user(path: &Path, name: &str) -> Result<(), UsersError> {
    let mut users = Users::load(path)?;
    match users.role(name) {
        None => return Err(UsersError::NoSuchUser(name.to_owned())),
        Some(Role::Admin) if users.admins() == 1 => {
            return Err(UsersError::LastAdmin(name.to_owned()));
        }
        Some(_) => {}
    }
    users.accounts.remove(name);
    write(path, &users)
}

fn write(path: &Path, users: &Users) -> Result<(), UsersError> {
    let io = |source| UsersError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fieldlink_core::private_fs::private_subdir(dir)
            .map_err(|e| io(std::io::Error::other(e)))?;
    }
    fieldlink_core::private_fs::replace_atomically(path, users.render().as_bytes()).map_err(io)
}

fn check_mode(path: &Path) -> Result<(), UsersError> {
    let meta = std::fs::metadata(path).map_err(|source| UsersError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(UsersError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The accounts file as the running UI sees it: read again whenever it changed on disk (an
/// edit by `fieldlink users` takes effect at the next request, a removed account's sessions
/// end with it).
#[derive(Debug)]
pub struct Accounts {
    path: PathBuf,
    cached: Mutex<(Stamp, std::sync::Arc<Users>)>,
}

impl Accounts {
    /// The accounts in the file at `path`; fails when the file is unreadable or malformed.
    pub fn open(path: PathBuf) -> Result<Self, UsersError> {
        let users = Users::load(&path)?;
        Ok(Self {
            cached: Mutex::new((stamp(&path), std::sync::Arc::new(users))),
            path,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The accounts now. A file that became unreadable or malformed keeps the last good
    /// accounts (and says so in the log) rather than locking everyone out.
    pub fn current(&self) -> std::sync::Arc<Users> {
        let now = stamp(&self.path);
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.0 != now {
            match Users::load(&self.path) {
                Ok(users) => *cached = (now, std::sync::Arc::new(users)),
                Err(e) => {
                    tracing::error!("{e}; the accounts read before stay in use");
                    cached.0 = now;
                }
            }
        }
        cached.1.clone()
    }
}

/// When the file was written and its inode: a change of either means it was rewritten.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn accounts_are_added_verified_and_removed_but_never_the_last_admin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web/users");
        set_user(&path, "ada", Role::Admin, b"first").unwrap();
        set_user(&path, "vic", Role::Viewer, b"second").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let users = Users::load(&path).unwrap();
        assert_eq!(users.verify("ada", b"first"), Some(Role::Admin));
        assert_eq!(users.verify("ada", b"second"), None);
        assert_eq!(users.verify("vic", b"second"), Some(Role::Viewer));
        assert_eq!(users.verify("nobody", b"first"), None);
        assert!(matches!(
            remove_user(&path, "ada"),
            Err(UsersError::LastAdmin(_))
        ));
        assert!(matches!(
            set_user(&path, "ada", Role::Viewer, b"x"),
            Err(UsersError::LastAdmin(_))
        ));
        remove_user(&path, "vic").unwrap();
        assert!(matches!(
            remove_user(&path, "vic"),
            Err(UsersError::NoSuchUser(_))
        ));
        assert!(matches!(
            set_user(&path, "a b", Role::Viewer, b"x"),
            Err(UsersError::InvalidName(_))
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("first"), "no password in the file");
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line_and_never_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "# c\nada:root:$argon2id$v=19$secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let shown = Users::load(&path).unwrap_err().to_string();
        assert!(
            shown.contains("line 2") && shown.contains("neither admin nor viewer"),
            "{shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let shown = Users::load(&path).unwrap_err().to_string();
        assert!(shown.contains("chmod 600"), "{shown}");
    }

    #[test]
    fn the_running_ui_sees_an_edit_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let accounts = Accounts::open(path.clone()).unwrap();
        assert!(accounts.current().is_empty());
        set_user(&path, "ada", Role::Admin, b"pw").unwrap();
        assert_eq!(accounts.current().role("ada"), Some(Role::Admin));
    }
}
