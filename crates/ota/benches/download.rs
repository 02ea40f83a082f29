//! The bundle download's throughput and memory on loopback: a bundle-sized file (200 MB by
//! default; `OTA_BENCH_MB` to change) served by the test HTTPS server, fetched by the agent's
//! downloader into a temporary directory, then its SHA-256 computed as the agent does.
//!
//! `cargo bench -p fieldlink-ota --bench download`
//!
//! RSS is the whole process's: the downloader and the server (both stream through 64 KiB
//! buffers) share it; the peak (VmHWM) is printed next to the RSS before the download.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldlink_ota::download::{Downloader, sha256_file};
use fieldlink_test_support::HttpsFiles;
use fieldlink_test_support::certs::TestCa;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[allow(clippy::print_stdout)]
fn main() {
    fieldlink_core::tls::install_default_provider();
    let mb: u64 = std::env::var("OTA_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    // Pseudo-random content (incompressible, like a squashfs), written in 1 MiB pieces.
    {
        use std::io::Write as _;
        let mut file = std::io::BufWriter::new(std::fs::File::create(www.join("b.raucb")).unwrap());
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..mb {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            file.write_all(&block).unwrap();
        }
    }
    let ca = TestCa::new("bench CA");
    let server = ca.issue("localhost", &["localhost"]);
    let files = HttpsFiles::start(www, &server.cert_pem, &server.key_pem);
    let mut roots = rustls::RootCertStore::empty();
    let ca_path = fieldlink_test_support::certs::write(dir.path(), "ca.pem", ca.pem());
    for cert in fieldlink_core::tls::read_certs(&ca_path).unwrap() {
        roots.add(cert).unwrap();
    }
    let tls = fieldlink_core::tls::TlsPolicy::default()
        .client_config(roots)
        .unwrap();
    let downloader = Downloader::new(Arc::new(tls), Duration::from_secs(30), 3, 0, u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/b.raucb", files.addr().port());
    let out = dir.path().join("dl").join("b.raucb.part");
    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let rss_before = status_kib("VmRSS:");
    let start = Instant::now();
    let bytes = runtime
        .block_on(downloader.fetch(&url, &out, |_| {}))
        .unwrap();
    let download = start.elapsed();
    let start = Instant::now();
    let sum = runtime.block_on(sha256_file(&out)).unwrap();
    let hashing = start.elapsed();
    let mib = bytes as f64 / f64::from(1 << 20);
    println!(
        "{mb} MB bundle over HTTPS on loopback: {bytes} bytes in {:.2} s = {:.0} MiB/s; \
         SHA-256 {:.2} s ({:.0} MiB/s, {}…)",
        download.as_secs_f64(),
        mib / download.as_secs_f64(),
        hashing.as_secs_f64(),
        mib / hashing.as_secs_f64(),
        &sum[..12]
    );
    println!(
        "RSS before the download {} KiB, peak (VmHWM) {} KiB, after {} KiB",
        rss_before,
        status_kib("VmHWM:"),
        status_kib("VmRSS:")
    );
}
