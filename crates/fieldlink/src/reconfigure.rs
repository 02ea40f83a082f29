//! The site configuration as the web UI edits it: a proposed site layer is read on top of the
//! shipped file by the same reader as `check-config` (every mistake, with its file, line and
//! column), compared with the running configuration value by value (secrets redacted as the
//! errors redact them), and handed to the service loop to apply ([`crate::Gateway::run_until`]
//! restarts the components on it, checks their health, then keeps it or rolls back:
//! `crate::restart`).
//!
//! One apply at a time: a second one while the first is checked is refused (the page's 409).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use fieldlink_core::config::site::SiteStore;
use fieldlink_core::config::{ConfigErrors, ConfigSource, Layers, Origin};
use fieldlink_web::editing::{
    ApplyRefusal, ApplyState, Change, Checked, KeptVersion, Problem, SiteConfig,
};

use crate::config::{self, Settings};

/// What the gateway was started from, so that the UI can edit it.
#[derive(Debug)]
pub struct Editable {
    /// The shipped file (`--config`).
    pub source: ConfigSource,
    /// The layers the gateway was started with.
    pub layers: Layers,
    /// The site layer's store.
    pub site: SiteStore,
}

/// A proposal to apply, validated; taken by the service loop.
pub(crate) struct ApplyRequest {
    /// The site layer's text, as the operator wrote it.
    pub(crate) text: String,
    /// What it reads as, merged with the shipped file.
    pub(crate) settings: Settings,
    pub(crate) layers: Layers,
    /// Who asked.
    pub(crate) by: String,
    /// Whether `text` becomes the site layer once kept (not for a new certificate, which
    /// restarts on the same configuration).
    pub(crate) save_site: bool,
    /// A file written for this apply and its previous contents (`None`: it did not exist),
    /// put back on a rollback.
    pub(crate) restore_file: Option<(std::path::PathBuf, Option<Vec<u8>>)>,
}

/// The running configuration: what a proposal is compared with.
struct Running {
    layers: Layers,
    settings: Settings,
}

/// Checks proposals and starts applies; the service loop reports how each ended.
pub(crate) struct Editor {
    source: ConfigSource,
    site: SiteStore,
    running: Mutex<Running>,
    state: Mutex<ApplyState>,
    requests: tokio::sync::mpsc::Sender<Box<ApplyRequest>>,
    /// The keys, for the uplink's certificate request and the check of a new certificate.
    keys: std::sync::Arc<fieldlink_keys::Pkcs11Keys>,
}

impl Editor {
    pub(crate) fn new(
        editable: Editable,
        settings: Settings,
        requests: tokio::sync::mpsc::Sender<Box<ApplyRequest>>,
        keys: std::sync::Arc<fieldlink_keys::Pkcs11Keys>,
    ) -> Self {
        Self {
            source: editable.source,
            site: editable.site,
            running: Mutex::new(Running {
                layers: editable.layers,
                settings,
            }),
            state: Mutex::new(ApplyState::Idle),
            requests,
            keys,
        }
    }

    pub(crate) fn site(&self) -> &SiteStore {
        &self.site
    }

    pub(crate) fn site_config(&self) -> Result<SiteConfig, String> {
        let text = self.site.read().map_err(|e| e.to_string())?;
        let mut history: Vec<KeptVersion> = self
            .site
            .history()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|v| KeptVersion {
                number: v.number,
                replaced_s: v.modified,
            })
            .collect();
        history.reverse();
        let check_s = self
            .running()
            .settings
            .web
            .as_ref()
            .map_or(0, |w| w.apply_check.as_secs());
        Ok(SiteConfig {
            text: text.unwrap_or_default(),
            path: self.site.path().display().to_string(),
            history,
            apply: self.state().clone(),
            check_s,
        })
    }

    /// `text` read as the site layer on top of the shipped file: every mistake, else what it
    /// changes; with the result when it is valid.
    pub(crate) fn check(&self, text: &str) -> Result<(Checked, Option<config::Loaded>), String> {
        let read = config::shipped_layer(&self.source)
            .and_then(|shipped| config::load_with_site(shipped, self.site.clone(), Some(text)));
        match read {
            Err(errors) => Ok((
                Checked {
                    problems: self.problems(errors),
                    changes: Vec::new(),
                },
                None,
            )),
            Ok(loaded) => {
                let changes =
                    diff(&self.running().layers, &loaded.layers).map_err(|e| e.to_string())?;
                Ok((
                    Checked {
                        problems: Vec::new(),
                        changes,
                    },
                    Some(loaded),
                ))
            }
        }
    }

    pub(crate) fn kept(&self, number: u64) -> Result<String, String> {
        self.site.version(number).map_err(|e| e.to_string())
    }

    /// Validates `text` and hands it to the service loop, unless an apply runs already or the
    /// change is one the page must not make.
    pub(crate) fn apply(&self, text: &str, user: &str) -> Result<(), ApplyRefusal> {
        // Held throughout: two applies at the same instant cannot both start.
        let mut state = self.state();
        if matches!(*state, ApplyState::Applying { .. }) {
            return Err(ApplyRefusal::Busy);
        }
        let (checked, loaded) = self.check(text).map_err(ApplyRefusal::Refused)?;
        let Some(loaded) = loaded else {
            return Err(ApplyRefusal::Invalid(checked));
        };
        let check = {
            let running = self.running();
            refusal(&running.settings, &loaded.settings).map_err(ApplyRefusal::Refused)?;
            running.settings.web.as_ref().map(|w| w.apply_check)
        };
        let check_s = loaded
            .settings
            .web
            .as_ref()
            .map(|w| w.apply_check)
            .or(check)
            .unwrap_or_default()
            .as_secs();
        let request = ApplyRequest {
            text: text.to_owned(),
            settings: loaded.settings,
            layers: loaded.layers,
            by: user.to_owned(),
            save_site: true,
            restore_file: None,
        };
        tracing::info!(user, "Web UI: applying a new site configuration");
        self.start(&mut state, request, check_s)
    }

    /// Hands `request` to the service loop; `state` is held by the caller.
    fn start(
        &self,
        state: &mut ApplyState,
        request: ApplyRequest,
        check_s: u64,
    ) -> Result<(), ApplyRefusal> {
        let by = request.by.clone();
        self.requests.try_send(Box::new(request)).map_err(|_| {
            ApplyRefusal::Refused(
                "the gateway takes no new configuration now (it is stopping)".into(),
            )
        })?;
        *state = ApplyState::Applying {
            by,
            started_s: now_s(),
            check_s,
        };
        Ok(())
    }

    /// A certificate request for the uplink's key (PEM).
    pub(crate) fn uplink_csr(&self) -> Result<String, String> {
        let settings = self.running().settings.clone();
        crate::web_certs::uplink_csr(&settings, &self.keys)
    }

    /// Checks `pem` as the uplink's new certificate, writes it where `uplink.cert_file`
    /// points and restarts the components on it like an apply: kept if the gateway stays
    /// healthy (the uplink connected again), else the previous file returns.
    pub(crate) fn upload_uplink_cert(&self, pem: &str, user: &str) -> Result<(), ApplyRefusal> {
        let mut state = self.state();
        if matches!(*state, ApplyState::Applying { .. }) {
            return Err(ApplyRefusal::Busy);
        }
        let (settings, layers) = {
            let running = self.running();
            (running.settings.clone(), running.layers.clone())
        };
        let (path, text) = crate::web_certs::checked_upload(&settings, &self.keys, pem)
            .map_err(ApplyRefusal::Refused)?;
        let previous = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ApplyRefusal::Refused(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        fieldlink_core::private_fs::replace_atomically(&path, text.as_bytes())
            .map_err(|e| ApplyRefusal::Refused(format!("cannot write {}: {e}", path.display())))?;
        let check_s = settings.web.as_ref().map_or(0, |w| w.apply_check.as_secs());
        tracing::info!(user, path = %path.display(), "Web UI: applying a new uplink certificate");
        let request = ApplyRequest {
            text: String::new(),
            settings,
            layers,
            by: user.to_owned(),
            save_site: false,
            restore_file: Some((path, previous)),
        };
        self.start(&mut state, request, check_s)
    }

    /// The apply passed its check: it is the running configuration now.
    pub(crate) fn kept_now(&self, request: ApplyRequest, summary: String) {
        tracing::info!(user = %request.by, "{summary}");
        *self.running() = Running {
            layers: request.layers,
            settings: request.settings,
        };
        *self.state() = ApplyState::Kept {
            by: request.by,
            ended_s: now_s(),
            summary,
        };
    }

    /// The apply failed: the previous configuration runs again.
    pub(crate) fn rolled_back(&self, by: String, why: String) {
        tracing::warn!(user = %by, "New site configuration rolled back: {why}");
        *self.state() = ApplyState::RolledBack {
            by,
            ended_s: now_s(),
            why,
        };
    }

    /// The mistakes of a proposal: those of its own text carry its lines (the page's).
    fn problems(&self, errors: ConfigErrors) -> Vec<Problem> {
        let proposal = Origin::File(self.site.path());
        errors
            .0
            .into_iter()
            .map(|e| {
                let mut text = String::new();
                if let Some(value) = &e.value {
                    text.push_str(&format!("= {value}: "));
                }
                text.push_str(&e.problem);
                if !e.hint.is_empty() {
                    text.push_str(&format!(" (hint: {})", e.hint));
                }
                Problem {
                    in_proposal: e.origin == proposal,
                    file: if e.origin == proposal {
                        "proposed site configuration".into()
                    } else {
                        e.origin.to_string()
                    },
                    line: e.position.map(|(line, _)| line),
                    column: e.position.map(|(_, column)| column),
                    key: e.key,
                    text,
                }
            })
            .collect()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ApplyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why `proposed` cannot be applied from the page, in words.
fn refusal(running: &Settings, proposed: &Settings) -> Result<(), String> {
    match (&running.web, &proposed.web) {
        (Some(now), Some(next)) if now.same_ui(next) => {}
        _ => {
            return Err(
                "it changes how the web UI itself is served ([web]: its address, port, \
                 certificate, TLS or sessions), which would cut this browser off. Change those \
                 with `fieldlink config set web.KEY VALUE` and restart the service \
                 (systemctl restart fieldlink)"
                    .into(),
            );
        }
    }
    let router_keys = fieldlink_broker::router_keys_changed(&running.broker, &proposed.broker);
    if !router_keys.is_empty() {
        return Err(format!(
            "it changes {}, which size the local broker's router: that takes a restart of the \
             service (rumqttd's router cannot be replaced while the gateway runs). Change them \
             with `fieldlink config set broker.KEY VALUE` and restart the service \
             (systemctl restart fieldlink)",
            router_keys.join(", ")
        ));
    }
    if running.keys != proposed.keys {
        return Err(
            "it changes [keys] (the token the UI's own key may be in). Change it with \
             `fieldlink config set keys.KEY VALUE` and restart the service \
             (systemctl restart fieldlink)"
                .into(),
        );
    }
    Ok(())
}

/// The values the layers set, running against proposed, key by key (as written; secrets
/// redacted by [`fieldlink_core::config::effective`]).
fn diff(running: &Layers, proposed: &Layers) -> Result<Vec<Change>, ConfigErrors> {
    let values = |layers: &Layers| -> Result<BTreeMap<String, String>, ConfigErrors> {
        Ok(fieldlink_core::config::effective(layers)?
            .into_iter()
            .map(|s| (s.key, s.value))
            .collect())
    };
    let (old, new) = (values(running)?, values(proposed)?);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter(|key| old.get(*key) != new.get(*key))
        .map(|key| Change {
            key: key.clone(),
            old: old.get(key).cloned(),
            new: new.get(key).cloned(),
        })
        .collect())
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldlink_core::config::LayerKind;

    fn layers(shipped: &str, site: Option<&str>) -> Layers {
        let mut layers = Layers::new();
        layers.push(
            Origin::File("/etc/fieldlink.toml".into()),
            shipped,
            LayerKind::Shipped,
        );
        if let Some(site) = site {
            layers.push(
                Origin::File("/var/site.toml".into()),
                site,
                LayerKind::Site { fixed: &[] },
            );
        }
        layers
    }

    #[test]
    fn the_diff_names_each_changed_key_and_hides_secrets() {
        let shipped = "[queue]\nmax_bytes = 1000\n[uplink]\nhost = \"a\"\npassword_file = \"/p\"\n";
        let running = layers(shipped, None);
        let proposed = layers(
            shipped,
            Some("[queue]\nmax_bytes = 2000\nmax_age = \"1d\"\n[uplink]\npassword_file = \"/q\"\n"),
        );
        let changes = diff(&running, &proposed).unwrap();
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        // The secret file's name is redacted on both sides, so it shows no change.
        assert_eq!(keys, ["queue.max_age", "queue.max_bytes"]);
        assert_eq!(changes[0].old, None);
        assert_eq!(changes[0].new.as_deref(), Some("\"1d\""));
        assert_eq!(changes[1].old.as_deref(), Some("1000"));
        assert_eq!(changes[1].new.as_deref(), Some("2000"));
        assert!(diff(&running, &running).unwrap().is_empty());
    }

    #[test]
    fn the_page_may_not_move_the_ui_or_change_its_keys_but_may_time_its_check() {
        let base = Settings {
            web: Some(fieldlink_web::config::WebSettings::default()),
            ..Settings::default()
        };
        let mut longer_check = base.clone();
        longer_check.web.as_mut().unwrap().apply_check = std::time::Duration::from_secs(60);
        assert_eq!(refusal(&base, &longer_check), Ok(()));
        let mut moved = base.clone();
        moved.web.as_mut().unwrap().listen.set_port(9443);
        assert!(
            refusal(&base, &moved)
                .unwrap_err()
                .contains("fieldlink config set")
        );
        let off = Settings {
            web: None,
            ..base.clone()
        };
        assert!(refusal(&base, &off).is_err());
    }
}
