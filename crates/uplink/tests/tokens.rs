//! The uplink's tokens checked by other implementations: JWTs (ES256, RS256) verified by PyJWT,
//! Azure SAS tokens compared with those of Microsoft's own SDK (`azure-iot-device`) at a fixed
//! expiry. The Python peers run in the venv `scripts/test` makes (`FIELDLINK_PYTHON`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fieldlink_uplink::config::JwtSettings;
use fieldlink_uplink::tokens;

use common::{P256, key_pair};

mod common;

fn python() -> PathBuf {
    let path = std::env::var_os("FIELDLINK_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{path:?} missing: run scripts/test once (it makes the venv with PyJWT and azure-iot-device)"
    );
    path
}

fn peer(script: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(python())
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/peers")
                .join(script),
        )
        .args(args)
        .output()
        .expect("python runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (
        out.status.success(),
        format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

const RSA: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];

fn jwt_settings(key_file: PathBuf) -> JwtSettings {
    JwtSettings {
        username: "gw-7".into(),
        key: fieldlink_core::tls::KeyRef::File(key_file),
        audience: "fieldlink".into(),
        subject: "site-7-gw".into(),
        lifetime: Duration::from_secs(3600),
        key_id: Some("gw-key-1".into()),
        claims: r#"{"scope":["fieldlink.write:*/*/*"]}"#.into(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn verified_by_pyjwt(genpkey: &[&str], alg: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "token", genpkey);
    let iat = now();
    let token = tokens::jwt(&jwt_settings(key), iat).unwrap();
    let (ok, out) = peer(
        "check_jwt.py",
        &[&token, public.to_str().unwrap(), alg, "fieldlink"],
    );
    assert!(ok, "PyJWT refused our {alg} token: {out}");
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(seen["header"]["alg"], alg);
    assert_eq!(seen["header"]["typ"], "JWT");
    assert_eq!(seen["header"]["kid"], "gw-key-1");
    let claims = &seen["claims"];
    assert_eq!(claims["aud"], "fieldlink");
    assert_eq!(claims["sub"], "site-7-gw");
    assert_eq!(claims["iat"], iat);
    assert_eq!(claims["exp"], iat + 3600);
    assert_eq!(claims["scope"][0], "fieldlink.write:*/*/*");
}

#[test]
fn es256_tokens_verify_with_pyjwt() {
    verified_by_pyjwt(P256, "ES256");
}

#[test]
fn rs256_tokens_verify_with_pyjwt() {
    verified_by_pyjwt(RSA, "RS256");
}

#[test]
fn pyjwt_refuses_our_token_under_another_key_audience_or_past_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(dir.path(), "token", P256);
    let (_, other_public) = key_pair(dir.path(), "other", P256);
    let token = tokens::jwt(&jwt_settings(key.clone()), now()).unwrap();
    let (ok, out) = peer(
        "check_jwt.py",
        &[&token, other_public.to_str().unwrap(), "ES256", "fieldlink"],
    );
    assert!(!ok && out.contains("InvalidSignatureError"), "{out}");
    let (ok, out) = peer(
        "check_jwt.py",
        &[&token, public.to_str().unwrap(), "ES256", "elsewhere"],
    );
    assert!(!ok && out.contains("InvalidAudienceError"), "{out}");
    let expired = tokens::jwt(&jwt_settings(key), now() - 7200).unwrap();
    let (ok, out) = peer(
        "check_jwt.py",
        &[&expired, public.to_str().unwrap(), "ES256", "fieldlink"],
    );
    assert!(!ok && out.contains("ExpiredSignatureError"), "{out}");
}

#[test]
fn a_token_key_on_another_curve_or_open_to_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (p384, _) = key_pair(
        dir.path(),
        "p384",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    );
    let err = tokens::jwt(&jwt_settings(p384), now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("P-256"), "{err}");
    let (open, _) = key_pair(dir.path(), "open", P256);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = tokens::jwt(&jwt_settings(open), now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("readable by other users"), "{err}");
}

#[test]
fn sas_tokens_equal_those_of_microsofts_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let key = "aGVsbG8gZmllbGRsaW5rLCB0aGlzIGlzIGEgdGVzdCBrZXkh";
    let key_file = dir.path().join("sas.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (hub, device, expiry) in [
        ("plant-3.azure-devices.net", "site-7-gw", 1_800_000_000u64),
        ("x.azure-devices.net", "dev 1+a=b~c", 1_900_000_123),
    ] {
        let ours = tokens::azure_sas(&key_file, hub, device, expiry).unwrap();
        let (ok, sdk) = peer("sas_token.py", &[hub, device, key, &expiry.to_string()]);
        assert!(ok, "{sdk}");
        assert_eq!(ours, sdk, "for {device} at {expiry}");
    }
    assert_eq!(
        tokens::azure_username("plant-3.azure-devices.net", "site-7-gw"),
        "plant-3.azure-devices.net/site-7-gw/?api-version=2021-04-12"
    );
}

#[test]
fn a_sas_key_that_is_not_base64_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("sas.key");
    std::fs::write(&key_file, "not base64 at all!\n").unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = tokens::azure_sas(&key_file, "h", "d", 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a base64 key"), "{err}");
    assert!(!err.contains("at all"), "{err}");
}
