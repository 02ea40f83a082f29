//! The process-wide shutdown token.
//!
//! One [`Shutdown`] is made in the binary and cloned into every component. A component selects
//! on [`Shutdown::cancelled`] in its loop, and spawns its tasks through [`Shutdown::spawn`] so
//! that the binary can wait for all of them to finish, within a grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A cloneable shutdown signal plus the set of tasks that must finish before the process exits.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A fresh, untriggered signal.
    pub fn new() -> Self {
        Self::default()
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

    /// Spawns a task that the final [`drain`](Self::drain) waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Triggers the shutdown and waits up to `grace` for every tracked task to finish.
    /// Returns `false` when the grace period ran out first.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.trigger();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
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
}
