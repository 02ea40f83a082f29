use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use crate::config::{AclPattern, AclRule};
use argon2::password_hash::PasswordHasher as _;
use argon2::{Algorithm, Argon2, Params, Version};

use super::*;

/// A hash with cheap parameters, so that tests stay fast.
fn cheap_hash(password: &[u8]) -> String {
    let params = Params::new(64, 1, 1, None).unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_with_salt(password, b"saltsaltsaltsalt")
        .unwrap()
        .to_string()
}

fn credentials(text: &str) -> Credentials {
    Credentials::parse(text, Path::new("test-credentials")).unwrap()
}

fn rule(users: &[&str], groups: &[&str], publish: &[&str], subscribe: &[&str]) -> AclRule {
    let patterns = |ps: &[&str]| ps.iter().map(|p| AclPattern::new(*p).unwrap()).collect();
    AclRule {
        users: users.iter().map(|s| s.to_string()).collect(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        publish: patterns(publish),
        subscribe: patterns(subscribe),
    }
}

fn access(rules: Vec<AclRule>, creds: &str) -> Access {
    Access::with_credentials(
        credentials(creds),
        &AccessSettings {
            credentials_file: None,
            acl: rules,
        },
    )
}

fn user(name: &str, groups: &[&str]) -> Identity {
    Identity {
        name: name.into(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        anonymous: false,
    }
}

fn topic(t: &str) -> TopicName {
    TopicName::new(t).unwrap()
}

fn filter(f: &str) -> TopicFilter {
    TopicFilter::new(f).unwrap()
}

async fn check(access: &Access, name: &str, password: &[u8]) -> PasswordCheck {
    tokio::time::timeout(
        Duration::from_secs(30),
        access.check_password(name, password),
    )
    .await
    .expect("the check finished in time")
}

#[tokio::test]
async fn a_right_password_gives_the_identity_with_its_groups() {
    let access = access(
        vec![],
        &format!("alice:{}:ops,sensors\n", cheap_hash(b"s3cret")),
    );
    assert_eq!(
        check(&access, "alice", b"s3cret").await,
        PasswordCheck::Ok(user("alice", &["ops", "sensors"]))
    );
    assert_eq!(access.inner.dummy_checks.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_wrong_password_is_refused_without_the_dummy_path() {
    let access = access(vec![], &format!("alice:{}\n", cheap_hash(b"s3cret")));
    assert_eq!(
        check(&access, "alice", b"S3cret").await,
        PasswordCheck::BadPassword
    );
    assert_eq!(
        check(&access, "alice", b"").await,
        PasswordCheck::BadPassword
    );
    assert_eq!(access.inner.dummy_checks.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_unknown_user_costs_a_dummy_verification() {
    let access = access(vec![], &format!("alice:{}\n", cheap_hash(b"s3cret")));
    assert_eq!(
        check(&access, "mallory", b"s3cret").await,
        PasswordCheck::UnknownUser
    );
    assert_eq!(access.inner.dummy_checks.load(Ordering::Relaxed), 1);
    // Also without any credentials file.
    let none = Access::new(&AccessSettings::default()).unwrap();
    assert_eq!(
        check(&none, "alice", b"x").await,
        PasswordCheck::UnknownUser
    );
    assert_eq!(none.inner.dummy_checks.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn concurrent_checks_all_finish() {
    let access = access(vec![], &format!("alice:{}\n", cheap_hash(b"pw")));
    let checks: Vec<_> = (0..6)
        .map(|i| {
            let name = if i % 2 == 0 { "alice" } else { "bob" };
            tokio::spawn(access.check_password(name, b"pw"))
        })
        .collect();
    for (i, c) in checks.into_iter().enumerate() {
        let outcome = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            matches!(outcome, PasswordCheck::Ok(_)),
            i % 2 == 0,
            "{outcome:?}"
        );
    }
    assert_eq!(
        access.inner.verifications.available_permits(),
        MAX_CONCURRENT_VERIFICATIONS
    );
}

#[test]
fn identity_for_takes_groups_from_the_credentials_file() {
    let access = access(vec![], &format!("gw-7:{}:gateways\n", cheap_hash(b"x")));
    assert_eq!(access.identity_for("gw-7"), user("gw-7", &["gateways"]));
    assert_eq!(access.identity_for("sensor-1"), user("sensor-1", &[]));
    assert!(Identity::anonymous().anonymous);
}

#[test]
fn without_rules_everyone_may_do_everything() {
    let access = access(vec![], "");
    assert!(!access.has_rules());
    for who in [Identity::anonymous(), user("a", &[])] {
        assert!(access.may_publish(&who, "c", &topic("any/thing")));
        assert!(access.may_subscribe(&who, "c", &filter("#")));
    }
}

/// Who, client id, publish or subscribe, topic or filter, expected.
type Row = (Identity, &'static str, &'static str, &'static str, bool);

#[test]
fn the_acl_matrix() {
    let access = access(
        vec![
            rule(&["alice"], &[], &["alice/#"], &["site/#"]),
            rule(&[], &["ops"], &["ops/+/cmd"], &["ops/#", "alarms/+"]),
            rule(&[], &[], &["public/%c/up", "inbox/%u"], &["public/+/up"]),
            rule(&["bob"], &[], &["users/%u-data/#"], &["devices/%c/#"]),
            rule(&["%u"], &[], &["x/#"], &[]),
        ],
        "",
    );
    assert!(access.has_rules());
    let alice = user("alice", &[]);
    let bob = user("bob", &["ops"]);
    let anon = Identity::anonymous();
    let carol = user("carol", &[]);
    let rows: Vec<Row> = vec![
        // users
        (alice.clone(), "c1", "pub", "alice/temp", true),
        (alice.clone(), "c1", "pub", "alice", true),
        (alice.clone(), "c1", "pub", "bob/temp", false),
        (carol.clone(), "c1", "pub", "alice/temp", false),
        (alice.clone(), "c1", "sub", "site/+/temp", true),
        (alice.clone(), "c1", "sub", "site/#", true),
        (alice.clone(), "c1", "sub", "#", false),
        (alice.clone(), "c1", "sub", "sit/#", false),
        // groups
        (bob.clone(), "c2", "pub", "ops/pump/cmd", true),
        (bob.clone(), "c2", "pub", "ops/pump/cmd/x", false),
        (alice.clone(), "c1", "pub", "ops/pump/cmd", false),
        (bob.clone(), "c2", "sub", "alarms/+", true),
        (bob.clone(), "c2", "sub", "alarms/#", false),
        (bob.clone(), "c2", "sub", "ops/+/cmd", true),
        // everyone, anonymous included; %c
        (anon.clone(), "pump-1", "pub", "public/pump-1/up", true),
        (anon.clone(), "pump-1", "pub", "public/pump-2/up", false),
        (carol.clone(), "pump-1", "pub", "public/pump-1/up", true),
        (anon.clone(), "pump-1", "sub", "public/+/up", true),
        (anon.clone(), "pump-1", "sub", "public/#", false),
        (anon.clone(), "pump-1", "pub", "site/x", false),
        // %u: never for anonymous, and a literal "%u" user name is not special
        (carol.clone(), "c", "pub", "inbox/carol", true),
        (carol.clone(), "c", "pub", "inbox/alice", false),
        (anon.clone(), "c", "pub", "inbox/", false),
        (user("%u", &[]), "c", "pub", "x/1", true),
        (carol.clone(), "c", "pub", "x/1", false),
        // %u inside a level; %c as a level in a subscribe pattern
        (bob.clone(), "d-9", "pub", "users/bob-data/t", true),
        (bob.clone(), "d-9", "pub", "users/bobby-data/t", false),
        (bob.clone(), "d-9", "sub", "devices/d-9/#", true),
        (bob.clone(), "d-9", "sub", "devices/d-9/+/state", true),
        (bob.clone(), "d-9", "sub", "devices/+/state", false),
        (bob.clone(), "d-8", "sub", "devices/d-9/#", false),
        // escapes: a name or client id with '/', '+' or '#' never fills a placeholder
        (anon.clone(), "pump-1/x", "pub", "public/pump-1/x/up", false),
        (anon.clone(), "+", "pub", "public/+/up", false),
        (anon.clone(), "#", "sub", "public/#", false),
        (anon.clone(), "a/b", "sub", "public/a/b/up", false),
        (anon.clone(), "", "pub", "public//up", false),
        (user("a/b", &[]), "c", "pub", "inbox/a/b", false),
        (user("+", &[]), "c", "pub", "inbox/+x", false),
        (user("#", &[]), "c", "sub", "inbox/#", false),
        (user("", &[]), "c", "pub", "inbox/", false),
        (
            user("bo/b", &["ops"]),
            "c",
            "pub",
            "users/bo/b-data/t",
            false,
        ),
        (user("bob", &[]), "d/9", "sub", "devices/d/9/#", false),
        (user("bob", &[]), "+", "sub", "devices/+/#", false),
    ];
    for (who, client, op, what, expected) in rows {
        let got = match op {
            "pub" => match TopicName::new(what) {
                Ok(t) => access.may_publish(&who, client, &t),
                // A wildcard topic never reaches may_publish: the edge rejects it first.
                Err(_) => false,
            },
            _ => access.may_subscribe(&who, client, &filter(what)),
        };
        assert_eq!(got, expected, "{who:?} as {client:?}: {op} {what}");
    }
}

#[test]
fn anonymous_clients_never_match_users_or_groups() {
    let access = access(vec![rule(&[""], &["ops"], &["#"], &["#"])], "");
    let anon = Identity {
        groups: vec!["ops".into()],
        ..Identity::anonymous()
    };
    assert!(!access.may_publish(&anon, "c", &topic("a")));
    assert!(!access.may_subscribe(&anon, "c", &filter("a")));
}

#[test]
fn the_credentials_file_is_reloaded_when_it_changes_and_kept_when_broken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    let write = |text: &str| {
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(&format!("alice:{}:ops\n", cheap_hash(b"a")));
    let settings = AccessSettings {
        credentials_file: Some(file.clone()),
        acl: vec![],
    };
    let access = Access::new(&settings).unwrap();
    assert_eq!(access.identity_for("alice").groups, ["ops"]);
    assert!(!access.maybe_reload().unwrap(), "unchanged");

    write(&format!(
        "alice:{}\nbob:{}:night\n",
        cheap_hash(b"a"),
        cheap_hash(b"b")
    ));
    assert!(access.maybe_reload().unwrap());
    assert!(access.identity_for("alice").groups.is_empty());
    assert_eq!(access.identity_for("bob").groups, ["night"]);

    write("bob\n");
    let e = access.maybe_reload().unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
    assert!(!access.maybe_reload().unwrap(), "reported once per version");
    assert!(access.credentials().contains("bob"), "the old users stay");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A chmod changes neither mtime nor size nor inode: the check happens at the next change.
    write(&format!("carol:{}\n", cheap_hash(b"c")));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = access.maybe_reload().unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(access.credentials().contains("bob"));

    std::fs::remove_file(&file).unwrap();
    let e = access.maybe_reload().unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
    assert!(
        !access.maybe_reload().unwrap(),
        "a missing file is reported once"
    );
    assert!(access.credentials().contains("bob"));
    write(&format!("dave:{}\n", cheap_hash(b"d")));
    assert!(
        access.maybe_reload().unwrap(),
        "and read again when it is back"
    );
    assert!(access.credentials().contains("dave"));
}

#[test]
fn access_refuses_a_readable_credentials_file_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(&file, "").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let settings = AccessSettings {
        credentials_file: Some(file),
        acl: vec![],
    };
    let e = Access::new(&settings).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
}
