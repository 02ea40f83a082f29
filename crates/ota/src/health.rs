//! The health check after an update: what the status board already shows, waited for until
//! a deadline.

use std::time::Duration;

use fieldlink_core::ports::{Health, StatusBoard};

use crate::config::HealthCheck;

/// The component the agent registers as (left out of `components`: it is the one asking).
pub const COMPONENT: &str = "ota";

/// What is not yet as it must be, in words; `None` when every check holds.
pub fn missing(board: &StatusBoard, checks: &[HealthCheck]) -> Option<String> {
    let all = board.snapshot();
    let mut problems = Vec::new();
    for check in checks {
        match check {
            HealthCheck::Components => {
                for (name, health) in all.iter().filter(|(n, _)| **n != COMPONENT) {
                    if !matches!(health, Health::Up | Health::Degraded(_)) {
                        problems.push(format!("{name} is {}", words(health)));
                    }
                }
            }
            // Absent when not configured: nothing to wait for.
            HealthCheck::Uplink => match all.get("uplink") {
                Some(Health::Up) | None => {}
                Some(h) => problems.push(format!("the uplink is not connected ({})", words(h))),
            },
            HealthCheck::Devices => match all.get("devices") {
                Some(Health::Up) | None => {}
                Some(h) => {
                    problems.push(format!("the field devices are not polling ({})", words(h)))
                }
            },
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn words(health: &Health) -> String {
    match health {
        Health::Starting => "starting".into(),
        Health::Up => "up".into(),
        Health::Degraded(why) => format!("degraded: {why}"),
        Health::Down(why) => format!("down: {why}"),
        Health::Stopped => "stopped".into(),
    }
}

/// Waits until every check has held for `settle` without a break (`Ok`), or `left` passes
/// (`Err` with what was missing; `left` is what remains of `deadline`, the check's whole
/// time, which a restart of fieldlink during the check does not renew). The settling
/// matters: a component is up when it starts (the field bridge before its first poll), so a
/// check passing at once proves little.
pub async fn wait(
    board: &StatusBoard,
    checks: &[HealthCheck],
    settle: Duration,
    left: Duration,
    deadline: Duration,
) -> Result<(), String> {
    let mut watch = board.watch();
    let check = async {
        loop {
            while missing(board, checks).is_some() {
                if watch.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            let hold = tokio::time::sleep(settle);
            tokio::pin!(hold);
            loop {
                tokio::select! {
                    () = &mut hold => return,
                    changed = watch.changed() => {
                        if changed.is_err() {
                            std::future::pending::<()>().await;
                        }
                        if missing(board, checks).is_some() {
                            break;
                        }
                    }
                }
            }
        }
    };
    match tokio::time::timeout(left, check).await {
        Ok(()) => Ok(()),
        Err(_) => Err(format!(
            "not healthy within {deadline:?}: {}",
            missing(board, checks).unwrap_or_else(|| "it recovered at the deadline".into())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_follow_the_board() {
        let board = StatusBoard::default();
        let uplink = board.register("uplink");
        let queue = board.register("queue");
        let all = [
            HealthCheck::Components,
            HealthCheck::Uplink,
            HealthCheck::Devices,
        ];
        let m = missing(&board, &all).unwrap();
        assert!(
            m.contains("queue is starting") && m.contains("uplink is not connected"),
            "{m}"
        );
        queue.set(Health::Up);
        uplink.set(Health::Degraded("connecting".into()));
        assert!(missing(&board, &[HealthCheck::Components]).is_none());
        let settle = Duration::from_millis(100);
        assert!(
            wait(
                &board,
                &all,
                settle,
                Duration::from_millis(50),
                Duration::from_millis(50)
            )
            .await
            .is_err()
        );
        let waiting = tokio::spawn({
            let board = board.clone();
            async move {
                let ten = Duration::from_secs(10);
                wait(&board, &all, settle, ten, ten).await
            }
        });
        uplink.set(Health::Up);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        // Up, then down again before the settling time is over: not healthy.
        let board2 = board.clone();
        let waiting = tokio::spawn(async move {
            wait(
                &board2,
                &all,
                Duration::from_secs(1),
                Duration::from_millis(600),
                Duration::from_millis(600),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        uplink.set(Health::Degraded("connecting".into()));
        let e = waiting.await.unwrap().unwrap_err();
        assert!(e.contains("uplink is not connected"), "{e}");
    }
}
