//! Where the installed service (`systemd/fieldlink.service`, as the Debian package ships it)
//! keeps its state, so that an administrator's `fieldlink status`, `queue stats` and
//! `credentials` find the running gateway's files without flags.
//!
//! The unit runs as the system user `fieldlink` with `StateDirectory=fieldlink` and
//! `RuntimeDirectory=fieldlink`: the state is in `/var/lib/fieldlink` (root's default data
//! directory; older packages' dynamic user kept it in `/var/lib/private/fieldlink` behind a
//! symlink there, which systemd moves back), and the runtime directory is `/run/fieldlink`. Both are the service user's, mode 0700: root reads them, other
//! users cannot, and are told to use sudo. Secrets reach the service as copies under
//! `/run/credentials/fieldlink.service/` (`LoadCredential=`); the files to edit are their sources.

use std::path::{Path, PathBuf};

/// The unit's state directory, as root sees it.
pub const STATE_DIR: &str = "/var/lib/fieldlink";
/// The unit's runtime directory (`$RUNTIME_DIRECTORY` inside the service).
pub const RUNTIME_DIR: &str = "/run/fieldlink";
/// Where systemd puts the copies made by the unit's `LoadCredential=` lines.
pub const CREDENTIALS_DIR: &str = "/run/credentials/fieldlink.service";
/// The unit files that may hold `LoadCredential=` lines: the packaged unit, an administrator's
/// copy, and their drop-in directories.
const UNIT_PLACES: [&str; 4] = [
    "/usr/lib/systemd/system/fieldlink.service",
    "/lib/systemd/system/fieldlink.service",
    "/etc/systemd/system/fieldlink.service",
    "/run/systemd/system/fieldlink.service",
];

/// The runtime directory of the gateway whose state is `data_dir`, when it is the unit's: a
/// command run as root with the default data directory finds the service's `status.json`.
pub fn runtime_dir_of(data_dir: &Path) -> Option<PathBuf> {
    (data_dir == Path::new(STATE_DIR)).then(|| PathBuf::from(RUNTIME_DIR))
}

/// A hint for a command that found no running gateway or could not read its state, when the
/// caller is not root and the installed service is running: its state is root's to read.
pub fn sudo_hint() -> Option<String> {
    (!crate::config::is_root() && Path::new(RUNTIME_DIR).exists()).then(|| {
        format!(
            "hint: the installed service keeps its state in {STATE_DIR} and {RUNTIME_DIR}, \
             readable by root only: run the command with sudo"
        )
    })
}

/// The file an administrator edits for `path` when `path` is the service's copy of a
/// credential (`/run/credentials/fieldlink.service/NAME`): the source named by a
/// `LoadCredential=NAME:SOURCE` line of the unit or a drop-in, else `/etc/fieldlink/NAME` (the
/// shipped unit's convention). Any other path is its own source.
pub fn credential_source(path: &Path) -> PathBuf {
    let Ok(name) = path.strip_prefix(CREDENTIALS_DIR) else {
        return path.to_owned();
    };
    let name = name.to_string_lossy().into_owned();
    let mut units = Vec::new();
    for place in UNIT_PLACES {
        units.push(PathBuf::from(place));
        if let Ok(dir) = std::fs::read_dir(format!("{place}.d")) {
            let mut dropins: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            dropins.sort();
            units.extend(dropins);
        }
    }
    // The last definition wins, as in systemd's own parsing order.
    units
        .iter()
        .filter_map(|unit| std::fs::read_to_string(unit).ok())
        .filter_map(|text| load_credential(&text, &name))
        .next_back()
        .unwrap_or_else(|| Path::new("/etc/fieldlink").join(&name))
}

/// The source of credential `name` in a unit file's `LoadCredential=name:source` lines.
fn load_credential(unit: &str, name: &str) -> Option<PathBuf> {
    unit.lines()
        .filter_map(|line| line.trim().strip_prefix("LoadCredential="))
        .filter_map(|value| value.split_once(':'))
        .filter(|(n, _)| *n == name)
        .map(|(_, source)| PathBuf::from(source.trim()))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_data_directory_as_root_is_the_units() {
        assert_eq!(
            runtime_dir_of(Path::new("/var/lib/fieldlink")),
            Some(PathBuf::from("/run/fieldlink"))
        );
        assert_eq!(runtime_dir_of(Path::new("/srv/gateway")), None);
    }

    #[test]
    fn a_credential_copy_is_edited_at_its_source() {
        let unit = "[Service]\n#LoadCredential=credentials:/etc/fieldlink/old\n\
                    LoadCredential=broker.key:/etc/fieldlink/broker.key\n\
                    LoadCredential=credentials:/srv/secrets/users\n";
        assert_eq!(
            load_credential(unit, "credentials"),
            Some(PathBuf::from("/srv/secrets/users"))
        );
        assert_eq!(load_credential(unit, "devices.psk"), None);
        assert_eq!(
            credential_source(Path::new("/etc/fieldlink/credentials")),
            PathBuf::from("/etc/fieldlink/credentials")
        );
    }
}
