//! Mutual-TLS handshakes with a key file, a key in SoftHSM2 and a key in a software TPM 2.0
//! (swtpm + tpm2-abrmd + tpm2-pkcs11), side by side: the broker listener's side (the server's
//! key signs) and the uplink's side (the client's key signs).
//! Handshakes run in memory (no sockets), one after another, so the figures are the TLS work
//! and the token's signature, nothing else.
//!
//! `cargo bench -p fieldlink-keys --bench handshake` (what `scripts/test` installs: softhsm2,
//! swtpm, tpm2-abrmd, libtpm2-pkcs11-1). The tokens are made at run time in temporary
//! directories; the benchmark runs itself again with the environment that reaches them. A
//! software TPM is slower than a real one's signature would be, and a real TPM slower still
//! than a secure element: the TPM row is what this machine's swtpm gives.
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldlink_core::tls::{ClientTls, FileKey, KeySource, TlsPolicy};
use fieldlink_keys::Pkcs11Keys;
use fieldlink_keys::config::{KeysSettings, PinSource, Pkcs11Settings};
use fieldlink_keys::key::{Curve, TokenKeySource};
use fieldlink_keys::manage;
use fieldlink_keys::token::Tokens;
use fieldlink_test_support::{SOFTHSM_MODULE, SoftHsm, SoftTpm, tpm2_pkcs11_module};
use rustls::pki_types::CertificateDer;

const PIN_FILE: &str = "FIELDLINK_BENCH_PIN_FILE";
const TPM_PIN_FILE: &str = "FIELDLINK_BENCH_TPM_PIN_FILE";
const HANDSHAKES: usize = 300;

fn main() {
    let Some(pin_file) = std::env::var_os(PIN_FILE) else {
        let hsm = SoftHsm::new("bench-token");
        let tpm = SoftTpm::new("bench-token");
        let status = tpm
            .command(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .env("SOFTHSM2_CONF", hsm.conf())
            .env(PIN_FILE, hsm.pin_file())
            .env(TPM_PIN_FILE, tpm.pin_file())
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    };
    let tpm_pin_file = std::env::var_os(TPM_PIN_FILE).expect("set with the other");
    let softhsm = token_keys(SOFTHSM_MODULE, pin_file.into());
    let tpm = token_keys(tpm2_pkcs11_module(), tpm_pin_file.into());
    let dir = tempfile::tempdir().unwrap();

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();

    // One identity per (side, where the key is): its certificate and key source.
    let file_identity = |name: &str| -> (CertificateDer<'static>, Arc<dyn KeySource>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let path = dir.path().join(format!("{name}.key"));
        std::fs::write(&path, key.serialize_pem()).unwrap();
        (cert.der().clone(), Arc::new(FileKey(path)))
    };
    let token_identity = |keys: &Pkcs11Keys, label: &str| {
        let key = keys
            .token_key(&format!("pkcs11:token=bench-token;object={label}"))
            .unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(key.as_ref(), &issuer)
            .unwrap();
        let source: Arc<dyn KeySource> = Arc::new(TokenKeySource(key));
        (cert.der().clone(), source)
    };
    let server_file = file_identity("server");
    let client_file = file_identity("client");
    let server_hsm = token_identity(&softhsm, "server");
    let client_hsm = token_identity(&softhsm, "client");
    let server_tpm = token_identity(&tpm, "server");
    let client_tpm = token_identity(&tpm, "client");

    println!(
        "mTLS handshakes in memory, ECDSA P-256 on both sides, TLS 1.3, {HANDSHAKES} each, one at a time"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>12}",
        "case", "mean", "p50", "p99", "handshakes/s"
    );
    let cases = [
        ("file keys on both sides", &server_file, &client_file),
        (
            "broker listener's key in SoftHSM2",
            &server_hsm,
            &client_file,
        ),
        ("uplink's key in SoftHSM2", &server_file, &client_hsm),
        (
            "broker listener's key in the software TPM",
            &server_tpm,
            &client_file,
        ),
        (
            "uplink's key in the software TPM",
            &server_file,
            &client_tpm,
        ),
    ];
    let mut means = Vec::new();
    for (name, server, client) in cases {
        let policy = TlsPolicy::default();
        let server_config = Arc::new(
            policy
                .listener_config(
                    vec![server.0.clone()],
                    server.1.as_ref(),
                    Some((roots.clone(), Vec::new())),
                )
                .unwrap(),
        );
        let client_config = Arc::new(
            policy
                .client_config_with(ClientTls {
                    roots: roots.clone(),
                    crls: Vec::new(),
                    identity: Some((vec![client.0.clone()], client.1.clone())),
                    alpn: Vec::new(),
                    peer_chain: None,
                })
                .unwrap(),
        );
        // Warm up (first signature opens the token's operation state).
        for _ in 0..10 {
            handshake(&client_config, &server_config);
        }
        let mut times: Vec<Duration> = (0..HANDSHAKES)
            .map(|_| {
                let start = Instant::now();
                handshake(&client_config, &server_config);
                start.elapsed()
            })
            .collect();
        times.sort();
        let total: Duration = times.iter().sum();
        let mean = total / HANDSHAKES as u32;
        means.push(mean);
        println!(
            "{name:<44} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>12.0}",
            ms(mean),
            ms(times[HANDSHAKES / 2]),
            ms(times[HANDSHAKES * 99 / 100]),
            HANDSHAKES as f64 / total.as_secs_f64()
        );
    }
    println!(
        "SoftHSM2 / file key: broker side {:.2}x, uplink side {:.2}x (goal: at most 2x)",
        ms(means[1]) / ms(means[0]),
        ms(means[2]) / ms(means[0])
    );
    println!(
        "software TPM / file key: broker side {:.2}x, uplink side {:.2}x (as measured; no goal)",
        ms(means[3]) / ms(means[0]),
        ms(means[4]) / ms(means[0])
    );
}

/// A token's keys: the token labelled `bench-token` behind `module`, with a fresh P-256 key
/// pair for each side.
fn token_keys(module: &str, pin_file: PathBuf) -> Pkcs11Keys {
    let settings = KeysSettings {
        pkcs11: Some(Pkcs11Settings {
            module: module.into(),
            pin: PinSource::File(pin_file),
        }),
        ca_file: None,
    };
    let tokens = Tokens::new(settings.pkcs11.clone().unwrap());
    let session = tokens.open("bench-token", None).unwrap();
    for label in ["server", "client"] {
        manage::generate(&session, label, Curve::P256).unwrap();
    }
    Pkcs11Keys::new(&settings)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One full handshake in memory; panics on any error.
fn handshake(client: &Arc<rustls::ClientConfig>, server: &Arc<rustls::ServerConfig>) {
    let mut c =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets().unwrap();
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !s.is_handshaking() {
            return;
        }
    }
    panic!("the handshake did not finish");
}
