//! `fieldlink credentials add|remove`: edits the local broker's credentials file
//! (`broker.credentials_file`). A running gateway picks the change up at the next CONNECT.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use fieldlink_broker::access;
use fieldlink_core::config::ConfigSource;

use crate::cli::EXIT_BAD_CONFIG;
use crate::config;

/// `fieldlink credentials ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum CredentialsCommand {
    /// Set a user's password and groups (replacing the user's line, or adding one). The
    /// password is read from standard input: one line, not echoed on a terminal, not empty.
    Add {
        /// The user name the client gives in CONNECT.
        name: String,
        /// A group of the user, for `groups = [..]` in `[[broker.acl]]`; repeat for several.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Remove a user.
    Remove {
        /// The user name.
        name: String,
    },
}

/// Runs `command` against the credentials file of the configuration at `source`.
pub(crate) fn main(source: &ConfigSource, command: CredentialsCommand) -> ExitCode {
    let settings = match config::load(source) {
        Ok((settings, _)) => settings,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let Some(path) = settings.broker.access.credentials_file else {
        eprintln!(
            "fieldlink: broker.credentials_file is not set in the configuration. Hint: keep it \
             in the data directory: fieldlink config set broker.credentials_file \
             /var/lib/fieldlink/credentials"
        );
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    // The service reads a copy made by systemd (LoadCredential=); its source is what to edit.
    let source = crate::service::credential_source(&path);
    let copy = (source != path).then_some(path);
    match run(&source, command) {
        Ok(message) if copy.is_some() => {
            print_out(&message);
            print_out(
                "restart the service for it to take effect: systemctl restart fieldlink \
                 (it reads a copy made at start)\n",
            );
            ExitCode::SUCCESS
        }
        Ok(message) => {
            print_out(&message);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fieldlink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path, command: CredentialsCommand) -> anyhow::Result<String> {
    match command {
        CredentialsCommand::Add { name, groups } => {
            let mut password = read_password(&name)?;
            let result = access::set_user(path, &name, &password, &groups);
            password.fill(0);
            std::hint::black_box(&password);
            result?;
            Ok(format!(
                "{name}: password set in {}{}\n",
                path.display(),
                if groups.is_empty() {
                    String::new()
                } else {
                    format!(" (groups: {})", groups.join(", "))
                }
            ))
        }
        CredentialsCommand::Remove { name } => {
            if access::remove_user(path, &name)? {
                Ok(format!("{name}: removed from {}\n", path.display()))
            } else {
                anyhow::bail!("there is no user {name:?} in {}", path.display())
            }
        }
    }
}

/// One line from standard input, without its line ending; echo is off while a terminal types it.
pub(crate) fn read_password(name: &str) -> anyhow::Result<Vec<u8>> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    {
        let _echo_off = if stdin.is_terminal() {
            eprint!("Password for {name}: ");
            Some(EchoOff::new(&stdin)?)
        } else {
            None
        };
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
    }
    let password = line.trim_end_matches(['\n', '\r']).as_bytes().to_vec();
    // Best effort: do not leave the password in freed memory.
    let mut bytes = line.into_bytes();
    bytes.fill(0);
    std::hint::black_box(&bytes);
    if password.is_empty() {
        anyhow::bail!("refusing an empty password (give it as one line on standard input)");
    }
    Ok(password)
}

/// Terminal echo switched off until dropped (the newline is still echoed).
struct EchoOff<'a> {
    stdin: &'a std::io::Stdin,
    saved: nix::sys::termios::Termios,
}

impl<'a> EchoOff<'a> {
    fn new(stdin: &'a std::io::Stdin) -> anyhow::Result<Self> {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let saved = tcgetattr(stdin).context("cannot read the terminal's settings")?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        tcsetattr(stdin, SetArg::TCSANOW, &quiet).context("cannot switch the echo off")?;
        Ok(Self { stdin, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            self.stdin,
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// The CLI's own output goes to stdout; errors go to stderr.
#[allow(clippy::print_stdout)]
pub(crate) fn print_out(text: &str) {
    print!("{text}");
}
