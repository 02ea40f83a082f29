//! What the gateway logs says what happened: a client that connects to a TLS listener by IP
//! address (as most MQTT clients do on a LAN, sending the IP as SNI) leaves no warning.

use std::process::{Command, Stdio};
use std::time::Duration;

use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::{free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

#[test]
fn a_client_connecting_by_ip_address_leaves_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("site CA");
    let server = ca.issue("gateway", &["localhost"]);
    let cert = write(dir.path(), "broker.pem", &server.cert_pem);
    let key = write(dir.path(), "broker.key", &server.key_pem);
    let ca_file = write(dir.path(), "ca.pem", ca.pem());
    let port = free_port();
    let config = write(
        dir.path(),
        "fieldlink.toml",
        &format!(
            "[gateway]\ndata_dir = \"{}\"\n\
             [[broker.listeners]]\nbind = \"127.0.0.1\"\nport = {port}\ntls = \"server-auth\"\n\
             anonymous = true\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("data").display(),
            cert.display(),
            key.display()
        ),
    );
    let log_path = dir.path().join("stderr.log");
    let mut gateway = Command::new(BIN)
        .args(["--config", &config.display().to_string(), "run"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
    // By IP: the certificate names "localhost", so the name check is off (--insecure); the
    // handshake and the SNI extension carrying "127.0.0.1" are what matters here.
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--insecure"])
        .args(["--cafile", &ca_file.display().to_string()])
        .args(["-t", "site/x", "-m", "1", "-q", "1"])
        .output()
        .unwrap();
    let _ = gateway.kill();
    let _ = gateway.wait();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("WARN"),
        "no warning for an ordinary client: {log}"
    );
}
