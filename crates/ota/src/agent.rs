//! The agent: takes install requests from the local bus (where the uplink publishes the
//! cloud's commands), runs one update at a time through download, verification, RAUC's
//! install, the reboot and the health check, and reports each step through the queue.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fieldlink_core::message::Message;
use fieldlink_core::ports::{BusError, Health, LocalBus, Outbox, StatusBoard, StatusReporter};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::topic::TopicFilter;
use rustls::ClientConfig;
use tokio::sync::{mpsc, watch};

use crate::config::OtaSettings;
use crate::download::{Downloader, sha256_file};
use crate::health::{self, COMPONENT};
use crate::rauc::Rauc;
use crate::report::{Report, Reporter};
use crate::request::{self, InstallRequest};
use crate::state::{self, CheckBegan, Job, Phase, State};
use crate::{boot, reboot, version};

/// Requests waiting to be read, at most.
const COMMAND_BACKLOG: usize = 16;
/// How often RAUC is tried again while it cannot be reached.
const RAUC_RETRY: Duration = Duration::from_secs(5);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtaError {
    /// The command topic could not be subscribed to.
    #[error("cannot subscribe to the OTA command topic: {0}")]
    Bus(#[from] BusError),
    /// The download directory cannot be made.
    #[error("cannot make the OTA download directory {path:?}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What the agent is plugged into.
#[derive(Clone)]
pub struct Ports {
    /// The durable queue its reports go through.
    pub outbox: Arc<dyn Outbox>,
    /// The local bus its requests arrive on.
    pub bus: Arc<dyn LocalBus>,
    /// The status board: its own health, and the health check's source.
    pub board: StatusBoard,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

/// Starts the agent as a vital task of `shutdown`: requests are taken from now on.
pub fn start(
    settings: OtaSettings,
    download_dir: PathBuf,
    tls: Arc<ClientConfig>,
    ports: Ports,
    shutdown: &Shutdown,
) -> Result<(), OtaError> {
    std::fs::create_dir_all(&download_dir).map_err(|source| OtaError::Dir {
        path: download_dir.clone(),
        source,
    })?;
    let filter = TopicFilter::new(settings.command_topic.as_str())
        .map_err(|e| BusError::Refused(e.to_string()))?;
    let commands = ports.bus.subscribe(&filter, COMMAND_BACKLOG)?;
    let status = ports.board.register(COMPONENT);
    let ctx = Ctx {
        downloader: Downloader::new(
            tls,
            settings.download_timeout,
            settings.download_attempts,
            settings.keep_free,
            settings.max_bundle_bytes,
        ),
        reporter: Reporter::new(ports.outbox, settings.status_topic.clone()),
        board: ports.board,
        settings: Arc::new(settings),
        dir: Arc::from(download_dir),
        status,
        shutdown: shutdown.clone(),
    };
    shutdown.spawn_vital(COMPONENT, "the OTA agent", run(ctx, commands));
    Ok(())
}

#[derive(Clone)]
struct Ctx {
    settings: Arc<OtaSettings>,
    dir: Arc<Path>,
    downloader: Downloader,
    reporter: Reporter,
    board: StatusBoard,
    status: StatusReporter,
    shutdown: Shutdown,
}

type JobFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run(ctx: Ctx, mut commands: mpsc::Receiver<Message>) {
    let Some(rauc) = connect(&ctx).await else {
        return;
    };
    let mut state = match state::load(&ctx.dir) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!("{e}");
            ctx.status.set(Health::Degraded(e.to_string()));
            State::default()
        }
    };
    refresh_slots(&rauc, &mut state).await;
    save(&ctx, &state);
    let mut running: Option<(String, JobFuture)> = resume(&ctx, &rauc, state.clone());
    if !matches!(
        ctx.board.snapshot().get(COMPONENT),
        Some(Health::Degraded(_))
    ) {
        ctx.status.set(Health::Up);
    }
    loop {
        let job_done = async {
            match running.as_mut() {
                Some((_, job)) => job.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            () = job_done => {
                running = None;
                // The job wrote its end into the file; read it back for the next one.
                state = state::load(&ctx.dir).unwrap_or_default();
            }
            command = commands.recv() => {
                let Some(command) = command else {
                    // The local broker stops with the gateway.
                    ctx.shutdown.cancelled().await;
                    return;
                };
                if let Some(job) = take(&ctx, &rauc, &state, running.as_ref().map(|r| r.0.as_str()), command).await {
                    running = Some(job);
                }
            }
        }
    }
}

/// Connects to RAUC, trying again every few seconds (degraded meanwhile); `None` at shutdown.
async fn connect(ctx: &Ctx) -> Option<Rauc> {
    loop {
        match Rauc::connect(&ctx.settings.dbus).await {
            Ok(rauc) => return Some(rauc),
            Err(e) => {
                tracing::warn!("OTA: {e}");
                ctx.status.set(Health::Degraded(e.to_string()));
            }
        }
        tokio::select! {
            () = ctx.shutdown.cancelled() => return None,
            () = tokio::time::sleep(RAUC_RETRY) => {}
        }
    }
}

async fn refresh_slots(rauc: &Rauc, state: &mut State) {
    match (rauc.boot_slot().await, rauc.slots().await) {
        (Ok(booted), Ok(slots)) => {
            state.booted = Some(booted);
            state.slots = slots;
        }
        (Err(e), _) | (_, Err(e)) => tracing::warn!("OTA: cannot read RAUC's slots: {e}"),
    }
}

fn save(ctx: &Ctx, state: &State) {
    if let Err(e) = state::save(&ctx.dir, state) {
        tracing::error!("{e}");
        ctx.status.set(Health::Degraded(e.to_string()));
    }
}

/// A request: refused (answered on the status topic) or its job.
async fn take(
    ctx: &Ctx,
    rauc: &Rauc,
    state: &State,
    running: Option<&str>,
    command: Message,
) -> Option<(String, JobFuture)> {
    let id = request::request_id(&command.payload);
    let refuse = |error: String, running: Option<String>| Report {
        id: id.clone(),
        state: "refused",
        error: Some(error),
        running,
        ..Report::default()
    };
    let request = match request::parse(&command.payload) {
        Ok(request) => request,
        Err(e) => {
            ctx.reporter.note(refuse(e.to_string(), None)).await;
            return None;
        }
    };
    if let Some(running) = running {
        let error = format!("another update is running: {running}");
        ctx.reporter
            .note(refuse(error, Some(running.to_owned())))
            .await;
        return None;
    }
    if !request.allow_downgrade && version::is_downgrade(state.running_version(), &request.version)
    {
        let error = format!(
            "{} is older than the running {}: a downgrade must say \"allow_downgrade\": true",
            request.version,
            state.running_version().unwrap_or("?")
        );
        ctx.reporter.note(refuse(error, None)).await;
        return None;
    }
    let mut state = state.clone();
    state.job = Some(Job {
        request: request.clone(),
        phase: Phase::Downloading,
        from_slot: state.booted.clone(),
        from_version: state.running_version().map(str::to_owned),
        to_slot: None,
        result: None,
        started_ms: fieldlink_core::clock::wall_ms(),
        finished_ms: None,
        reboot_asked_in: None,
        check_began: None,
    });
    save(ctx, &state);
    ctx.reporter
        .note(progress_report(&request, "accepted", None, None))
        .await;
    let job = install(ctx.clone(), rauc.clone(), state);
    Some((request.id, Box::pin(job)))
}

/// What to do with the update the state file holds, after a start of fieldlink.
fn resume(ctx: &Ctx, rauc: &Rauc, state: State) -> Option<(String, JobFuture)> {
    let job = state.job.clone()?;
    let id = job.request.id.clone();
    let back_on_old_slot = state.booted.is_some() && state.booted == job.from_slot;
    let (ctx, rauc) = (ctx.clone(), rauc.clone());
    let future: JobFuture = match job.phase {
        phase if phase.is_final() => return None,
        Phase::Downloading | Phase::Installing => {
            tracing::info!(id, "OTA: resuming the update after a restart");
            Box::pin(install(ctx, rauc, state))
        }
        Phase::Installed if back_on_old_slot => Box::pin(reboot_when_due(ctx, state)),
        // Still the boot in which the reboot was asked for: fieldlink restarted before the
        // reboot came (or it was refused). Not a rollback: ask again.
        Phase::Rebooting
            if back_on_old_slot
                && job.reboot_asked_in.is_some()
                && job.reboot_asked_in == boot::id() =>
        {
            tracing::warn!(
                id,
                "OTA: the reboot asked for before the restart has not come"
            );
            Box::pin(reboot_now(ctx, state, "rebooting"))
        }
        // Back on the old slot after the update's reboot; also during the health check (the
        // new slot stopped, a watchdog reset, and the bootloader ran out of tries): checking
        // the old slot now would report a kept update that is not running.
        Phase::Rebooting | Phase::Checking | Phase::MarkedBad if back_on_old_slot => {
            Box::pin(rolled_back(ctx, state))
        }
        Phase::MarkedBad => Box::pin(reboot_now(ctx, state, "health-failed")),
        Phase::Installed | Phase::Rebooting | Phase::Checking => {
            Box::pin(check_health(ctx, rauc, state))
        }
        _ => return None,
    };
    Some((id, future))
}

fn progress_report(
    request: &InstallRequest,
    state: &'static str,
    progress: Option<u8>,
    message: Option<String>,
) -> Report {
    Report {
        id: Some(request.id.clone()),
        state,
        version: Some(request.version.clone()),
        progress,
        message,
        ..Report::default()
    }
}

/// Records the job's phase in the file.
fn advance(ctx: &Ctx, state: &mut State, phase: Phase, result: Option<String>) {
    if let Some(job) = state.job.as_mut() {
        job.phase = phase;
        if result.is_some() {
            job.result = result;
        }
        if phase.is_final() {
            job.finished_ms = Some(fieldlink_core::clock::wall_ms());
        }
    }
    save(ctx, state);
}

fn request_of(state: &State) -> InstallRequest {
    // Every job future is made from a state holding its job (take, resume).
    state
        .job
        .as_ref()
        .map(|j| j.request.clone())
        .expect("a job")
}

/// Ends the job as failed: nothing was installed.
async fn fail(ctx: &Ctx, mut state: State, error: String) {
    let request = request_of(&state);
    advance(ctx, &mut state, Phase::Failed, Some(error.clone()));
    ctx.reporter
        .note(Report {
            id: Some(request.id),
            state: "failed",
            version: Some(request.version),
            error: Some(error),
            ..Report::default()
        })
        .await;
}

/// Download, verify, install; then the reboot when due.
async fn install(ctx: Ctx, rauc: Rauc, mut state: State) {
    let request = request_of(&state);
    advance(&ctx, &mut state, Phase::Downloading, None);
    let bundle = ctx.dir.join(format!("{}.raucb", request.sha256));
    let part = ctx.dir.join(format!("{}.raucb.part", request.sha256));
    remove_other_downloads(&ctx.dir, &request.sha256);
    if !bundle.exists() {
        if let Err(e) = download(&ctx, &request, &part).await {
            return fail(&ctx, state, e).await;
        }
        if let Err(e) = std::fs::rename(&part, &bundle) {
            return fail(&ctx, state, format!("cannot keep the download: {e}")).await;
        }
    }
    // The SHA-256 first: nothing reads the bundle (not even RAUC) before it matches.
    ctx.reporter
        .note(progress_report(&request, "verifying", None, None))
        .await;
    match sha256_file(&bundle).await {
        Ok(sum) if sum == request.sha256 => {}
        Ok(sum) => {
            let _ = std::fs::remove_file(&bundle);
            let error = format!(
                "SHA-256 mismatch: the request says {}, the download is {sum}; deleted, nothing \
                 installed",
                request.sha256
            );
            return fail(&ctx, state, error).await;
        }
        Err(e) => return fail(&ctx, state, format!("cannot read the download: {e}")).await,
    }
    let path = bundle.to_string_lossy().into_owned();
    // RAUC reads the manifest (its signature checked) for the version. When it refuses, its
    // D-Bus `Info` says only "rauc info error": the install below is refused for the same
    // reason (signature, format) before anything is written, and `LastError` has the words.
    let bundle_version = match rauc.info(&path).await {
        Ok((_, version)) => Some(version),
        Err(e) => {
            tracing::warn!(id = request.id, "OTA: RAUC cannot read the bundle: {e}");
            None
        }
    };
    if let Some(bundle_version) = &bundle_version {
        if version::Version::parse(bundle_version) != version::Version::parse(&request.version) {
            let _ = std::fs::remove_file(&bundle);
            let error = format!(
                "the bundle is version {bundle_version}, the request says {}; nothing installed",
                request.version
            );
            return fail(&ctx, state, error).await;
        }
        let running = state.job.as_ref().and_then(|j| j.from_version.clone());
        if !request.allow_downgrade && version::is_downgrade(running.as_deref(), bundle_version) {
            let _ = std::fs::remove_file(&bundle);
            let error = format!(
                "{bundle_version} is older than the running {}: a downgrade must say \
                 \"allow_downgrade\": true",
                running.unwrap_or_default()
            );
            return fail(&ctx, state, error).await;
        }
    }
    advance(&ctx, &mut state, Phase::Installing, None);
    ctx.reporter
        .note(progress_report(&request, "installing", Some(0), None))
        .await;
    let (tx, mut rx) = watch::channel((0i32, String::new()));
    let install = rauc.install(&path, |percent, message| {
        tx.send_replace((percent, message));
    });
    tokio::pin!(install);
    let result = loop {
        tokio::select! {
            result = &mut install => break result,
            Ok(()) = rx.changed() => {
                let (percent, message) = rx.borrow_and_update().clone();
                let percent = u8::try_from(percent.clamp(0, 100)).unwrap_or(0);
                ctx.reporter
                    .note(progress_report(&request, "installing", Some(percent), Some(message)))
                    .await;
            }
        }
    };
    let _ = std::fs::remove_file(&bundle);
    if let Err(e) = result {
        return fail(&ctx, state, format!("RAUC refused the bundle: {e}")).await;
    }
    refresh_slots(&rauc, &mut state).await;
    // RAUC installs into a slot that is not booted (A/B: the other one).
    let primary = state
        .slots
        .iter()
        .find(|s| s.bootname.is_some() && s.bootname != state.booted)
        .and_then(|s| s.bootname.clone());
    if let Some(job) = state.job.as_mut() {
        job.to_slot = primary.clone();
    }
    advance(&ctx, &mut state, Phase::Installed, None);
    ctx.reporter
        .note(Report {
            slot: primary,
            ..progress_report(&request, "installed", Some(100), None)
        })
        .await;
    reboot_when_due(ctx, state).await;
}

async fn download(ctx: &Ctx, request: &InstallRequest, part: &Path) -> Result<(), String> {
    let (tx, mut rx) = watch::channel(0u8);
    let fetch = ctx.downloader.fetch(&request.url, part, |p| {
        let Some(total) = p.total.filter(|t| *t > 0) else {
            return;
        };
        let percent = u8::try_from(p.have.saturating_mul(100) / total).unwrap_or(100);
        // One report per ten percent: the queue is no place for every chunk.
        tx.send_if_modified(|shown| {
            let step = percent / 10 > *shown / 10;
            if step {
                *shown = percent;
            }
            step
        });
    });
    tokio::pin!(fetch);
    ctx.reporter
        .note(progress_report(request, "downloading", Some(0), None))
        .await;
    loop {
        tokio::select! {
            result = &mut fetch => {
                return result.map(drop).map_err(|e| {
                    if !e.is_transient() {
                        let _ = std::fs::remove_file(part);
                    }
                    e.to_string()
                });
            }
            Ok(()) = rx.changed() => {
                let percent = *rx.borrow_and_update();
                ctx.reporter
                    .note(progress_report(request, "downloading", Some(percent), None))
                    .await;
            }
        }
    }
}

fn remove_other_downloads(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.ends_with(".raucb") || name.ends_with(".raucb.part")) && !name.starts_with(keep) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Waits for the request's window, then reboots.
async fn reboot_when_due(ctx: Ctx, state: State) {
    let request = request_of(&state);
    if let Some(not_before) = request.not_before {
        let now = u64::try_from(fieldlink_core::clock::wall_ms() / 1000).unwrap_or(0);
        if not_before > now {
            ctx.reporter
                .note(progress_report(
                    &request,
                    "installed",
                    Some(100),
                    Some(format!("rebooting at {not_before} (Unix time)")),
                ))
                .await;
            tokio::time::sleep(Duration::from_secs(not_before - now)).await;
        }
    }
    reboot_now(ctx, state, "rebooting").await;
}

/// Records and reports the reboot (durably: the queue holds the report across it), then
/// asks for it; stays here until the reboot takes the process down.
async fn reboot_now(ctx: Ctx, mut state: State, report: &'static str) {
    let request = request_of(&state);
    if report == "rebooting" {
        if let Some(job) = state.job.as_mut() {
            job.reboot_asked_in = boot::id();
        }
        advance(&ctx, &mut state, Phase::Rebooting, None);
    }
    let message = state.job.as_ref().and_then(|j| j.result.clone());
    let (error, message) = if report == "health-failed" {
        (
            message,
            Some("marked bad; rebooting into the previous slot".to_owned()),
        )
    } else {
        (None, None)
    };
    if let Err(e) = ctx
        .reporter
        .send(Report {
            error,
            ..progress_report(&request, report, None, message)
        })
        .await
    {
        // The reboot goes ahead: the state file has it, and the next boot reports the outcome.
        tracing::warn!(error = %e, "OTA: the reboot report could not be queued");
    }
    tracing::warn!(id = request.id, "OTA: rebooting");
    if let Err(e) = reboot::reboot(&ctx.settings.reboot).await {
        tracing::error!("OTA: {e}");
        ctx.status
            .set(Health::Degraded(format!("the reboot failed: {e}")));
    }
    std::future::pending::<()>().await;
}

/// Booted into the new slot: keep it when healthy, else mark it bad and reboot.
async fn check_health(ctx: Ctx, rauc: Rauc, mut state: State) {
    let request = request_of(&state);
    let deadline = ctx.settings.health_deadline;
    let (left, message) = match health_clock(&mut state, deadline) {
        (left, true) => (
            left,
            Some(format!(
                "resumed after a restart of fieldlink: {} s of the {} s deadline left",
                left.as_secs(),
                deadline.as_secs()
            )),
        ),
        (left, false) => (left, None),
    };
    advance(&ctx, &mut state, Phase::Checking, None);
    ctx.reporter
        .note(Report {
            slot: state.booted.clone(),
            ..progress_report(&request, "checking", None, message)
        })
        .await;
    let outcome = health::wait(
        &ctx.board,
        &ctx.settings.health_checks,
        ctx.settings.health_settle,
        left,
        deadline,
    )
    .await;
    match outcome {
        Ok(()) => match rauc.mark_booted("good").await {
            Ok(message) => {
                refresh_slots(&rauc, &mut state).await;
                advance(&ctx, &mut state, Phase::Done, Some(message.clone()));
                ctx.reporter
                    .note(Report {
                        slot: state.booted.clone(),
                        ..progress_report(&request, "done", None, Some(message))
                    })
                    .await;
            }
            Err(e) => {
                let error = format!("healthy, but RAUC could not mark the slot good: {e}");
                mark_bad_and_reboot(ctx, rauc, state, error).await;
            }
        },
        Err(problem) => {
            mark_bad_and_reboot(ctx, rauc, state, format!("health check failed: {problem}")).await;
        }
    }
}

/// How much of the health check's `deadline` is left, and whether the check is resumed: a
/// check begun earlier in this boot (fieldlink restarted during it) keeps its deadline; one
/// begun in another boot, or never, begins now (the bootloader's attempts bound the boots).
fn health_clock(state: &mut State, deadline: Duration) -> (Duration, bool) {
    let (Some(job), Some(boot), Some(now)) = (state.job.as_mut(), boot::id(), boot::uptime())
    else {
        return (deadline, false);
    };
    let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
    match &job.check_began {
        Some(began) if began.boot == boot => {
            let spent = Duration::from_millis(now_ms.saturating_sub(began.uptime_ms));
            (deadline.saturating_sub(spent), true)
        }
        _ => {
            job.check_began = Some(CheckBegan {
                boot,
                uptime_ms: now_ms,
            });
            (deadline, false)
        }
    }
}

async fn mark_bad_and_reboot(ctx: Ctx, rauc: Rauc, mut state: State, error: String) {
    if let Err(e) = rauc.mark_booted("bad").await {
        tracing::error!("OTA: RAUC could not mark the slot bad: {e}");
    }
    advance(&ctx, &mut state, Phase::MarkedBad, Some(error));
    reboot_now(ctx, state, "health-failed").await;
}

/// Back on the previous slot after the update's reboot: the update is rolled back.
async fn rolled_back(ctx: Ctx, mut state: State) {
    let request = request_of(&state);
    let why = match state.job.as_ref().map(|j| (j.phase, j.result.clone())) {
        Some((Phase::MarkedBad, Some(result))) => result,
        Some((Phase::Checking, _)) => {
            "the new slot stopped during its health check; the bootloader went back".to_owned()
        }
        _ => "the new slot did not come up; the bootloader went back".to_owned(),
    };
    advance(&ctx, &mut state, Phase::RolledBack, Some(why.clone()));
    ctx.reporter
        .note(Report {
            error: Some(why),
            slot: state.booted.clone(),
            ..progress_report(&request, "rolled-back", None, None)
        })
        .await;
}
