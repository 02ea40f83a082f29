//! The command line: `fieldlink run`, `fieldlink check-config`, `fieldlink version`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fieldlink_core::config::{self, ConfigErrors, ConfigSource, Origin, Settings};

use crate::{Gateway, VERSION, systemd};

/// Exit code for a bad configuration (EX_USAGE); the systemd unit does not restart on it.
pub const EXIT_BAD_CONFIG: u8 = 64;

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
    /// Check the configuration: exit 0 when valid, 64 with every mistake listed.
    CheckConfig,
    /// Print the version.
    Version,
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
        Command::CheckConfig => match config::load(&source) {
            Ok((_, origin)) => {
                println_out(&format!(
                    "{}: configuration is valid",
                    describe(&origin, &source)
                ));
                ExitCode::SUCCESS
            }
            Err(errors) => bad_config(&errors),
        },
        Command::Run => {
            fieldlink_core::logging::init();
            let (settings, origin) = match config::load(&source) {
                Ok(loaded) => loaded,
                Err(errors) => return bad_config(&errors),
            };
            tracing::info!(version = VERSION, config = %describe(&origin, &source), "Starting fieldlink");
            match run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fieldlink")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let gateway = Gateway::start(settings).await?;
        systemd::notify("READY=1");
        let watchdog = systemd::watchdog_interval().map(|every| {
            let status = gateway.status().clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    // Only a gateway whose components all run may keep the watchdog happy.
                    if status.all_up() {
                        systemd::notify("WATCHDOG=1");
                    }
                }
            })
        });
        let signal = wait_for_signal().await?;
        tracing::info!(signal, "Shutting down");
        systemd::notify("STOPPING=1");
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        if gateway.stop().await {
            tracing::info!("Stopped cleanly");
        } else {
            tracing::warn!("The grace period ran out before everything stopped");
        }
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
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
