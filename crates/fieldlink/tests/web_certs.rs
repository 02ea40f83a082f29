//! The uplink's certificate from the web UI's API, against the real binary and a real
//! mosquitto that requires client certificates: the certificate request is signed by the
//! uplink's key for its client id; a new certificate is refused unless it is PEM, for the
//! uplink's key, from the configured CA and valid now; a good one is written where
//! `uplink.cert_file` points and applied with a restart and health check, and the uplink
//! connects with it.

mod web_gateway;

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use fieldlink_test_support::certs::{Leaf, TestCa, write};
use fieldlink_test_support::web_client::form;
use fieldlink_test_support::{Mosquitto, free_port, wait_for_port};
use web_gateway::{Gateway, json, post_json, uplink_connected};

#[tokio::test]
async fn the_uplink_certificate_is_requested_checked_uploaded_and_used() {
    let ca = TestCa::new("site CA");
    let pki = tempfile::tempdir().unwrap();
    let server = ca.issue("cloud", &["localhost"]);
    let client = ca.issue_with("gw-7", &[], Leaf::valid_from_today());
    let ca_file = write(pki.path(), "ca.pem", ca.pem());
    let tls = free_port();
    let _cloud = Mosquitto::start(&format!(
        "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        ca_file.display(),
        write(pki.path(), "server.pem", &server.cert_pem).display(),
        write(pki.path(), "server.key", &server.key_pem).display(),
    ));
    wait_for_port(([127, 0, 0, 1], tls).into(), Duration::from_secs(10));
    let cert_file = write(pki.path(), "uplink.pem", &client.cert_pem);
    let key_file = write(pki.path(), "uplink.key", &client.key_pem);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut gateway = Gateway::configure_with(&format!(
        "apply_check = \"2s\"\n\
         [uplink]\nhost = \"localhost\"\nport = {tls}\nclient_id = \"gw-7\"\ntls = \"mutual\"\n\
         ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
         [keys]\nca_file = \"{ca}\"\n",
        ca = ca_file.display(),
        cert = cert_file.display(),
        key = key_file.display(),
    ));
    let added = gateway.users(&["add", "ada", "--role", "admin"], "admin-password\n");
    assert!(added.status.success());
    gateway.run();
    let mut admin = gateway.client();
    let login = admin
        .post_form(
            "/login",
            &form(&[("username", "ada"), ("password", "admin-password")]),
        )
        .await;
    assert_eq!(login.status, 303);
    let csrf = json(&admin.get("/api/v1/session").await.body)["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    uplink_connected(&mut admin).await;

    // The request: signed by the uplink's key, for its client id.
    let csr = admin.get("/api/v1/certificates/uplink/csr").await;
    assert_eq!(csr.status, 200, "{}", csr.body);
    let csr_file = write(
        pki.path(),
        "uplink.csr",
        json(&csr.body)["csr"].as_str().unwrap(),
    );
    let checked = std::process::Command::new("openssl")
        .args(["req", "-noout", "-verify", "-subject", "-pubkey", "-in"])
        .arg(&csr_file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(
        checked.status.success() && said.contains("CN = gw-7"),
        "{said}"
    );
    let key_pub = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(
        said.contains(String::from_utf8_lossy(&key_pub.stdout).trim()),
        "the key's: {said}"
    );
    // The page offers it as a file.
    let download = admin.get("/certificates/uplink.csr").await;
    assert_eq!(download.header("content-type"), Some("application/pkcs10"));

    // Refused, and the file untouched: not PEM, another key, another CA, expired.
    let upload = |pem: String| serde_json::json!({ "pem": pem });
    let cases = [
        ("not PEM", "hello".to_owned(), "no certificate"),
        (
            "another key",
            ca.issue("gw-7", &[]).cert_pem,
            "not the uplink's key",
        ),
        (
            "another CA",
            TestCa::new("stranger")
                .reissue(&client.key_pem, "gw-7", Leaf::valid_from_today())
                .cert_pem,
            "does not chain",
        ),
        (
            "expired",
            ca.reissue(
                &client.key_pem,
                "gw-7",
                Leaf {
                    expired: true,
                    ..Leaf::default()
                },
            )
            .cert_pem,
            "expired",
        ),
    ];
    for (case, pem, words) in cases {
        let refused = post_json(
            &mut admin,
            &csrf,
            "/api/v1/certificates/uplink",
            upload(pem),
        )
        .await;
        assert_eq!(refused.status, 400, "{case}: {}", refused.body);
        assert!(refused.body.contains(words), "{case}: {}", refused.body);
        assert_eq!(
            std::fs::read_to_string(&cert_file).unwrap(),
            client.cert_pem,
            "{case}"
        );
    }

    // A good one: written where the configuration points, the uplink restarted on it.
    let renewed = ca.reissue(&client.key_pem, "gw-7", Leaf::valid_from_today());
    let started = post_json(
        &mut admin,
        &csrf,
        "/api/v1/certificates/uplink",
        upload(renewed.cert_pem.clone()),
    )
    .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let start = Instant::now();
    let ended = loop {
        let apply = json(&admin.get("/api/v1/config").await.body)["apply"].clone();
        if apply["state"] != "applying" {
            break apply;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still applying");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(ended["state"], "kept", "{ended}");
    assert!(
        ended["summary"]
            .as_str()
            .unwrap()
            .contains("uplink connected again"),
        "{ended}"
    );
    assert_eq!(
        std::fs::read_to_string(&cert_file).unwrap().trim(),
        renewed.cert_pem.trim()
    );
    uplink_connected(&mut admin).await;
    // Not a site configuration change: nothing written there.
    assert!(!gateway.dir.path().join("data/config/site.toml").exists());
}
