//! TLS policy at the edge, with real clients (`openssl s_client`, mosquitto_pub): TLS-PSK takes
//! forward-secret suites only unless `allow_plain_psk` says otherwise, an unknown PSK identity
//! looks exactly like a wrong key to the client, and a CRL past its nextUpdate refuses the
//! handshakes that need it (or, with `stale_crl = "warn"`, only warns) and raises an alarm.

mod common;

use std::process::{Command, Stdio};

use common::*;
use fieldlink_test_support::certs::write;
use fieldlink_test_support::free_port;

const PSK_HEX: &str = "00112233445566778899aabbccddeeff";
const WRONG_HEX: &str = "ffeeddccbbaa99887766554433221100";

fn psk_listener(pki: &Pki, port: u16, extra: &str) -> String {
    let path = write(
        pki.dir.path(),
        "devices.psk",
        &format!("device-p:{PSK_HEX}\n"),
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    format!(
        "[[broker.listeners]]\nport = {port}\ntls = \"psk\"\npsk_file = \"{}\"\n{extra}",
        path_str(&path)
    )
}

/// One TLS-PSK handshake with `openssl s_client`; its whole output.
fn s_client(port: u16, version: &str, identity: &str, key: &str, cipher: Option<&str>) -> String {
    let port = port.to_string();
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec![
        "s_client",
        "-connect",
        &connect,
        version,
        "-psk_identity",
        identity,
        "-psk",
        key,
        "-brief",
    ];
    if let Some(cipher) = cipher {
        args.extend(["-cipher", cipher]);
    }
    let output = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    text(&output)
}

/// The TLS alerts an output reports, in order ("bad record mac", "decrypt error", ...).
fn alerts(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| {
            let at = line.find("alert ")?;
            Some(
                line[at..]
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_psk_identity_looks_like_a_wrong_key() {
    let pki = Pki::new();
    let port = free_port();
    let edge = Edge::start(&psk_listener(&pki, port, "")).await;
    let outputs = tokio::task::spawn_blocking(move || {
        ["-tls1_2", "-tls1_3"].map(|version| {
            let wrong_key = s_client(port, version, "device-p", WRONG_HEX, None);
            let unknown = s_client(port, version, "nobody", PSK_HEX, None);
            let right = s_client(port, version, "device-p", PSK_HEX, None);
            (version, wrong_key, unknown, right)
        })
    })
    .await
    .unwrap();
    for (version, wrong_key, unknown, right) in outputs {
        assert!(
            right.contains("CONNECTION ESTABLISHED"),
            "{version}, the right key: {right}"
        );
        assert!(
            !wrong_key.contains("CONNECTION ESTABLISHED"),
            "{version}, wrong key: {wrong_key}"
        );
        assert!(
            !unknown.contains("CONNECTION ESTABLISHED"),
            "{version}, unknown identity: {unknown}"
        );
        assert!(
            !alerts(&wrong_key).is_empty(),
            "{version}: the wrong key is refused with an alert: {wrong_key}"
        );
        assert_eq!(
            alerts(&unknown),
            alerts(&wrong_key),
            "{version}: an unknown identity must not be told apart from a wrong key\n\
             unknown: {unknown}\nwrong key: {wrong_key}"
        );
        assert!(
            !unknown.contains("unknown psk identity"),
            "{version}: {unknown}"
        );
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_suites_without_forward_secrecy_only_when_allowed() {
    let pki = Pki::new();
    let (strict, relaxed) = (free_port(), free_port());
    let listeners = format!(
        "{}{}",
        psk_listener(&pki, strict, ""),
        psk_listener(&pki, relaxed, "allow_plain_psk = true\n")
    );
    let edge = Edge::start(&listeners).await;
    let (fs_strict, plain_strict, plain_relaxed) = tokio::task::spawn_blocking(move || {
        let hello = |port, cipher| s_client(port, "-tls1_2", "device-p", PSK_HEX, Some(cipher));
        (
            hello(strict, "ECDHE-PSK-CHACHA20-POLY1305"),
            hello(strict, "PSK-AES128-GCM-SHA256"),
            hello(relaxed, "PSK-AES128-GCM-SHA256"),
        )
    })
    .await
    .unwrap();
    assert!(
        fs_strict.contains("CONNECTION ESTABLISHED")
            && fs_strict.contains("ECDHE-PSK-CHACHA20-POLY1305"),
        "ECDHE-PSK is the default: {fs_strict}"
    );
    assert!(
        !plain_strict.contains("CONNECTION ESTABLISHED"),
        "plain PSK is refused by default: {plain_strict}"
    );
    assert!(
        plain_relaxed.contains("CONNECTION ESTABLISHED")
            && plain_relaxed.contains("PSK-AES128-GCM-SHA256"),
        "allow_plain_psk = true accepts it: {plain_relaxed}"
    );
    edge.stop().await;
}

/// A mutual-TLS listener whose CRL expired on 2025-06-01, with `extra` keys; the attempt of a
/// device the CRL does not revoke.
async fn stale_crl_attempt(extra: &str) -> (String, String) {
    let pki = Pki::new();
    let (cert, key) = pki.device("device-a", &pki.ca.issue("device-a", &[]));
    let crl = write(
        pki.dir.path(),
        "stale.crl",
        &pki.ca.crl_until(&[], (2025, 6, 1)),
    );
    let port = free_port();
    let edge = Edge::start(&format!(
        "[[broker.listeners]]\nport = {port}\n{}crl_files = [\"{}\"]\n{extra}",
        pki.tls_keys("mutual"),
        path_str(&crl)
    ))
    .await;
    let args = [
        "-d",
        "-t",
        "site/x",
        "-m",
        "x",
        "-h",
        "localhost",
        "-p",
        &port.to_string(),
        "--cafile",
        &path_str(&pki.ca_file),
        "--cert",
        &path_str(&cert),
        "--key",
        &path_str(&key),
        "-i",
        "device-a",
    ]
    .map(String::from);
    let out = tokio::task::spawn_blocking(move || {
        text(&mosquitto(
            "mosquitto_pub",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ))
    })
    .await
    .unwrap();
    let alarm = fieldlink_core::crl::alarms()
        .into_iter()
        .find(|a| a.contains(&path_str(&crl)))
        .unwrap_or_default();
    edge.stop().await;
    (out, alarm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_crl_refuses_new_handshakes_and_raises_an_alarm() {
    let (out, alarm) = stale_crl_attempt("").await;
    assert!(
        !out.contains("received CONNACK"),
        "a stale CRL proves nothing: the handshake is refused: {out}"
    );
    assert!(alarm.contains("expired on 2025-06-01"), "alarm: {alarm:?}");
    assert!(alarm.contains("CN=devices CA"), "alarm: {alarm:?}");
    assert!(alarm.ends_with("update it"), "alarm: {alarm:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_crl_warn_accepts_with_an_alarm() {
    let (out, alarm) = stale_crl_attempt("stale_crl = \"warn\"\n").await;
    assert!(out.contains("received CONNACK (0)"), "{out}");
    assert!(alarm.contains("expired on 2025-06-01"), "alarm: {alarm:?}");
}
