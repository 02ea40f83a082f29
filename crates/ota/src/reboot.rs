//! The reboot after an install (or after a failed health check): logind's
//! `Manager.Reboot`, as systemd would, or a configured command (tests, boards without logind).

use crate::config::Reboot;

/// Asks for the reboot; `Err` says why it was not accepted.
pub async fn reboot(how: &Reboot) -> Result<(), String> {
    match how {
        Reboot::Logind => {
            let connection = zbus::Connection::system()
                .await
                .map_err(|e| format!("logind cannot be reached on the system bus: {e}"))?;
            connection
                .call_method(
                    Some("org.freedesktop.login1"),
                    "/org/freedesktop/login1",
                    Some("org.freedesktop.login1.Manager"),
                    "Reboot",
                    &(false,),
                )
                .await
                .map(drop)
                .map_err(|e| format!("logind refused the reboot: {e}"))
        }
        Reboot::Command(argv) => {
            let status = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .status()
                .await
                .map_err(|e| format!("cannot run {:?}: {e}", argv[0]))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{:?} failed: {status}", argv[0]))
            }
        }
    }
}
