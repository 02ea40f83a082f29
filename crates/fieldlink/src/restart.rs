//! Apply with automatic rollback: the components restart in process on a proposed site
//! configuration while the web UI keeps running, their health is watched for `[web]
//! apply_check`, and only then is the proposal written as the site layer (its history keeps
//! the previous one). Otherwise the components restart on the previous configuration and the
//! page says why.
//!
//! Nothing is lost across a restart: the components stop as on a service stop (intake first,
//! the uplink writes the acknowledgements it has, the queue commits and closes its file) and
//! the queue is opened again from that file; a device write in flight is answered by the
//! device or fails with its session's end; the UI answers "restarting" meanwhile. The proposal
//! is written aside first (`site.trial.toml`), and `site.toml` changes only once it is kept:
//! a crash or power cut during the trial restarts the gateway on the previous version.

use std::collections::BTreeMap;
use std::time::Duration;

use fieldlink_core::ports::Health;
use fieldlink_core::shutdown::TaskFailure;

use crate::reconfigure::ApplyRequest;
use crate::{Core, Gateway};

/// Tries `request`; `Err` only when the previous configuration could not be started again
/// either (the gateway must then be restarted by its service manager, which reads the
/// unchanged site layer).
pub(crate) async fn apply(gateway: &mut Gateway, request: ApplyRequest) -> Result<(), TaskFailure> {
    let Some(editor) = gateway.front().and_then(|f| f.editor.clone()) else {
        return Ok(());
    };
    let (previous, before, uplink_was_connected) = match gateway.running() {
        Some(core) => (
            core.settings.clone(),
            core.status.snapshot(),
            core.uplink
                .as_ref()
                .is_some_and(|u| u.watch().borrow().state.is_connected()),
        ),
        None => return Ok(()),
    };
    let window = request
        .settings
        .web
        .as_ref()
        .map_or(Duration::from_secs(20), |w| w.apply_check);
    if request.save_site
        && let Err(e) = editor.site().write_trial(&request.text)
    {
        editor.rolled_back(
            request.by,
            format!("the proposal could not be written aside ({e}); nothing was changed."),
        );
        return Ok(());
    }

    let restart = std::time::Instant::now();
    stop_components(gateway).await;
    let tried = match gateway.start_core(request.settings.clone()).await {
        Err(e) => Err(format!("the gateway did not start on it: {e:#}.")),
        Ok(()) => match gateway.running() {
            Some(core) => {
                tracing::info!(
                    ms = restart.elapsed().as_millis() as u64,
                    check_s = window.as_secs(),
                    "Components restarted on the proposed configuration: checking their health"
                );
                health_check(core, &before, uplink_was_connected, window).await
            }
            None => Err("the gateway did not start on it.".into()),
        },
    };
    let kept = tried.and_then(|summary| {
        if !request.save_site {
            return Ok(summary);
        }
        editor
            .site()
            .write(&request.text)
            .map(|()| summary)
            .map_err(|e| format!("it ran well but could not be saved ({e})."))
    });
    if let Err(e) = editor.site().remove_trial() {
        tracing::warn!(error = %e, "The proposal written aside could not be removed");
    }
    match kept {
        Ok(summary) => {
            editor.kept_now(request, summary);
            Ok(())
        }
        Err(mut why) => {
            stop_components(gateway).await;
            if let Some((path, previous)) = &request.restore_file {
                let put_back = match previous {
                    Some(bytes) => fieldlink_core::private_fs::replace_atomically(path, bytes),
                    None => std::fs::remove_file(path),
                };
                if let Err(e) = put_back {
                    why.push_str(&format!(
                        " The previous {} could not be put back: {e}.",
                        path.display()
                    ));
                }
            }
            let again = gateway.start_core(previous).await;
            match again {
                Ok(()) => {
                    editor.rolled_back(request.by, why);
                    Ok(())
                }
                Err(e) => {
                    let reason =
                        format!("could not start again on the previous configuration: {e:#}");
                    editor.rolled_back(request.by, format!("{why} Then the gateway {reason}."));
                    Err(TaskFailure {
                        component: "gateway",
                        task: "restart after a rolled-back configuration".into(),
                        reason,
                    })
                }
            }
        }
    }
}

/// Stops the running components as a service stop does; the UI answers "restarting" meanwhile.
async fn stop_components(gateway: &mut Gateway) {
    if let Some(front) = gateway.front() {
        front.port.attach(None);
    }
    if let Some(core) = gateway.take_core()
        && !core.stop().await
    {
        tracing::warn!("The grace period ran out while the components stopped for a restart");
    }
}

/// Watches the restarted components for `window`: a component failing ends the check at once;
/// at its end every component must be up, except one that was already degraded before (an
/// unplugged meter is not the new configuration's fault), and the uplink must be connected
/// again if it was connected before. The reason in plain words when not.
async fn health_check(
    core: &Core,
    before: &BTreeMap<&'static str, Health>,
    uplink_was_connected: bool,
    window: Duration,
) -> Result<String, String> {
    let secs = window.as_secs();
    tokio::select! {
        failure = core.failed() => {
            return Err(format!("the {} component failed during the check: {failure}.", failure.component));
        }
        () = tokio::time::sleep(window) => {}
    }
    if uplink_was_connected && let Some(uplink) = &core.uplink {
        let status = uplink.watch().borrow().clone();
        if !status.state.is_connected() {
            let last = status
                .last_error
                .map(|e| format!(" Its last error: {e}."))
                .unwrap_or_default();
            return Err(format!(
                "the uplink was connected before, and did not connect again within {secs} s \
                 (it is {}).{last}",
                status.state
            ));
        }
    }
    for (name, health) in core.status.snapshot() {
        let was_degraded = matches!(before.get(name), Some(Health::Degraded(_)));
        let problem = match health {
            Health::Up => continue,
            Health::Down(why) => format!("is down: {why}"),
            Health::Degraded(_) if name == "uplink" || was_degraded => continue,
            Health::Degraded(why) => format!("is not working fully: {why}"),
            Health::Starting => "has not finished starting".to_owned(),
            Health::Stopped => "has stopped".to_owned(),
        };
        return Err(format!("after {secs} s, the {name} component {problem}."));
    }
    Ok(format!(
        "every component was healthy after {secs} s{}.",
        if uplink_was_connected {
            ", the uplink connected again"
        } else {
            ""
        }
    ))
}
