//! fieldlink-keys against a real SoftHSM2 token made at test time.
//!
//! SoftHSM2 finds its token directory through `SOFTHSM2_CONF`, read when the module is
//! initialised. Each test therefore runs twice: first without it, making the token and running
//! itself again (the same test, in a child process) with `SOFTHSM2_CONF` set; the child does the
//! work. No environment is changed in a running process.

use std::path::PathBuf;
use std::sync::Arc;

use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use fieldlink_core::tls::{KeyRef, KeyResolver as _, TlsPolicy};
use fieldlink_keys::Pkcs11Keys;
use fieldlink_keys::config::{KeysSettings, PinSource, Pkcs11Settings};
use fieldlink_keys::key::Curve;
use fieldlink_keys::manage;
use fieldlink_keys::token::Tokens;
use fieldlink_test_support::{SOFTHSM_MODULE, SoftHsm};

const PIN_FILE: &str = "FIELDLINK_TEST_PIN_FILE";

/// In the parent: makes a token and runs `test` again in a child with it; returns `None`. In the
/// child: the settings that reach the token.
fn in_softhsm(test: &str) -> Option<KeysSettings> {
    if let Some(pin_file) = std::env::var_os(PIN_FILE) {
        return Some(KeysSettings {
            pkcs11: Some(Pkcs11Settings {
                module: SOFTHSM_MODULE.into(),
                pin: PinSource::File(PathBuf::from(pin_file)),
            }),
            ca_file: None,
        });
    }
    let hsm = SoftHsm::new("gw-token");
    let out = hsm
        .command(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(PIN_FILE, hsm.pin_file())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{test} in SoftHSM2:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    None
}

fn tokens(settings: &KeysSettings) -> Tokens {
    Tokens::new(settings.pkcs11.clone().unwrap())
}

#[test]
fn a_generated_key_never_gives_out_its_value() {
    let Some(settings) = in_softhsm("a_generated_key_never_gives_out_its_value") else {
        return;
    };
    let tokens = tokens(&settings);
    let session = tokens.open("gw-token", None).unwrap();
    manage::generate(&session, "uplink", Curve::P256).unwrap();
    let handle = session
        .with(|s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(b"uplink".to_vec()),
            ])
        })
        .unwrap()[0];
    // CKA_VALUE of a sensitive key: refused by the token (CKR_ATTRIBUTE_SENSITIVE), which
    // cryptoki reports as an error or as the attribute left out.
    let value = session.with(|s| s.get_attributes(handle, &[AttributeType::Value]));
    match value {
        Err(e) => assert!(e.to_string().contains("Sensitive"), "{e}"),
        Ok(attributes) => assert!(
            !attributes.iter().any(|a| matches!(a, Attribute::Value(_))),
            "the token gave out the private key"
        ),
    }
    let flags = session
        .with(|s| {
            s.get_attributes(
                handle,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
        })
        .unwrap();
    for flag in flags {
        match flag {
            Attribute::Sensitive(b) | Attribute::NeverExtractable(b) => assert!(b),
            Attribute::Extractable(b) => assert!(!b),
            _ => {}
        }
    }
}

#[test]
fn a_token_key_signs_tls_handshakes_on_p256_and_p384() {
    let Some(settings) = in_softhsm("a_token_key_signs_tls_handshakes_on_p256_and_p384") else {
        return;
    };
    let tokens = tokens(&settings);
    let session = tokens.open("gw-token", None).unwrap();
    let keys = Pkcs11Keys::new(&settings);
    for (label, curve) in [("p256", Curve::P256), ("p384", Curve::P384)] {
        manage::generate(&session, label, curve).unwrap();
        let key = keys
            .token_key(&format!("pkcs11:token=gw-token;object={label}"))
            .unwrap();
        // A certificate for the token's key, issued by a CA made here.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(key.as_ref(), &issuer)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let policy = TlsPolicy::default();
        let source = keys
            .resolve(&KeyRef::Pkcs11(format!(
                "pkcs11:token=gw-token;object={label}"
            )))
            .unwrap();
        let server = policy
            .listener_config(vec![cert.der().clone()], source.as_ref(), None)
            .unwrap();
        let client = policy.client_config(roots).unwrap();
        handshake(client, server).unwrap();
    }
}

#[test]
fn a_session_that_ends_is_opened_again() {
    let Some(settings) = in_softhsm("a_session_that_ends_is_opened_again") else {
        return;
    };
    let tokens = tokens(&settings);
    let session = tokens.open("gw-token", None).unwrap();
    manage::generate(&session, "uplink", Curve::P256).unwrap();
    let keys = Pkcs11Keys::new(&settings);
    let uri = "pkcs11:token=gw-token;object=uplink";
    let first = keys.token_key(uri).unwrap();
    assert!(
        Arc::ptr_eq(&first, &keys.token_key(uri).unwrap()),
        "kept while alive"
    );
    // A token reset's effect on the application's sessions: the login is gone (C_Logout ends
    // it for every session on the token).
    session.with(|s| s.logout()).unwrap();
    assert!(!first.is_alive());
    let second = keys.token_key(uri).unwrap();
    assert!(second.is_alive());
    assert!(second.sign(b"hello").is_ok());
}

/// A handshake in memory; the first error.
fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> Result<(), rustls::Error> {
    let mut c = rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())?;
    let mut s = rustls::ServerConnection::new(Arc::new(server))?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets()?;
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn a_token_that_goes_away_is_unavailable_until_it_is_back() {
    let Some(settings) = in_softhsm("a_token_that_goes_away_is_unavailable_until_it_is_back")
    else {
        return;
    };
    let tokens = tokens(&settings);
    let session = tokens.open("gw-token", None).unwrap();
    manage::generate(&session, "uplink", Curve::P256).unwrap();
    drop(session);
    let keys = Pkcs11Keys::new(&settings);
    let uri = KeyRef::Pkcs11("pkcs11:token=gw-token;object=uplink".into());
    let key = keys
        .token_key("pkcs11:token=gw-token;object=uplink")
        .unwrap();
    assert!(key.sign(b"before").is_ok());

    // "Unplugged": SoftHSM2's token directory moved away.
    let conf = PathBuf::from(std::env::var_os("SOFTHSM2_CONF").unwrap());
    let token_dir = conf.parent().unwrap().join("tokens");
    let away = conf.parent().unwrap().join("tokens-away");
    std::fs::rename(&token_dir, &away).unwrap();
    assert!(key.sign(b"during").is_err());
    for _ in 0..3 {
        let err = keys.resolve(&uri).unwrap_err().to_string();
        assert!(
            err.starts_with("hardware key unavailable: pkcs11:token=gw-token;object=uplink: "),
            "{err}"
        );
    }

    // Plugged in again: the next resolution finds it, without a new resolver.
    std::fs::rename(&away, &token_dir).unwrap();
    keys.resolve(&uri).unwrap();
    let key = keys
        .token_key("pkcs11:token=gw-token;object=uplink")
        .unwrap();
    assert!(key.sign(b"after").is_ok());
}
