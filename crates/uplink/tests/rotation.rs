//! The uplink's certificate renewed while it delivers (validate-then-promote), against a real
//! mosquitto that requires a client certificate and names the client by it: a good renewal is
//! tried with the cloud and kept; a candidate that fails the checks (another key's certificate,
//! an expired one) never replaces the files in use; one the cloud refuses (an untrusted CA) is
//! dropped for the files that worked. Nothing queued is lost.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use fieldlink_core::tls::KeyRef;
use fieldlink_test_support::certs::{Leaf, TestCa};
use fieldlink_uplink::Uplink;
use fieldlink_uplink::config::UplinkTls;

use common::{Cloud, Subscriber, fill, queue, settings, start_uplink};

const LIMIT: Duration = Duration::from_secs(30);

/// Replaces `path` as an installer does: a temporary file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn until(uplink: &Uplink, what: &str, ok: impl Fn(&fieldlink_uplink::UplinkStatus) -> bool) {
    let start = Instant::now();
    while !ok(&uplink.status()) {
        assert!(
            start.elapsed() < LIMIT,
            "{what}: status {:?}",
            uplink.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every payload `<stream>-<i>` (i < n) arrived at least once.
async fn all_arrive(sub: &Subscriber, stream: &str, n: usize) {
    let start = Instant::now();
    loop {
        let got = sub.payloads();
        let missing = (0..n)
            .filter(|i| !got.contains(&format!("{stream}-{i}")))
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{missing} of {stream}'s {n} messages missing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_checked_tried_and_kept_and_a_bad_one_never_takes_over() {
    let ca = TestCa::new("cloud CA");
    let cloud = Cloud::start(
        &ca,
        &ca.issue("cloud", &["localhost"]),
        "require_certificate true\nuse_identity_as_username true",
    );
    let first = ca.issue("gw-first", &[]);
    let cert_file = cloud.file("client.pem", &first.cert_pem);
    let tls = UplinkTls::Mutual {
        ca_file: Some(cloud.file("trusted-ca.pem", ca.pem())),
        cert_file: cert_file.clone(),
        key: KeyRef::File(cloud.file("client.key", &first.key_pem)),
    };
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let sub = Subscriber::start(cloud.broker.addr().port(), "cloud/#", "observer", false).await;
    let (uplink, shutdown) = start_uplink(settings(cloud.tls_port, tls), &queue, dir.path());
    fill(&queue, "a", 100).await;
    all_arrive(&sub, "a", 100).await;
    assert!(cloud.broker.log().contains("u'gw-first'"));
    let renewals = uplink.status().renewals;

    // Another key's certificate: refused by the checks, the session untouched.
    replace(&cert_file, &ca.issue("gw-other-key", &[]).cert_pem);
    until(&uplink, "the other key's certificate refused", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("new certificate files were refused"))
    })
    .await;
    // An expired renewal of our own key: refused too.
    let expired = Leaf {
        expired: true,
        ..Leaf::default()
    };
    replace(
        &cert_file,
        &ca.reissue(&first.key_pem, "gw-expired", expired).cert_pem,
    );
    until(&uplink, "the expired certificate refused", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("expired"))
    })
    .await;
    fill(&queue, "b", 100).await;
    all_arrive(&sub, "b", 100).await;
    let status = uplink.status();
    assert_eq!(
        status.renewals, renewals,
        "no reconnect for a bad candidate"
    );
    assert!(status.state.is_connected(), "{status:?}");

    // Our key certified by a CA the cloud does not trust: it passes the checks, is tried, the
    // cloud refuses it, and the uplink goes back to the certificate that worked.
    let stranger = TestCa::new("a CA the cloud does not know");
    replace(
        &cert_file,
        &stranger
            .reissue(&first.key_pem, "gw-untrusted", Leaf::default())
            .cert_pem,
    );
    until(
        &uplink,
        "the untrusted certificate refused by the cloud",
        |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("the cloud refused the uplink's new certificate"))
        },
    )
    .await;
    until(&uplink, "back with the first certificate", |s| {
        s.state.is_connected()
    })
    .await;
    fill(&queue, "c", 100).await;
    all_arrive(&sub, "c", 100).await;

    // A good renewal: tried once, kept.
    let renewals = uplink.status().renewals;
    replace(
        &cert_file,
        &ca.reissue(&first.key_pem, "gw-renewed", Leaf::default())
            .cert_pem,
    );
    let start = Instant::now();
    while !cloud.broker.log().contains("u'gw-renewed'") {
        assert!(
            start.elapsed() < LIMIT,
            "never used: {}",
            cloud.broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(&uplink, "connected with the renewed certificate", |s| {
        s.state.is_connected() && s.renewals == renewals + 1
    })
    .await;
    fill(&queue, "d", 100).await;
    all_arrive(&sub, "d", 100).await;
    // It stays: no further reconnect once promoted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(uplink.status().renewals, renewals + 1);
    assert!(
        !cloud.broker.log().contains("u'gw-other-key'")
            && !cloud.broker.log().contains("u'gw-expired'"),
        "a refused candidate never reached the cloud"
    );
    shutdown.drain(Duration::from_secs(5)).await;
}
