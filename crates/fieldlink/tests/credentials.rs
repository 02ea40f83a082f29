//! `fieldlink credentials add|remove`, run as the real binary: the file it writes is read back
//! by the broker's access control.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fieldlink_broker::access::{Access, Credentials, PasswordCheck};
use fieldlink_broker::config::AccessSettings;

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

/// A config whose `broker.credentials_file` is in a fresh directory.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let config = dir.path().join("fieldlink.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ncredentials_file = \"{}\"\n",
            credentials.display()
        ),
    )
    .unwrap();
    (dir, config, credentials)
}

/// Runs the binary with `stdin` as its standard input, within a time limit.
fn fieldlink(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "fieldlink {args:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn check(credentials: &Path, name: &str, password: &[u8]) -> PasswordCheck {
    let access = Access::new(&AccessSettings {
        credentials_file: Some(credentials.to_owned()),
        acl: vec![],
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(30),
            access.check_password(name, password),
        )
        .await
        .unwrap()
    })
}

#[test]
fn add_stores_a_hash_that_checks_the_password_in_a_0600_file_and_remove_deletes_it() {
    let (_dir, config, credentials) = setup();
    let out = fieldlink(
        &config,
        &[
            "credentials",
            "add",
            "alice",
            "--group",
            "ops",
            "--group",
            "sensors",
        ],
        "correct horse\n",
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("alice: password set"), "{stdout}");
    assert!(!stdout.contains("correct horse"), "{stdout}");

    let mode = std::fs::metadata(&credentials)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&credentials).unwrap();
    assert!(!text.contains("correct horse"), "{text}");
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    match check(&credentials, "alice", b"correct horse") {
        PasswordCheck::Ok(identity) => assert_eq!(identity.groups, ["ops", "sensors"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        check(&credentials, "alice", b"correct horse\n"),
        PasswordCheck::BadPassword,
        "the line ending is not part of the password"
    );

    // A second user, then a new password for the first: one line each.
    let out = fieldlink(&config, &["credentials", "add", "bob"], "b\r\n");
    assert!(out.status.success(), "{out:?}");
    let out = fieldlink(
        &config,
        &["credentials", "add", "alice"],
        "battery staple\n",
    );
    assert!(out.status.success(), "{out:?}");
    let creds = Credentials::load(&credentials).unwrap();
    assert_eq!(creds.len(), 2);
    assert!(creds.groups("alice").unwrap().is_empty());
    assert_eq!(
        check(&credentials, "alice", b"correct horse"),
        PasswordCheck::BadPassword
    );
    assert!(matches!(
        check(&credentials, "bob", b"b"),
        PasswordCheck::Ok(_)
    ));

    let out = fieldlink(&config, &["credentials", "remove", "alice"], "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        check(&credentials, "alice", b"battery staple"),
        PasswordCheck::UnknownUser
    );
    let out = fieldlink(&config, &["credentials", "remove", "alice"], "");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no user \"alice\""),
        "{out:?}"
    );
    let mode = std::fs::metadata(&credentials)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn an_empty_password_is_refused_and_nothing_is_written() {
    let (_dir, config, credentials) = setup();
    for stdin in ["", "\n"] {
        let out = fieldlink(&config, &["credentials", "add", "alice"], stdin);
        assert!(!out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("empty password"),
            "{out:?}"
        );
    }
    assert!(!credentials.exists());
}

#[test]
fn without_a_credentials_file_in_the_config_the_command_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fieldlink.toml");
    std::fs::write(&config, "").unwrap();
    let out = fieldlink(&config, &["credentials", "add", "alice"], "pw\n");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broker.credentials_file"),
        "{out:?}"
    );
}
