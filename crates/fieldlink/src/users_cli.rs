//! `fieldlink users add|passwd|remove|list`: the web UI's accounts (`web/users` in the data
//! directory). A running UI reads the file again at its next request.

use std::process::ExitCode;

use clap::Subcommand;
use fieldlink_core::config::ConfigSource;
use fieldlink_web::users::{self, Role, Users};

use crate::cli::EXIT_BAD_CONFIG;
use crate::config;
use crate::credentials_cli::{print_out, read_password};

/// `fieldlink users ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Add an account (or replace one), with its role. The password is read from standard
    /// input: one line, not echoed on a terminal, at least 10 characters.
    Add {
        /// The account's name.
        name: String,
        /// `admin` (changes anything) or `viewer` (sees everything, changes nothing).
        #[arg(long, default_value = "viewer", value_parser = ["admin", "viewer"])]
        role: String,
    },
    /// Set an account's password (read from standard input), keeping its role.
    Passwd {
        /// The account's name.
        name: String,
    },
    /// Remove an account (never the last admin).
    Remove {
        /// The account's name.
        name: String,
    },
    /// List the accounts and their roles.
    List,
}

/// Runs `command` against the accounts file of the configuration at `source`.
pub(crate) fn main(source: &ConfigSource, command: UsersCommand) -> ExitCode {
    let settings = match config::load(source) {
        Ok((settings, _)) => settings,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let path = fieldlink_web::users_file(&settings.gateway.resolved_data_dir());
    match run(&path, command) {
        Ok(text) => {
            print_out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fieldlink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, command: UsersCommand) -> anyhow::Result<String> {
    match command {
        UsersCommand::Add { name, role } => {
            let role = Role::parse(&role).unwrap_or(Role::Viewer);
            set(path, &name, role)?;
            Ok(format!(
                "{name}: {} account saved in {}\n",
                role.as_str(),
                path.display()
            ))
        }
        UsersCommand::Passwd { name } => {
            let Some(role) = Users::load(path)?.role(&name) else {
                anyhow::bail!("there is no account {name:?} in {}", path.display());
            };
            set(path, &name, role)?;
            Ok(format!("{name}: password set\n"))
        }
        UsersCommand::Remove { name } => {
            users::remove_user(path, &name)?;
            Ok(format!("{name}: removed from {}\n", path.display()))
        }
        UsersCommand::List => {
            let list = Users::load(path)?.list();
            if list.is_empty() {
                return Ok(
                    "No account yet: the web UI prints a one-time setup token at start, \
                           or add one with `fieldlink users add NAME --role admin`\n"
                        .into(),
                );
            }
            Ok(list
                .into_iter()
                .map(|(name, role)| format!("{name}\t{}\n", role.as_str()))
                .collect())
        }
    }
}

fn set(path: &std::path::Path, name: &str, role: Role) -> anyhow::Result<()> {
    let mut password = read_password(name)?;
    let result = if password.len() < fieldlink_web::MIN_PASSWORD {
        Err(anyhow::anyhow!(
            "refusing a password shorter than {} characters",
            fieldlink_web::MIN_PASSWORD
        ))
    } else {
        users::set_user(path, name, role, &password).map_err(anyhow::Error::from)
    };
    password.fill(0);
    std::hint::black_box(&password);
    result
}
