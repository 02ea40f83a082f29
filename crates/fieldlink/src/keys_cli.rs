//! `fieldlink keys`: keys born in a PKCS#11 token, for a person on the console or a
//! provisioning script (`--json`). The module and PIN come from the configuration's `[keys]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use fieldlink_core::config::ConfigSource;
use fieldlink_keys::key::Curve;
use fieldlink_keys::manage;
use fieldlink_keys::token::{TokenSession, Tokens};

/// `fieldlink keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// The tokens the module sees and the private keys on them.
    List {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Generate a key pair in the token (sensitive, never extractable).
    Generate {
        /// The key's label (CKA_LABEL); key_uri = pkcs11:token=…;object=LABEL.
        #[arg(long)]
        label: String,
        /// The token's label [default: the only token present].
        #[arg(long)]
        token: Option<String>,
        /// The curve.
        #[arg(long, value_enum, default_value_t = CurveArg::P256)]
        curve: CurveArg,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print a certificate request (PEM) signed by the token's key.
    Csr {
        /// The key's label.
        #[arg(long)]
        label: String,
        /// The subject's common name.
        #[arg(long)]
        subject: String,
        /// A DNS name or IP address for the subject alternative names (repeat it).
        #[arg(long)]
        san: Vec<String>,
        /// The token's label [default: the only token present].
        #[arg(long)]
        token: Option<String>,
        /// Write the request here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Install the certificate issued for a key: refused unless it matches the key, chains to
    /// the CA ([keys] ca_file or --ca) and is valid now.
    InstallCert {
        /// The key's label.
        #[arg(long)]
        label: String,
        /// The certificate (PEM; the chain after it, if any).
        file: PathBuf,
        /// The CA it must chain to [default: [keys] ca_file].
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Also copy it here (the cert_file the configuration names), atomically.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The token's label [default: the only token present].
        #[arg(long)]
        token: Option<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key pair and its certificate from the token.
    Delete {
        /// The key's label.
        #[arg(long)]
        label: String,
        /// The token's label [default: the only token present].
        #[arg(long)]
        token: Option<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// The curves `keys generate` makes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CurveArg {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
}

/// Runs `command` with the configuration from `source`.
pub fn main(source: &ConfigSource, command: KeysCommand) -> ExitCode {
    let settings = match crate::config::load(source) {
        Ok((settings, _)) => settings,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(crate::cli::EXIT_BAD_CONFIG);
        }
    };
    let Some(pkcs11) = settings.keys.pkcs11.clone() else {
        eprintln!(
            "fieldlink: no PKCS#11 module configured. Hint: set [keys] module and pin_file (or pin_credential)"
        );
        return ExitCode::from(crate::cli::EXIT_BAD_CONFIG);
    };
    let tokens = Tokens::new(pkcs11);
    match run(&tokens, settings.keys.ca_file.as_deref(), command) {
        Ok(out) => {
            crate::cli::print_out(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fieldlink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(tokens: &Tokens, ca_file: Option<&Path>, command: KeysCommand) -> anyhow::Result<String> {
    Ok(match command {
        KeysCommand::List { json } => {
            let listed = manage::list(tokens)?;
            if json {
                json_line(&listed)?
            } else {
                let mut out = String::new();
                for token in &listed {
                    out += &format!(
                        "token {:?} ({} {}, serial {})\n",
                        token.token.label,
                        token.token.manufacturer,
                        token.token.model,
                        token.token.serial
                    );
                    if let Some(e) = &token.error {
                        out += &format!("  keys not listed: {e}\n");
                    }
                    for key in &token.keys {
                        out += &format!(
                            "  {}  {}  id {}{}{}{}\n",
                            key.uri,
                            key.curve
                                .map_or("unusable (not P-256/P-384)".into(), |c| format!("{c:?}")),
                            key.id,
                            if key.sensitive { "  sensitive" } else { "" },
                            if key.extractable { "  EXTRACTABLE" } else { "" },
                            if key.certificate {
                                "  certificate installed"
                            } else {
                                ""
                            },
                        );
                    }
                }
                out
            }
        }
        KeysCommand::Generate {
            label,
            token,
            curve,
            json,
        } => {
            let session = open(tokens, token.as_deref())?;
            let curve = match curve {
                CurveArg::P256 => Curve::P256,
                CurveArg::P384 => Curve::P384,
            };
            let key = manage::generate(&session, &label, curve)?;
            if json {
                json_line(&key)?
            } else {
                format!(
                    "generated {:?} on token {:?}: key_uri = \"{}\"\n",
                    label, session.label, key.uri
                )
            }
        }
        KeysCommand::Csr {
            label,
            subject,
            san,
            token,
            out,
        } => {
            let session = open(tokens, token.as_deref())?;
            let pem = manage::csr(&session, &label, &subject, &san)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, &pem)
                        .with_context(|| format!("cannot write {path:?}"))?;
                    String::new()
                }
                None => pem,
            }
        }
        KeysCommand::InstallCert {
            label,
            file,
            ca,
            out,
            token,
            json,
        } => {
            let ca = ca
                .as_deref()
                .or(ca_file)
                .context(
                    "no CA to check the certificate against. Hint: --ca FILE or [keys] ca_file",
                )?
                .to_owned();
            let session = open(tokens, token.as_deref())?;
            manage::install_cert(&session, &label, &file, &ca)?;
            if let Some(out) = &out {
                write_atomically(&file, out)?;
            }
            if json {
                json_line(&serde_json::json!({
                    "label": label, "token": session.label, "installed": true,
                    "copied_to": out,
                }))?
            } else {
                format!(
                    "installed the certificate of {label:?} on token {:?}\n",
                    session.label
                )
            }
        }
        KeysCommand::Delete { label, token, json } => {
            let session = open(tokens, token.as_deref())?;
            let objects = manage::delete(&session, &label)?;
            if json {
                json_line(
                    &serde_json::json!({"label": label, "token": session.label, "deleted_objects": objects}),
                )?
            } else {
                format!(
                    "deleted {label:?} from token {:?} ({objects} objects)\n",
                    session.label
                )
            }
        }
    })
}

/// The token named, or the only one present.
fn open(tokens: &Tokens, label: Option<&str>) -> anyhow::Result<Arc<TokenSession>> {
    let label = match label {
        Some(label) => label.to_owned(),
        None => {
            let present = tokens.list()?;
            match present.as_slice() {
                [(_, only)] => only.label.clone(),
                [] => bail!("no token present. Hint: plug it in, or check [keys] module"),
                many => bail!(
                    "{} tokens present ({}): name one with --token",
                    many.len(),
                    many.iter()
                        .map(|(_, t)| format!("{:?}", t.label))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    Ok(tokens.open(&label, None)?)
}

fn json_line(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string(value)? + "\n")
}

/// Copies `from` to `to` through a temporary file in `to`'s directory, so a reader never sees
/// half a certificate.
fn write_atomically(from: &Path, to: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("cannot read {from:?}"))?;
    let temp = to.with_extension("tmp-install");
    std::fs::write(&temp, bytes).with_context(|| format!("cannot write {temp:?}"))?;
    std::fs::rename(&temp, to).with_context(|| format!("cannot replace {to:?}"))?;
    Ok(())
}
