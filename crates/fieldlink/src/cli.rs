//! The command line: `fieldlink run`, `check-config`, `status`, `queue`, `credentials`,
//! `completions`, `version`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fieldlink_core::config::{ConfigErrors, ConfigSource, Origin};
use fieldlink_core::shutdown::Shutdown;

use crate::config::{self, Settings};
use crate::supervisor::Watchdog;
use crate::{Ended, Gateway, VERSION, systemd};

/// Exit code for a bad configuration (EX_USAGE); the systemd unit does not restart on it.
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Exit code for a queue written by a newer release that this one cannot read (EX_DATAERR):
/// the file is left untouched; restarting cannot help, so the unit does not restart on it.
pub const EXIT_QUEUE_TOO_NEW: u8 = 65;

/// fieldlink: an edge gateway that never loses a reading.
#[derive(Debug, Parser)]
#[command(name = "fieldlink", version = VERSION)]
struct Cli {
    /// The configuration file [default: /etc/fieldlink/fieldlink.toml, built-in defaults if
    /// absent].
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Run,
    /// Try fieldlink with nothing else: the gateway, a simulated Modbus device, a stand-in
    /// cloud broker over TLS and the web UI, in a temporary directory removed on Ctrl-C.
    Demo,
    /// Check the configuration: exit 0 when valid, 64 with every mistake listed.
    CheckConfig,
    /// Print the version.
    Version,
    /// The running gateway's status: components, queue, uplink (connection, last error,
    /// backlog, certificates).
    Status {
        /// Print the raw JSON snapshot.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or empty the store-and-forward queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// The effective configuration, and the site settings the operator changes (kept in the
    /// data directory, so that an update of the shipped file keeps them): show, set, unset,
    /// import, history, restore.
    #[command(subcommand)]
    Config(crate::config_cli::ConfigCommand),
    /// Add, change or remove a user of the local broker (broker.credentials_file).
    #[command(subcommand)]
    Credentials(crate::credentials_cli::CredentialsCommand),
    /// Keys in a PKCS#11 token ([keys] module and PIN): list, generate, csr, install-cert,
    /// delete.
    #[command(subcommand)]
    Keys(crate::keys_cli::KeysCommand),
    /// The web UI's accounts ([web]): add, passwd, remove, list.
    #[command(subcommand)]
    Users(crate::users_cli::UsersCommand),
    /// The OTA agent ([ota]): the booted slot, versions, the last update and its result.
    #[command(subcommand)]
    Ota(crate::ota_cli::OtaCommand),
    /// Print a completion script for a shell (the Debian package installs them).
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (fieldlink.1, and one per command) into a directory, for packaging.
    #[command(hide = true)]
    Man {
        /// The directory (it must exist).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Depth per stream, oldest message, drops and refusals. Beside a running gateway: as of
    /// its queue's last fold (at most 5 s ago).
    Stats,
    /// The next messages in delivery order (not leased, not removed). Beside a running
    /// gateway: as of its queue's last fold (at most 5 s ago).
    Peek {
        /// How many.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Delete every queued message. Stop the service first: a running gateway keeps counting.
    Purge {
        /// Confirm that the messages are to be deleted for good.
        #[arg(long)]
        yes: bool,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = match cli.config {
        Some(path) => ConfigSource::Explicit(path),
        None => ConfigSource::DefaultPath(config::DEFAULT_CONFIG_PATH.into()),
    };
    match cli.command {
        Command::Version => {
            println_out(&format!("fieldlink {VERSION}"));
            ExitCode::SUCCESS
        }
        Command::Config(command) => crate::config_cli::main(&source, command),
        Command::CheckConfig => match config::load_layers(&source) {
            Ok(config::Loaded {
                settings,
                origin,
                warnings,
                ..
            }) => {
                for warning in warnings {
                    eprintln!("warning: {warning}");
                }
                // Keys in tokens: the module, the token, the PIN and the key must be there, and
                // the certificate must be the key's.
                let problems = check_token_keys(&settings);
                if !problems.is_empty() {
                    for problem in problems {
                        eprintln!("{problem}");
                    }
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
                println_out(&format!(
                    "{}: configuration is valid",
                    describe(&origin, &source)
                ));
                ExitCode::SUCCESS
            }
            Err(errors) => bad_config(&errors),
        },
        Command::Status { json } => {
            let (settings, _) = match config::load(&source) {
                Ok(loaded) => loaded,
                Err(errors) => return bad_config(&errors),
            };
            let path = crate::status::find_status_file(&settings.gateway.resolved_data_dir());
            match crate::status::read(&path) {
                Ok((status, age)) => {
                    if json {
                        print_out(&format!(
                            "{}\n",
                            serde_json::to_string_pretty(&status).unwrap_or_default()
                        ));
                    } else {
                        print_out(&crate::status::render(&status, age));
                    }
                    if age > crate::status::STATUS_EVERY * 3 {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => failed(&e),
            }
        }
        Command::Queue(command) => {
            let (settings, _) = match config::load(&source) {
                Ok(loaded) => loaded,
                Err(errors) => return bad_config(&errors),
            };
            match queue_command(settings, command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(&e),
            }
        }
        Command::Credentials(command) => crate::credentials_cli::main(&source, command),
        Command::Keys(command) => crate::keys_cli::main(&source, command),
        Command::Users(command) => crate::users_cli::main(&source, command),
        Command::Ota(command) => crate::ota_cli::main(&source, command),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "fieldlink", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => {
            let command = <Cli as clap::CommandFactory>::command();
            match clap_mangen::generate_to(command, &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "fieldlink: cannot write the man pages into {}: {e}",
                        dir.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo => crate::demo::main(),
        Command::Run => {
            fieldlink_core::logging::init();
            let loaded = match config::load_layers(&source) {
                Ok(loaded) => loaded,
                Err(errors) => return bad_config(&errors),
            };
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            tracing::info!(version = VERSION, config = %describe(&loaded.origin, &source), "Starting fieldlink");
            let editable = crate::Editable {
                source: source.clone(),
                layers: loaded.layers,
                site: loaded.site,
            };
            match run(loaded.settings, editable) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    let too_new = e.chain().any(|cause| {
                        matches!(
                            cause.downcast_ref::<fieldlink_queue::QueueError>(),
                            Some(fieldlink_queue::QueueError::TooNew { .. })
                        )
                    });
                    if too_new {
                        ExitCode::from(EXIT_QUEUE_TOO_NEW)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

/// Each `key_uri`'s key opened in its token and checked against its certificate: one line per
/// problem (none when every key is usable).
fn check_token_keys(settings: &Settings) -> Vec<String> {
    use fieldlink_core::tls::{KeyRef, KeyResolver as _};
    let keys = fieldlink_keys::Pkcs11Keys::new(&settings.keys);
    let provider = rustls::crypto::ring::default_provider();
    let mut problems = Vec::new();
    for (section, key, cert_file) in settings.key_refs() {
        if !matches!(key, KeyRef::Pkcs11(_)) {
            continue;
        }
        let checked = keys.resolve(key).and_then(|source| match cert_file {
            Some(cert_file) => {
                let chain = fieldlink_core::tls::read_certs(cert_file)?;
                fieldlink_core::tls::certified_key(chain, source.as_ref(), &provider).map(|_| ())
            }
            // No certificate goes with it (the JWT key): the key must sign, that is all.
            None => source.signing_key(&provider).map(|_| ()),
        });
        if let Err(e) = checked {
            problems.push(format!("{section}.key_uri: {e}"));
        }
    }
    problems
}

fn run(settings: Settings, editable: crate::Editable) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fieldlink")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Watch the signals before anything starts: a SIGTERM that arrives during start-up (or
        // right after READY=1) must stop us cleanly, not kill us by default action.
        let signals = Signals::install()?;
        let mut gateway = Gateway::start_editable(settings, editable).await?;
        systemd::notify("READY=1");
        let watchdog = systemd::watchdog_interval().map(|every| Watchdog {
            every,
            ping: Box::new(|| systemd::notify("WATCHDOG=1")),
        });
        let ended = gateway.run_until(signals.wait(), watchdog).await;
        match &ended {
            Ended::Asked(signal) => tracing::info!(signal, "Shutting down"),
            Ended::Failed(failure) => tracing::error!(
                component = failure.component,
                "{failure}: the gateway stops, to be started again by its service manager"
            ),
        }
        systemd::notify("STOPPING=1");
        if gateway.stop().await {
            tracing::info!("Stopped cleanly");
        } else {
            tracing::warn!("The grace period ran out before everything stopped");
        }
        match ended {
            Ended::Asked(_) => Ok(()),
            Ended::Failed(failure) => Err(anyhow::anyhow!(
                "the {} component failed ({failure})",
                failure.component
            )),
        }
    })
}

fn queue_command(settings: Settings, command: QueueCommand) -> anyhow::Result<()> {
    if let QueueCommand::Purge { yes: false } = command {
        anyhow::bail!("purge deletes every queued message for good: add --yes to confirm");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let data_dir = settings.gateway.resolved_data_dir();
    runtime.block_on(async {
        let mut out = String::new();
        match command {
            // Inspection opens the file read-only: no maintenance, no writes, next to a running
            // service.
            QueueCommand::Stats => {
                let mut reader = open_reader(&data_dir).await?;
                let stats = reader.stats().await?;
                out += &format!("queue: {}\n", reader.path().display());
                out += &format!("messages: {}  bytes: {}\n", stats.messages, stats.bytes);
                if let Some(age) = stats.oldest_age {
                    out += &format!("oldest: {}s ago\n", age.as_secs());
                }
                for (stream, s) in &stats.streams {
                    out += &format!(
                        "  stream {stream}: {} messages, {} bytes\n",
                        s.messages, s.bytes
                    );
                }
                reader.close().await;
            }
            QueueCommand::Peek { limit } => {
                let mut reader = open_reader(&data_dir).await?;
                for m in reader.peek(limit).await? {
                    out += &format!(
                        "{} {} {:?} {} {} bytes\n",
                        m.id,
                        m.stream,
                        m.priority,
                        m.message.topic,
                        m.message.payload.len()
                    );
                }
                reader.close().await;
            }
            QueueCommand::Purge { .. } => {
                let queue = crate::open_queue(&settings, &data_dir, &Shutdown::new()).await?;
                let n = queue.purge().await?;
                queue.close().await;
                out += &format!("purged {n} messages\n");
            }
        }
        print_out(&out);
        Ok(())
    })
}

/// The queue in `data_dir`, read-only.
async fn open_reader(data_dir: &std::path::Path) -> anyhow::Result<fieldlink_queue::QueueReader> {
    fieldlink_queue::QueueReader::open(data_dir)
        .await
        .with_context(|| format!("cannot read the queue in {}", data_dir.display()))
}

/// An inspection command failed: the error, and where the installed service's state is when
/// the caller cannot read it.
fn failed(e: &anyhow::Error) -> ExitCode {
    eprintln!("fieldlink: {e:#}");
    if let Some(hint) = crate::service::sudo_hint() {
        eprintln!("{hint}");
    }
    ExitCode::FAILURE
}

/// SIGTERM and SIGINT, watched from the moment they are installed.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    pub(crate) async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn describe(origin: &Origin, source: &ConfigSource) -> String {
    match (origin, source) {
        (Origin::BuiltIn, ConfigSource::DefaultPath(path)) => {
            format!("no file at {}, built-in defaults", path.display())
        }
        (origin, _) => origin.to_string(),
    }
}

fn bad_config(errors: &ConfigErrors) -> ExitCode {
    eprint!("{errors}");
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// The CLI's own output goes to stdout; logs go to stderr.
#[allow(clippy::print_stdout)]
fn println_out(line: &str) {
    println!("{line}");
}

#[allow(clippy::print_stdout)]
pub(crate) fn print_out(text: &str) {
    print!("{text}");
}
