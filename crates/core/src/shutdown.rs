//! The process-wide shutdown token, and the record of tasks that died.
//!
//! One [`Shutdown`] per stop phase is made in the binary and cloned into the components of that
//! phase. A component selects on [`Shutdown::cancelled`] in its loop, and spawns its tasks
//! through [`Shutdown::spawn`] (or [`Shutdown::spawn_vital`]) so that the binary can wait for
//! all of them to finish, within a grace period, and learns when one of them dies.
//!
//! A *vital* task is one whose component stops working without it (the queue's writer, an
//! accept loop, the uplink's drain). Ending before the phase's signal, or panicking at any
//! time, is recorded as a [`TaskFailure`], which the binary's supervisor watches through
//! [`Shutdown::failures`]: it marks the component down and restarts the process cleanly.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// At most this many failures are kept (the first ones say what went wrong).
const MAX_FAILURES: usize = 32;

/// A cloneable shutdown signal plus the set of tasks that must finish before the process exits.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
    /// Shared by every phase made from the same root.
    failures: Arc<watch::Sender<Vec<TaskFailure>>>,
}

/// A vital task that ended while it should have kept running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// The component it belongs to, as on the status board.
    pub component: &'static str,
    /// What the task does, in words.
    pub task: String,
    /// "ended" or "panicked: …".
    pub reason: String,
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.task, self.reason)
    }
}

impl Shutdown {
    /// A fresh, untriggered signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// A later stop phase: a signal and a task set of its own, its failures recorded with
    /// this one's.
    pub fn phase(&self) -> Self {
        Self {
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            failures: self.failures.clone(),
        }
    }

    /// Starts the shutdown: every [`cancelled`](Self::cancelled) future resolves.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has started.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Spawns a task that the final [`drain`](Self::drain) waits for, whose end is nobody's
    /// concern (a connection's session, a subscription whose reader may go away).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Spawns a task of `component` that must run until the signal: if it ends before, or
    /// panics, a [`TaskFailure`] is recorded. The handle resolves once the task has ended
    /// (and its failure, if any, is recorded).
    pub fn spawn_vital<F>(
        &self,
        component: &'static str,
        task: impl Into<String>,
        future: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = task.into();
        let handle = self.tasks.spawn(future);
        let watcher = self.clone();
        self.tasks.spawn(async move {
            let reason = match handle.await {
                Ok(()) if watcher.is_triggered() => return,
                Ok(()) => "ended".to_owned(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_text(&e.into_panic())),
                Err(_) => return,
            };
            watcher.record(TaskFailure {
                component,
                task,
                reason,
            });
        })
    }

    /// Records a failure found otherwise (a probe that got no answer).
    pub fn record(&self, failure: TaskFailure) {
        tracing::error!(component = failure.component, "{failure}");
        self.failures.send_modify(|all| {
            if all.len() < MAX_FAILURES {
                all.push(failure);
            }
        });
    }

    /// Every failure recorded so far, and each new one as it comes.
    pub fn failures(&self) -> watch::Receiver<Vec<TaskFailure>> {
        self.failures.subscribe()
    }

    /// Triggers the shutdown and waits up to `grace` for every tracked task to finish.
    /// Returns `false` when the grace period ran out first.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.trigger();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

/// What a panic said, when it said it with text.
fn panic_text(payload: &Box<dyn Any + Send>) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_that_watch_the_signal() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let done = shutdown.spawn(async move {
            s.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            "finished"
        });
        assert!(shutdown.drain(Duration::from_secs(5)).await);
        assert_eq!(done.await.unwrap(), "finished");
    }

    #[tokio::test]
    async fn drain_reports_a_task_that_outlives_the_grace_period() {
        let shutdown = Shutdown::new();
        shutdown.spawn(tokio::time::sleep(Duration::from_secs(60)));
        assert!(!shutdown.drain(Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_vital_task_that_panics_or_ends_early_is_recorded_in_every_phase() {
        let root = Shutdown::new();
        let later = root.phase();
        let mut failures = root.failures();
        later.spawn_vital("queue", "the writer", async { panic!("disk on fire") });
        failures.changed().await.unwrap();
        root.spawn_vital("broker", "an accept loop", async {});
        failures.changed().await.unwrap();
        let all = failures.borrow().clone();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0].component, "queue");
        assert_eq!(all[0].reason, "panicked: disk on fire");
        assert_eq!(all[1].to_string(), "an accept loop ended");
    }

    #[tokio::test]
    async fn a_vital_task_ending_at_the_signal_is_no_failure() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        shutdown.spawn_vital("uplink", "the drain", async move { s.cancelled().await });
        assert!(shutdown.drain(Duration::from_secs(5)).await);
        assert!(shutdown.failures().borrow().is_empty());
    }
}
