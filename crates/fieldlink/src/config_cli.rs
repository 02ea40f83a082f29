//! `fieldlink config show|set|unset|import|history|restore`: the effective configuration, and
//! the site layer that the operator changes (`<data_dir>/config/site.toml`).
//!
//! Every change is validated merged with the shipped file before it is written, so a
//! change that `check-config` would refuse never reaches the disk; the version it replaces is
//! kept for `restore`. The running gateway reads its configuration at start: a change applies
//! after a restart of the service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use fieldlink_core::config::site::{SiteStore, stamp};
use fieldlink_core::config::{ConfigErrors, ConfigSource, Layers, Origin};

use crate::cli::{EXIT_BAD_CONFIG, print_out};
use crate::config;

/// `fieldlink config ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the effective configuration: every value the shipped file or the site layer sets
    /// (anything not listed is a built-in default).
    Show {
        /// Say after each value which file and line set it.
        #[arg(long)]
        origin: bool,
    },
    /// Set a value in the site configuration, e.g. `uplink.port 8883`. VALUE is a TOML value
    /// (`8883`, `true`, `"text"`, `["a", "b"]`, `[{ filter = "x/#" }]`); anything else is taken
    /// as a string. An array (such as `routes`) is replaced whole.
    Set {
        /// Dotted key, e.g. `queue.max_bytes`.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove a value from the site configuration: the shipped value (or the default) applies
    /// again.
    Unset {
        /// Dotted key.
        key: String,
    },
    /// Replace the whole site configuration with a TOML file (validated first).
    Import {
        /// The file.
        file: PathBuf,
    },
    /// List the earlier versions of the site configuration kept for `restore`.
    History,
    /// Make an earlier version the site configuration again (the current one is kept).
    Restore {
        /// Its number, from `history`.
        number: u64,
    },
}

/// Runs `command` against the configuration at `source` and its site layer.
pub(crate) fn main(source: &ConfigSource, command: ConfigCommand) -> ExitCode {
    match run(source, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(errors)) => {
            eprint!("{errors}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(Failure::Other(e)) => {
            eprintln!("fieldlink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// The configuration (shipped, site, or the proposed site layer) is not valid.
    Invalid(ConfigErrors),
    Other(anyhow::Error),
}

impl From<ConfigErrors> for Failure {
    fn from(errors: ConfigErrors) -> Self {
        Self::Invalid(errors)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

fn run(source: &ConfigSource, command: ConfigCommand) -> Result<(), Failure> {
    let shipped = config::shipped_layer(source)?;
    let site = config::site_store(&shipped)?;
    match command {
        ConfigCommand::Show { origin } => {
            let loaded = config::load_with_site(shipped, site.clone(), read(&site)?.as_deref())?;
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            print_out(&show(&loaded.layers, origin)?);
        }
        ConfigCommand::Set { key, value } => {
            let mut table = site_table(&site)?;
            set(&mut table, &key, Some(parse_value(&value)))?;
            propose(shipped, &site, table)?;
        }
        ConfigCommand::Unset { key } => {
            let mut table = site_table(&site)?;
            set(&mut table, &key, None)?;
            propose(shipped, &site, table)?;
        }
        ConfigCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let table = parse_table(&text, &file.display().to_string())?;
            propose(shipped, &site, table)?;
        }
        ConfigCommand::History => {
            let history = site.history().map_err(anyhow::Error::from)?;
            if history.is_empty() {
                print_out("no earlier site configuration is kept\n");
            }
            for version in history {
                print_out(&format!(
                    "{:>4}  replaced {} ago  {}\n",
                    version.number,
                    ago(version.modified),
                    version.path.display()
                ));
            }
        }
        ConfigCommand::Restore { number } => {
            let text = site.version(number).map_err(anyhow::Error::from)?;
            let table = parse_table(&text, &format!("version {number}"))?;
            propose(shipped, &site, table)?;
        }
    }
    Ok(())
}

/// How long ago a moment (seconds since the epoch) was, roughly: `3d 4h`, `5m`.
fn ago(then: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(then);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn read(site: &SiteStore) -> Result<Option<String>, Failure> {
    Ok(site.read().map_err(anyhow::Error::from)?)
}

/// The site layer as a table (empty when there is none yet).
fn site_table(site: &SiteStore) -> Result<toml::Table, Failure> {
    let text = read(site)?.unwrap_or_default();
    parse_table(&text, &site.path().display().to_string())
}

fn parse_table(text: &str, name: &str) -> Result<toml::Table, Failure> {
    text.parse::<toml::Table>().map_err(|e| {
        Failure::Other(anyhow::anyhow!(
            "{name} is not valid TOML: {}",
            e.message().trim()
        ))
    })
}

/// A TOML value as the user typed it; a bare word is a string.
fn parse_value(text: &str) -> toml::Value {
    let document = format!("value = {text}");
    match document.parse::<toml::Table>() {
        Ok(mut table) => table.remove("value").unwrap_or_else(|| text.into()),
        Err(_) => toml::Value::String(text.to_owned()),
    }
}

/// Sets (or with `None` removes) the dotted `key` in `table`, creating the tables on the way.
fn set(table: &mut toml::Table, key: &str, value: Option<toml::Value>) -> anyhow::Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty() || p.contains(['[', ']'])) {
        anyhow::bail!(
            "`{key}` is not a dotted key of tables. Hint: an array such as `routes` is set whole, \
             e.g. fieldlink config set routes '[{{ filter = \"sensors/#\" }}]', or edit a copy and \
             use `fieldlink config import FILE`"
        );
    }
    if parts.first() == Some(&fieldlink_core::config::SITE_TABLE) {
        anyhow::bail!("the [site] table is fieldlink's own record of the file's format");
    }
    let (last, path) = parts.split_last().expect("split gives one part at least");
    let mut here = table;
    for part in path {
        let entry = here
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = match entry {
            toml::Value::Table(inner) => inner,
            _ => anyhow::bail!("`{part}` in `{key}` is a value, not a table"),
        };
    }
    match value {
        Some(value) => {
            here.insert((*last).to_owned(), value);
        }
        None => {
            if here.remove(*last).is_none() {
                anyhow::bail!("the site configuration does not set `{key}`");
            }
        }
    }
    Ok(())
}

/// Validates `table` as the site layer on top of the shipped file and, when valid, writes it.
fn propose(shipped: Layers, site: &SiteStore, mut table: toml::Table) -> Result<(), Failure> {
    stamp(&mut table);
    let text = format!(
        "# fieldlink site configuration: written by `fieldlink config` and the web UI; it is\n\
         # read on top of the shipped file. Earlier versions: `fieldlink config history`.\n{}",
        toml::to_string(&table).map_err(|e| anyhow::anyhow!("cannot write TOML: {e}"))?
    );
    if let Err(mut errors) = config::load_with_site(shipped, site.clone(), Some(&text)) {
        // The lines are those of the proposed text, not of the file on disk.
        let proposed = PathBuf::from(format!("{} (proposed)", site.path().display()));
        for error in &mut errors.0 {
            if error.origin == Origin::File(site.path()) {
                error.origin = Origin::File(proposed.clone());
            }
        }
        eprintln!("the change is not written: the configuration would not be valid");
        return Err(Failure::Invalid(errors));
    }
    site.write(&text).map_err(anyhow::Error::from)?;
    print_out(&format!(
        "{} written; the previous version is kept (fieldlink config history). Restart the \
         service to apply it: systemctl restart fieldlink\n",
        site.path().display()
    ));
    Ok(())
}

/// The effective configuration as `key = value` lines, each with its file and line when
/// `origin` is asked for.
fn show(layers: &Layers, origin: bool) -> Result<String, Failure> {
    let settings = fieldlink_core::config::effective(layers)?;
    let mut out = String::new();
    let names: Vec<String> = layers.origins().iter().map(ToString::to_string).collect();
    if names.is_empty() {
        out.push_str("# no configuration file: built-in defaults only\n");
    } else {
        out.push_str(&format!("# layers, lowest first: {}\n", names.join(", ")));
    }
    for setting in settings {
        out.push_str(&format!("{} = {}", setting.key, setting.value));
        if origin {
            out.push_str(&format!("    # {}:{}", setting.origin, setting.line));
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_toml_and_bare_words_are_strings() {
        assert_eq!(parse_value("8883"), toml::Value::Integer(8883));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("\"a b\""), toml::Value::String("a b".into()));
        assert_eq!(
            parse_value("cloud.example.com"),
            toml::Value::String("cloud.example.com".into())
        );
        assert!(parse_value("[{ filter = \"x/#\" }]").is_array());
    }

    #[test]
    fn dotted_keys_make_tables_and_unset_removes() {
        let mut table = toml::Table::new();
        set(&mut table, "uplink.port", Some(toml::Value::Integer(1))).unwrap();
        assert_eq!(table["uplink"]["port"].as_integer(), Some(1));
        set(&mut table, "uplink.port", None).unwrap();
        assert!(table["uplink"].as_table().unwrap().is_empty());
        assert!(set(&mut table, "uplink.port", None).is_err());
        assert!(set(&mut table, "routes[0].filter", None).is_err());
        assert!(set(&mut table, "site.format", Some(toml::Value::Integer(9))).is_err());
    }
}
