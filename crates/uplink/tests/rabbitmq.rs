//! RabbitMQ's MQTT plugin (3.10, MQTT 3.1.1) as a second cloud broker, over TLS with anonymous
//! logins off: a user name and password, and JWTs verified by its OAuth 2.0 backend against the
//! gateway's public key. Valid tokens deliver; expired ones, another key's and another
//! audience's are refused; 20-second tokens are renewed under steady traffic with nothing lost
//! and no outage; an outage of the broker loses nothing.
//!
//! Each test starts its own RabbitMQ (about 14 s).

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fieldlink_core::message::{Message, Priority, QoS};
use fieldlink_core::ports::OutboxEntry;
use fieldlink_core::topic::TopicName;
use fieldlink_test_support::RabbitMq;
use fieldlink_test_support::certs::TestCa;
use fieldlink_uplink::UplinkState;
use fieldlink_uplink::config::{JwtSettings, UplinkCredentials, UplinkSettings, UplinkTls};

use common::{P256, Subscriber, first_seen, key_pair, queue, settings, start_uplink};

const USER: &str = "gw-7";
const PASSWORD: &str = "rabbit-s3cret-pass";
/// The resource server id RabbitMQ checks as `aud`, and the prefix of its scopes.
const AUDIENCE: &str = "fieldlink";
const KID: &str = "gw-key";

/// A RabbitMQ with a TLS listener, the user `USER`, and JWTs signed by `token_public` accepted.
struct Rabbit {
    broker: RabbitMq,
    ca_file: PathBuf,
    keys: tempfile::TempDir,
    token_key: PathBuf,
}

impl Rabbit {
    fn start() -> Self {
        let ca = TestCa::new("rabbit CA");
        let server = ca.issue("rabbit", &["localhost"]);
        let keys = tempfile::tempdir().unwrap();
        let (token_key, token_public) = key_pair(keys.path(), "token", P256);
        let mut broker = RabbitMq::new();
        let ca_file = broker.file("ca.pem", ca.pem());
        let cert = broker.file("server.pem", &server.cert_pem);
        let key = broker.file("server.key", &server.key_pem);
        let public = broker.file(
            "token.pub.pem",
            &std::fs::read_to_string(&token_public).unwrap(),
        );
        let tls_port = broker.tls_port;
        broker.start(&format!(
            "mqtt.listeners.ssl.default = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.versions.1 = tlsv1.3\n\
             ssl_options.versions.2 = tlsv1.2\n\
             default_user = {USER}\n\
             default_pass = {PASSWORD}\n\
             auth_backends.1 = rabbit_auth_backend_oauth2\n\
             auth_backends.2 = internal\n\
             auth_oauth2.resource_server_id = {AUDIENCE}\n\
             auth_oauth2.default_key = {KID}\n\
             auth_oauth2.signing_keys.{KID} = {}\n",
            ca_file.display(),
            cert.display(),
            key.display(),
            public.display(),
        ));
        let ca_file = write_private(keys.path(), "ca.pem", ca.pem());
        Self {
            broker,
            ca_file,
            keys,
            token_key,
        }
    }

    fn uplink_settings(&self, credentials: UplinkCredentials) -> UplinkSettings {
        let mut s = settings(
            self.broker.tls_port,
            UplinkTls::ServerAuth {
                ca_file: Some(self.ca_file.clone()),
            },
        );
        s.credentials = Some(credentials);
        s
    }

    fn password(&self, password: &str) -> UplinkCredentials {
        UplinkCredentials::Password {
            username: USER.into(),
            password_file: write_private(self.keys.path(), "uplink.password", password),
        }
    }

    fn jwt(&self, key_file: &Path, audience: &str, lifetime: Duration) -> UplinkCredentials {
        UplinkCredentials::Jwt(JwtSettings {
            username: USER.into(),
            key: fieldlink_core::tls::KeyRef::File(key_file.to_owned()),
            audience: audience.into(),
            subject: USER.into(),
            lifetime,
            key_id: Some(KID.into()),
            claims: format!(
                r#"{{"scope":["{audience}.read:*/*/*","{audience}.write:*/*/*","{audience}.configure:*/*"]}}"#
            ),
        })
    }

    async fn observer(&self) -> Subscriber {
        Subscriber::start_as(
            self.broker.mqtt_port,
            "cloud/#",
            "observer",
            false,
            Some((USER, PASSWORD)),
        )
        .await
    }
}

fn write_private(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn entry(stream: &str, i: usize) -> OutboxEntry {
    OutboxEntry {
        stream: stream.into(),
        priority: Priority::Normal,
        message: Message {
            topic: TopicName::new(format!("site/{stream}")).unwrap(),
            payload: format!("{stream}-{i}").into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: false,
        },
        properties: None,
    }
}

/// Runs an uplink with `credentials` until `n` messages of `stream` arrived at `sub`.
async fn delivers(rabbit: &Rabbit, sub: &Subscriber, credentials: UplinkCredentials, stream: &str) {
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    queue
        .append((0..100).map(|i| entry(stream, i)).collect())
        .await
        .unwrap();
    let (uplink, shutdown) = start_uplink(rabbit.uplink_settings(credentials), &queue, dir.path());
    let start = Instant::now();
    while first_seen(&sub.payloads(), stream).0.len() < 100 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{stream}: {:?}\n{}",
            uplink.status(),
            rabbit.broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.trigger();
}

/// Runs an uplink with `credentials` until it reports them refused; returns the reason.
async fn refused(rabbit: &Rabbit, credentials: UplinkCredentials) -> String {
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    queue.append(vec![entry("never", 0)]).await.unwrap();
    let (uplink, shutdown) = start_uplink(rabbit.uplink_settings(credentials), &queue, dir.path());
    let start = Instant::now();
    let reason = loop {
        if let UplinkState::Refused { reason } = uplink.status().state {
            break reason;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not refused: {:?}",
            uplink.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(uplink.status().acked_total, 0);
    shutdown.trigger();
    reason
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_takes_passwords_and_valid_jwts_and_refuses_bad_ones() {
    let rabbit = Rabbit::start();
    let sub = rabbit.observer().await;

    delivers(&rabbit, &sub, rabbit.password(PASSWORD), "password").await;
    let reason = refused(&rabbit, rabbit.password("wrong-pass")).await;
    assert!(
        reason.contains(&format!("the cloud refused the credentials for {USER}")),
        "{reason}"
    );

    let hour = Duration::from_secs(3600);
    delivers(
        &rabbit,
        &sub,
        rabbit.jwt(&rabbit.token_key, AUDIENCE, hour),
        "jwt",
    )
    .await;

    let (other_key, _) = key_pair(rabbit.keys.path(), "other", P256);
    let reason = refused(&rabbit, rabbit.jwt(&other_key, AUDIENCE, hour)).await;
    assert!(reason.contains("refused the credentials"), "{reason}");
    let reason = refused(&rabbit, rabbit.jwt(&rabbit.token_key, "elsewhere", hour)).await;
    assert!(reason.contains("refused the credentials"), "{reason}");

    // An expired token: the uplink always signs a fresh one, so it is made here, by the same
    // signer, an hour and a minute in the past.
    let UplinkCredentials::Jwt(jwt) = rabbit.jwt(&rabbit.token_key, AUDIENCE, hour) else {
        unreachable!()
    };
    let expired = fieldlink_uplink::tokens::jwt(&jwt, now() - 3660).unwrap();
    let outcome = connect_with(&rabbit, "expired", expired).await;
    assert!(
        matches!(
            outcome,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::BadUserNamePassword
                    | rumqttc::ConnectReturnCode::NotAuthorized
            ))
        ),
        "{outcome:?}"
    );
    // The same token made now is taken: the expiry alone made the difference.
    let fresh = fieldlink_uplink::tokens::jwt(&jwt, now()).unwrap();
    let outcome = connect_with(&rabbit, "fresh", fresh).await;
    assert!(
        matches!(
            outcome,
            Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_)))
        ),
        "{outcome:?}"
    );
}

/// The first event of a plain-port connection with `token` as the password.
async fn connect_with(
    rabbit: &Rabbit,
    client_id: &str,
    token: String,
) -> Result<rumqttc::Event, rumqttc::ConnectionError> {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", rabbit.broker.mqtt_port);
    options.set_credentials(USER, token);
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 4);
    tokio::time::timeout(Duration::from_secs(10), events.poll())
        .await
        .expect("an answer to CONNECT")
}

/// 20-second tokens, renewed at 16 s, over 65 s of a message every 50 ms: every message
/// arrives, and the status never shows an outage (only "renewing credentials" in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_second_tokens_are_renewed_under_steady_traffic_without_loss_or_outage() {
    let rabbit = Rabbit::start();
    let sub = rabbit.observer().await;
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let s =
        rabbit.uplink_settings(rabbit.jwt(&rabbit.token_key, AUDIENCE, Duration::from_secs(20)));
    let (uplink, shutdown) = start_uplink(s, &queue, dir.path());

    // Every state the status passes through, with when it started.
    let states = Arc::new(Mutex::new(Vec::<(Instant, UplinkState, usize)>::new()));
    let mut watch = uplink.watch();
    let seen = states.clone();
    let watcher = tokio::spawn(async move {
        loop {
            {
                let status = watch.borrow_and_update();
                let mut seen = seen.lock().unwrap();
                if seen.last().is_none_or(|(_, s, _)| *s != status.state) {
                    seen.push((Instant::now(), status.state.clone(), status.inflight));
                }
            }
            if watch.changed().await.is_err() {
                break;
            }
        }
    });

    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(65) {
        queue.append(vec![entry("steady", sent)]).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = Instant::now();
    while first_seen(&sub.payloads(), "steady").0.len() < sent {
        assert!(
            drained.elapsed() < Duration::from_secs(20),
            "{} of {sent} arrived; {:?}",
            first_seen(&sub.payloads(), "steady").0.len(),
            uplink.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = uplink.status();
    shutdown.trigger();
    watcher.abort();

    let (order, duplicates) = first_seen(&sub.payloads(), "steady");
    assert_eq!(order.len(), sent);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
    let states = states.lock().unwrap().clone();
    let outages: Vec<_> = states
        .iter()
        .filter(|(_, s, _)| {
            !matches!(
                s,
                UplinkState::Connected | UplinkState::Connecting | UplinkState::RenewingCredentials
            )
        })
        .collect();
    assert!(outages.is_empty(), "outage in the status: {outages:?}");
    assert!(status.renewals >= 3, "{} renewals in 65 s", status.renewals);
    assert_eq!(status.reconnects, 0, "a renewal counted as a reconnect");
    let expires = status.credentials.and_then(|c| c.expires).unwrap();
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(left <= Duration::from_secs(20), "{left:?}");

    // The figures for the notes: how long each switch took, and what was in flight.
    let switches: Vec<(Duration, usize)> = states
        .windows(2)
        .filter(|w| w[0].1 == UplinkState::RenewingCredentials && w[1].1.is_connected())
        .map(|w| (w[1].0 - w[0].0, w[0].2))
        .collect();
    eprintln!(
        "renewals: {}, sent {sent}, duplicates {duplicates}, switches (time renewing to connected, \
         in flight at the start): {switches:?}",
        status.renewals
    );
}

/// The cloud goes away mid-drain (RabbitMQ stopped and started again on the same ports, with
/// its state): everything acknowledged arrives, in order, with a password login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_rabbitmq_loses_nothing() {
    let mut rabbit = Rabbit::start();
    // A durable session: the observer's queue keeps what arrives while it is away.
    let sub = Subscriber::start_as(
        rabbit.broker.mqtt_port,
        "cloud/#",
        "observer",
        true,
        Some((USER, PASSWORD)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    queue
        .append((0..3000).map(|i| entry("a", i)).collect())
        .await
        .unwrap();
    let (uplink, shutdown) = start_uplink(
        rabbit.uplink_settings(rabbit.password(PASSWORD)),
        &queue,
        dir.path(),
    );
    sub.wait_for(300, Duration::from_secs(30)).await;

    rabbit.broker.stop();
    queue
        .append((3000..5000).map(|i| entry("a", i)).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!uplink.status().state.is_connected());
    rabbit.broker.restart();

    let start = Instant::now();
    while first_seen(&sub.payloads(), "a").0.len() < 5000
        && start.elapsed() < Duration::from_secs(90)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (order, duplicates) = first_seen(&sub.payloads(), "a");
    let missing: Vec<usize> = (0..5000).filter(|i| !order.contains(i)).take(10).collect();
    assert!(
        missing.is_empty(),
        "lost: {missing:?}… ({:?})",
        uplink.status()
    );
    let reconnects = uplink.status().reconnects.max(1) as usize;
    assert!(duplicates <= 50 * reconnects, "{duplicates} duplicates");
    shutdown.trigger();
    drop(uplink);
}
