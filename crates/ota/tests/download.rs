//! The downloader against a real HTTPS server (test-support's, with Range): a server the CA
//! does not vouch for and a missing file are refused at once, without retries; a file that
//! is already complete is not fetched again.

use std::sync::Arc;
use std::time::Duration;

use fieldlink_ota::download::{DownloadError, Downloader};
use fieldlink_test_support::HttpsFiles;
use fieldlink_test_support::certs::{TestCa, write};

fn downloader(ca: &TestCa, dir: &std::path::Path) -> Downloader {
    fieldlink_core::tls::install_default_provider();
    let path = write(dir, "ca.pem", ca.pem());
    let mut roots = rustls::RootCertStore::empty();
    for cert in fieldlink_core::tls::read_certs(&path).unwrap() {
        roots.add(cert).unwrap();
    }
    let tls = fieldlink_core::tls::TlsPolicy::default()
        .client_config(roots)
        .unwrap();
    Downloader::new(Arc::new(tls), Duration::from_secs(5), 5, 0, 1 << 30)
}

#[tokio::test]
async fn untrusted_servers_and_missing_files_are_refused_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("b.raucb"), vec![7u8; 100_000]).unwrap();
    let ours = TestCa::new("ours");
    let theirs = TestCa::new("theirs");
    let server = theirs.issue("localhost", &["localhost"]);
    let files = HttpsFiles::start(www.clone(), &server.cert_pem, &server.key_pem);
    let part = dir.path().join("b.part");
    let url = format!("https://localhost:{}/b.raucb", files.addr().port());

    let e = downloader(&ours, dir.path())
        .fetch(&url, &part, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, DownloadError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("not trusted"), "{e}");
    assert_eq!(
        files.served().len(),
        0,
        "no HTTP request over an untrusted connection"
    );

    let server = ours.issue("localhost", &["localhost"]);
    let files = HttpsFiles::start(www, &server.cert_pem, &server.key_pem);
    let d = downloader(&ours, dir.path());
    let missing = format!("https://localhost:{}/nope.raucb", files.addr().port());
    let e = d.fetch(&missing, &part, |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    assert_eq!(files.served().len(), 1, "a 404 is not retried");

    let url = format!("https://localhost:{}/b.raucb", files.addr().port());
    assert_eq!(d.fetch(&url, &part, |_| {}).await.unwrap(), 100_000);
    assert_eq!(std::fs::read(&part).unwrap(), vec![7u8; 100_000]);
    // Complete already: asked from byte 100000, answered 416 with the size, nothing written.
    assert_eq!(d.fetch(&url, &part, |_| {}).await.unwrap(), 100_000);
    assert_eq!(files.served().last().unwrap().range_from, Some(100_000));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 100_000);
}
