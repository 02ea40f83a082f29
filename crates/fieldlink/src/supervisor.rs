//! The supervisor: every component's long-lived tasks run on a [`Shutdown`] phase of ours,
//! which records a vital task that ends early or panics; the supervisor also probes what has
//! no task of ours to watch (the queue writer stuck in a commit, rumqttd's router thread).
//!
//! A failed component is marked down on the status board, which stops the systemd watchdog,
//! and [`crate::Gateway::run_until`] returns so that the gateway stops cleanly and the service
//! manager starts it again (`Restart=on-failure`, after `RestartSec`). No component is
//! restarted in place: each dead task took state with it that the rest relies on (the queue
//! writer its connection and leases, the drain its in-flight bookkeeping, a poller its port),
//! and a fresh process rebuilds all of it from the durable queue, losing nothing.

use std::sync::Arc;
use std::time::Duration;

use fieldlink_core::ports::{Health, StatusBoard, StatusReporter};
use fieldlink_core::shutdown::{Shutdown, TaskFailure};
use fieldlink_queue::Queue;

/// How often liveness is probed.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A queue writer that has not answered for this long is degraded (a slow or failing disk)...
const QUEUE_SLOW: Duration = Duration::from_secs(10);
/// ...and for this long, down: every publish waits on it.
const QUEUE_STALLED: Duration = Duration::from_secs(60);

/// How the gateway tells a watchdog that it is alive.
pub struct Watchdog {
    /// How often to ping.
    pub every: Duration,
    /// The ping (systemd's `WATCHDOG=1`).
    pub ping: Box<dyn FnMut() + Send>,
}

/// Starts the supervisor's tasks on `upkeep`: failures marked on `board`, the queue writer and
/// the router probed.
pub(crate) fn start(
    upkeep: &Shutdown,
    board: &StatusBoard,
    queue: Queue,
    queue_health: StatusReporter,
    router_alive: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    upkeep.spawn(mark_failures(
        upkeep.failures(),
        board.clone(),
        upkeep.clone(),
    ));
    upkeep.spawn(probe_queue(queue, queue_health, upkeep.clone()));
    upkeep.spawn(probe_router(router_alive, upkeep.clone()));
}

/// Each failure recorded marks its component down.
async fn mark_failures(
    mut failures: tokio::sync::watch::Receiver<Vec<TaskFailure>>,
    board: StatusBoard,
    upkeep: Shutdown,
) {
    let mut marked = 0;
    loop {
        let new: Vec<TaskFailure> = failures.borrow_and_update()[marked..].to_vec();
        marked += new.len();
        for failure in new {
            board.fail(failure.component, failure.to_string());
        }
        tokio::select! {
            changed = failures.changed() => if changed.is_err() { return },
            () = upkeep.cancelled() => return,
        }
    }
}

/// The queue writer answers a ping between two commits: slow is degraded, stuck is down.
async fn probe_queue(queue: Queue, health: StatusReporter, upkeep: Shutdown) {
    let mut slow = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(PROBE_EVERY) => {}
            () = upkeep.cancelled() => return,
        }
        let ping = queue.ping();
        tokio::pin!(ping);
        let answered = tokio::select! {
            answered = tokio::time::timeout(QUEUE_SLOW, &mut ping) => answered,
            () = upkeep.cancelled() => return,
        };
        let answered = match answered {
            Ok(answered) => answered,
            Err(_) => {
                slow = true;
                health.set(Health::Degraded(format!(
                    "the queue writer has not answered for {} s: a slow or failing disk?",
                    QUEUE_SLOW.as_secs()
                )));
                tokio::select! {
                    answered = tokio::time::timeout(QUEUE_STALLED - QUEUE_SLOW, ping) => match answered {
                        Ok(answered) => answered,
                        Err(_) => {
                            upkeep.record(TaskFailure {
                                component: "queue",
                                task: "the queue writer".into(),
                                reason: format!("has not answered for {} s", QUEUE_STALLED.as_secs()),
                            });
                            return;
                        }
                    },
                    () = upkeep.cancelled() => return,
                }
            }
        };
        match answered {
            Ok(()) if slow => {
                slow = false;
                health.set(Health::Up);
            }
            Ok(()) => {}
            // Its own task's failure is recorded (a panic); the probe has nothing to add.
            Err(_) => return,
        }
    }
}

/// rumqttd's router runs on a thread of its own, which ends only by a panic.
async fn probe_router(router_alive: Arc<dyn Fn() -> bool + Send + Sync>, upkeep: Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(PROBE_EVERY) => {}
            () = upkeep.cancelled() => return,
        }
        if !router_alive() {
            upkeep.record(TaskFailure {
                component: "broker",
                task: "rumqttd's router thread".into(),
                reason: "ended".into(),
            });
            return;
        }
    }
}
