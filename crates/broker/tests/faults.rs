//! A listener whose security files are wrong stops the broker at start with a typed error
//! that says whose fault it is and names the listener and the file.

use fieldlink_broker::config::parse;
use fieldlink_broker::{BrokerError, RunningBroker, SecurityError};
use fieldlink_core::config::Origin;
use fieldlink_core::fault::Fault;
use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::free_port;

fn start(listener: &str) -> BrokerError {
    let text = format!(
        "[[broker.listeners]]\nname = \"lan\"\nport = {}\n{listener}",
        free_port()
    );
    let settings = parse(&text, Origin::BuiltIn).expect("valid settings");
    match RunningBroker::start(&settings) {
        Ok(_) => panic!("the broker started with {listener}"),
        Err(e) => e,
    }
}

#[test]
fn a_missing_certificate_is_the_configurations_fault() {
    let err = start(
        "tls = \"server-auth\"\ncert_file = \"/nonexistent/b.pem\"\nkey_file = \"/nonexistent/b.key\"\n",
    );
    assert!(
        matches!(
            &err,
            BrokerError::Security { name, problem: SecurityError::Tls(_) } if name == "lan"
        ),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::Config);
    let shown = err.to_string();
    assert!(shown.starts_with("listener `lan`: "), "{shown}");
    assert!(shown.contains("/nonexistent/b.pem"), "{shown}");
}

#[test]
fn a_ca_that_cannot_anchor_trust_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = TestCa::new("faults-ca").issue("broker", &["localhost"]);
    let cert = write(dir.path(), "b.pem", &leaf.cert_pem);
    let key = write(dir.path(), "b.key", &leaf.key_pem);
    // A PEM block that is not DER: read, then refused as a trust anchor.
    let bad_ca = write(
        dir.path(),
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    );
    let err = start(&format!(
        "tls = \"mutual\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
        cert.display(),
        key.display(),
        bad_ca.display()
    ));
    assert!(
        matches!(
            &err,
            BrokerError::Security { problem: SecurityError::CaCertificate { path, .. }, .. }
                if *path == bad_ca
        ),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::Config);
}
