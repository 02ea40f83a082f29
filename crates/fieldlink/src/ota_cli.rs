//! `fieldlink ota status`: the booted slot, the slots' versions, the last update and its
//! result, from the OTA agent's state file (as the agent last saw RAUC).

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use fieldlink_core::config::ConfigSource;
use fieldlink_ota::state::{self, State};

/// `fieldlink ota …`.
#[derive(Debug, Subcommand)]
pub enum OtaCommand {
    /// The booted slot, the versions in each slot, the last update and its result.
    Status {
        /// The state as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `fieldlink ota …`.
pub fn main(source: &ConfigSource, command: OtaCommand) -> ExitCode {
    match run(source, command) {
        Ok(text) => {
            crate::cli::print_out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fieldlink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(source: &ConfigSource, command: OtaCommand) -> anyhow::Result<String> {
    let (settings, _) = crate::config::load(source).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ota = settings
        .ota
        .as_ref()
        .context("no [ota] section in the configuration: the OTA agent is not enabled")?;
    let dir = ota
        .download_dir
        .clone()
        .unwrap_or_else(|| crate::ota_dir(&settings.gateway.resolved_data_dir()));
    let state = state::load(&dir)?;
    let OtaCommand::Status { json } = command;
    Ok(if json {
        format!("{}\n", serde_json::to_string_pretty(&state)?)
    } else {
        render(&state)
    })
}

/// The state in lines for a person.
pub fn render(state: &State) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "booted slot: {}",
        state
            .booted
            .as_deref()
            .unwrap_or("unknown (the agent has not reached RAUC yet)")
    );
    for slot in &state.slots {
        let _ = writeln!(
            out,
            "  {} ({}): version {}, {}{}",
            slot.bootname.as_deref().unwrap_or("?"),
            slot.name,
            slot.version.as_deref().unwrap_or("none installed by RAUC"),
            slot.boot_status.as_deref().unwrap_or("state unknown"),
            if slot.state.as_deref() == Some("booted") {
                ", booted"
            } else {
                ""
            }
        );
    }
    match &state.job {
        None => out.push_str("last update: none\n"),
        Some(job) => {
            let phase = serde_json::to_value(job.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "last update: {} (version {}): {phase}",
                job.request.id, job.request.version
            );
            if let Some(result) = &job.result {
                let _ = writeln!(out, "  result: {result}");
            }
            if let (Some(from), Some(to)) = (&job.from_slot, &job.to_slot) {
                let _ = writeln!(out, "  from slot {from} to slot {to}");
            }
        }
    }
    out
}
