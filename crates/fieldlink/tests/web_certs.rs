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

/// A cloud (mosquitto) that requires client certificates from `ca` and revokes the serial
/// numbers in `revoked`, and a gateway whose uplink presents one, with an admin logged in
/// through the API once the uplink is connected.
struct Site {
    _cloud: Mosquitto,
    pki: tempfile::TempDir,
    ca: TestCa,
    client: fieldlink_test_support::certs::Issued,
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    gateway: Gateway,
    admin: fieldlink_test_support::web_client::WebClient,
    csrf: String,
}

impl Site {
    async fn start(revoked: &[u64]) -> Self {
        let ca = TestCa::new("site CA");
        let pki = tempfile::tempdir().unwrap();
        let server = ca.issue("cloud", &["localhost"]);
        let client = ca.issue_with("gw-7", &[], Leaf::valid_from_today());
        let ca_file = write(pki.path(), "ca.pem", ca.pem());
        let crl = write(pki.path(), "crl.pem", &ca.crl(revoked));
        let tls = free_port();
        let cloud = Mosquitto::start(&format!(
            "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\ncrlfile {}\n",
            ca_file.display(),
            write(pki.path(), "server.pem", &server.cert_pem).display(),
            write(pki.path(), "server.key", &server.key_pem).display(),
            crl.display(),
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
        Self {
            _cloud: cloud,
            pki,
            ca,
            client,
            cert_file,
            key_file,
            gateway,
            admin,
            csrf,
        }
    }

    /// Uploads `pem` and waits for the apply to end; its state.
    async fn apply(&mut self, pem: &str) -> serde_json::Value {
        let started = post_json(
            &mut self.admin,
            &self.csrf,
            "/api/v1/certificates/uplink",
            serde_json::json!({ "pem": pem }),
        )
        .await;
        assert_eq!(started.status, 202, "{}", started.body);
        let start = Instant::now();
        loop {
            let apply = json(&self.admin.get("/api/v1/config").await.body)["apply"].clone();
            if apply["state"] != "applying" {
                return apply;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "still applying");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

#[tokio::test]
async fn the_uplink_certificate_is_requested_checked_uploaded_and_used() {
    let mut site = Site::start(&[]).await;
    let pki = site.pki.path().to_owned();
    let (client, cert_file, key_file) = (
        site.client.clone(),
        site.cert_file.clone(),
        site.key_file.clone(),
    );
    let (admin, csrf) = (&mut site.admin, site.csrf.clone());

    // The request: signed by the uplink's key, for its client id.
    let csr = admin.get("/api/v1/certificates/uplink/csr").await;
    assert_eq!(csr.status, 200, "{}", csr.body);
    let csr_file = write(&pki, "uplink.csr", json(&csr.body)["csr"].as_str().unwrap());
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
            site.ca.issue("gw-7", &[]).cert_pem,
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
            site.ca
                .reissue(
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
        let refused = post_json(admin, &csrf, "/api/v1/certificates/uplink", upload(pem)).await;
        assert_eq!(refused.status, 400, "{case}: {}", refused.body);
        assert!(refused.body.contains(words), "{case}: {}", refused.body);
        assert_eq!(
            std::fs::read_to_string(&cert_file).unwrap(),
            client.cert_pem,
            "{case}"
        );
    }

    // A good one: written where the configuration points, the uplink restarted on it.
    let renewed = site
        .ca
        .reissue(&client.key_pem, "gw-7", Leaf::valid_from_today());
    let ended = site.apply(&renewed.cert_pem).await;
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
    uplink_connected(&mut site.admin).await;
    // Not a site configuration change: nothing written there.
    assert!(
        !site
            .gateway
            .dir
            .path()
            .join("data/config/site.toml")
            .exists()
    );
}

#[tokio::test]
async fn a_certificate_the_cloud_refuses_is_rolled_back_to_the_previous_file() {
    // The cloud revokes serial 4242: our checks pass it (it is for the key, from the CA, valid
    // now), the cloud does not.
    let mut site = Site::start(&[4242]).await;
    let revoked = site.ca.reissue(
        &site.client.key_pem,
        "gw-7",
        Leaf {
            serial: Some(4242),
            ..Leaf::valid_from_today()
        },
    );
    let ended = site.apply(&revoked.cert_pem).await;
    assert_eq!(ended["state"], "rolled_back", "{ended}");
    let why = ended["why"].as_str().unwrap();
    assert!(
        why.contains("uplink") && why.contains("did not connect again"),
        "{why}"
    );
    // The previous certificate is back, and the uplink connects with it.
    assert_eq!(
        std::fs::read_to_string(&site.cert_file).unwrap(),
        site.client.cert_pem
    );
    uplink_connected(&mut site.admin).await;
}
