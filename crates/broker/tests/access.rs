//! Credentials and ACLs at the edge, with mosquitto's clients for MQTT 3.1.1 and 5: wrong and
//! unknown passwords get their CONNACK codes; the ACL matrix (users, groups, `%u`, `%c`) for
//! publish, subscribe and will; a denied publish reaches no subscriber.

mod common;

use common::*;
use fieldlink_broker::access::set_user;
use fieldlink_test_support::{Subscriber, free_port};

struct Site {
    edge: Edge,
    port: String,
    _dir: tempfile::TempDir,
}

async fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    set_user(&credentials, "alice", b"alice-pw", &[]).unwrap();
    set_user(&credentials, "bob", b"bob-pw", &["operators".into()]).unwrap();
    set_user(&credentials, "mon", b"mon-pw", &["monitors".into()]).unwrap();
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\ncredentials_file = \"{}\"\n\
         [[broker.listeners]]\nport = {port}\nanonymous = false\nclient_id = \"prefix\"\n\
         [[broker.acl]]\nusers = [\"alice\"]\npublish = [\"site/%u/#\"]\nsubscribe = [\"site/#\", \"cmd/%c/#\"]\n\
         [[broker.acl]]\ngroups = [\"operators\"]\npublish = [\"cmd/#\"]\n\
         [[broker.acl]]\ngroups = [\"monitors\"]\nsubscribe = [\"#\"]\n",
        credentials.display()
    ))
    .await;
    Site {
        edge,
        port: port.to_string(),
        _dir: dir,
    }
}

impl Site {
    /// mosquitto_pub -d as `user` (client id `user:pub`), returning its output.
    async fn publish(&self, user: &str, password: &str, version: &str, extra: &[&str]) -> String {
        let mut args = strings(&[
            "-d",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port,
            "-V",
            version,
            "-u",
            user,
            "-P",
            password,
            "-i",
            &format!("{user}:pub"),
            "-q",
            "1",
        ]);
        args.extend(strings(extra));
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            text(&mosquitto("mosquitto_pub", &args))
        })
        .await
        .unwrap()
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_unknown_credentials_get_their_connack_codes() {
    let site = site().await;
    for (user, password) in [("alice", "wrong"), ("mallory", "alice-pw")] {
        let v311 = site
            .publish(user, password, "311", &["-t", "site/alice/t", "-m", "x"])
            .await;
        assert!(v311.contains("received CONNACK (4)"), "{user}: {v311}");
        let v5 = site
            .publish(user, password, "5", &["-t", "site/alice/t", "-m", "x"])
            .await;
        assert!(v5.contains("received CONNACK (134)"), "{user}: {v5}");
    }
    let good = site
        .publish("alice", "alice-pw", "5", &["-t", "site/alice/t", "-m", "x"])
        .await;
    assert!(good.contains("received CONNACK (0)"), "{good}");
    site.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_matrix_holds_and_denied_publishes_reach_no_one() {
    let site = site().await;
    // A monitor sees everything that gets through.
    let port = site.port.clone();
    let monitor = tokio::task::spawn_blocking(move || {
        Subscriber::start(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "mon",
            "-P",
            "mon-pw",
            "-i",
            "mon:sub",
            "-t",
            "#",
            "-v",
            "-W",
            "4",
        ])
    })
    .await
    .unwrap();

    // Publish: alice under site/alice (%u) yes, under site/bob no; bob (operators) on cmd/.
    for version in ["311", "5"] {
        let own = site
            .publish(
                "alice",
                "alice-pw",
                version,
                &["-t", "site/alice/temp", "-m", "ok-own"],
            )
            .await;
        assert!(own.contains("received PUBACK"), "{own}");
        let other = site
            .publish(
                "alice",
                "alice-pw",
                version,
                &["-t", "site/bob/temp", "-m", "denied"],
            )
            .await;
        assert!(
            other.contains("received PUBACK"),
            "a denied QoS 1 publish is still acknowledged: {other}"
        );
        if version == "5" {
            assert!(other.contains("RC:135"), "not authorized (0x87): {other}");
        }
        let cmd = site
            .publish(
                "bob",
                "bob-pw",
                version,
                &["-t", "cmd/pump", "-m", "ok-cmd"],
            )
            .await;
        assert!(cmd.contains("received PUBACK"), "{cmd}");
        let bob_site = site
            .publish(
                "bob",
                "bob-pw",
                version,
                &["-t", "site/bob/x", "-m", "denied"],
            )
            .await;
        assert!(bob_site.contains("received PUBACK"), "{bob_site}");
    }

    // Will: alice may not leave a will where she may not publish.
    let will = site
        .publish(
            "alice",
            "alice-pw",
            "5",
            &[
                "-t",
                "site/alice/t",
                "-m",
                "x",
                "--will-topic",
                "site/bob/will",
                "--will-payload",
                "x",
            ],
        )
        .await;
    assert!(will.contains("received CONNACK (135)"), "{will}");

    // Subscribe: allowed and denied filters in one SUBSCRIBE, with %c.
    let port = site.port.clone();
    let subscribed = tokio::task::spawn_blocking(move || {
        text(&mosquitto(
            "mosquitto_sub",
            &[
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                "5",
                "-u",
                "alice",
                "-P",
                "alice-pw",
                "-i",
                "alice:sub",
                "-t",
                "site/+/temp",
                "-t",
                "cmd/other/#",
                "-t",
                "cmd/alice:sub/#",
                "-t",
                "#",
                "-W",
                "1",
            ],
        ))
    })
    .await
    .unwrap();
    assert!(
        subscribed.contains("Subscribed (mid: 1): 0, 135, 0, 135"),
        "granted, denied (another client's commands), granted (%c), denied (#): {subscribed}"
    );
    let port = site.port.clone();
    let subscribed = tokio::task::spawn_blocking(move || {
        text(&mosquitto(
            "mosquitto_sub",
            &[
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                "311",
                "-u",
                "bob",
                "-P",
                "bob-pw",
                "-i",
                "bob:sub",
                "-t",
                "site/#",
                "-W",
                "1",
            ],
        ))
    })
    .await
    .unwrap();
    assert!(
        subscribed.contains("Subscribed (mid: 1): 128"),
        "bob may not subscribe: {subscribed}"
    );

    let seen = tokio::task::spawn_blocking(move || monitor.finish())
        .await
        .unwrap();
    let seen = format!("{}{}", seen.stdout, seen.stderr);
    assert!(seen.contains("site/alice/temp ok-own"), "{seen}");
    assert!(seen.contains("cmd/pump ok-cmd"), "{seen}");
    assert!(
        !seen.contains("denied"),
        "a denied publish reached a subscriber: {seen}"
    );
    // Only allowed, routed publishes were stored.
    let stored = site.edge.ingress.stored.lock().unwrap().len();
    assert_eq!(stored, 2, "alice's own publish, twice (3.1.1 and 5)");
    site.edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_added_while_running_can_connect_at_once() {
    let site = site().await;
    let refused = site
        .publish("carol", "carol-pw", "5", &["-t", "site/carol/t", "-m", "x"])
        .await;
    assert!(refused.contains("received CONNACK (134)"), "{refused}");
    // `fieldlink credentials add` rewrites the file; the next CONNECT reads it again.
    set_user(
        &site._dir.path().join("credentials"),
        "carol",
        b"carol-pw",
        &[],
    )
    .unwrap();
    let admitted = site
        .publish("carol", "carol-pw", "5", &["-t", "site/carol/t", "-m", "x"])
        .await;
    assert!(admitted.contains("received CONNACK (0)"), "{admitted}");
    site.edge.stop().await;
}
