//! The drain publishes in bursts: with messages in flight, a PUBACK frees room, and the room
//! is used once a quarter of the window is free, not for each PUBACK (see `BURST_OF_WINDOW`).
//! The cloud here is a scripted MQTT server behind real TLS, so that the test decides when
//! each PUBACK goes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fill, queue, settings, start_uplink};
use fieldlink_test_support::certs::TestCa;
use fieldlink_uplink::config::UplinkTls;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// One MQTT packet: its first byte and its body.
async fn read_packet<R: AsyncRead + Unpin>(from: &mut R) -> (u8, Vec<u8>) {
    let kind = from.read_u8().await.unwrap();
    let (mut length, mut shift) = (0usize, 0);
    loop {
        let byte = from.read_u8().await.unwrap();
        length |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0; length];
    from.read_exact(&mut body).await.unwrap();
    (kind, body)
}

/// The packet id of a QoS 1 PUBLISH's body.
fn packet_id(body: &[u8]) -> u16 {
    let topic = usize::from(u16::from_be_bytes([body[0], body[1]]));
    u16::from_be_bytes([body[2 + topic], body[3 + topic]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_free_room_for_publishes_a_quarter_window_at_a_time() {
    let ca = TestCa::new("burst CA");
    let server = ca.issue("cloud", &["localhost"]);
    let tls = fieldlink_core::tls::TlsPolicy::default()
        .server_config(
            vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    let dir = tempfile::tempdir().unwrap();
    let backlog = queue(dir.path()).await;
    fill(&backlog, "a", 200).await;
    let ca_file = fieldlink_test_support::certs::write(dir.path(), "ca.pem", ca.pem());
    let mut settings = settings(
        port,
        UplinkTls::ServerAuth {
            ca_file: Some(ca_file),
        },
    );
    settings.inflight = 40; // bursts of 10
    let (_uplink, shutdown) = start_uplink(settings, &backlog, dir.path());

    let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .expect("the uplink connects")
        .unwrap();
    let mut cloud = tokio_rustls::TlsAcceptor::from(Arc::new(tls))
        .accept(tcp)
        .await
        .unwrap();
    let (kind, _) = read_packet(&mut cloud).await;
    assert_eq!(kind >> 4, 1, "CONNECT first");
    cloud.write_all(&[0x20, 2, 0, 0]).await.unwrap();

    let mut received: Vec<u16> = Vec::new();
    // The first window goes out at once.
    while received.len() < 40 {
        let (kind, body) = read_packet(&mut cloud).await;
        assert_eq!(kind & 0xf6, 0x32, "QoS 1 PUBLISH, got {kind:#x}");
        received.push(packet_id(&body));
    }
    // Nine PUBACKs: less than a burst's room; nothing more is sent.
    for id in &received[..9] {
        let [hi, lo] = id.to_be_bytes();
        cloud.write_all(&[0x40, 2, hi, lo]).await.unwrap();
    }
    cloud.flush().await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), read_packet(&mut cloud)).await;
    assert!(
        early.is_err(),
        "a publish went out with 9 of 40 slots free: {early:?}"
    );
    // The tenth: room for a burst, and ten publishes follow.
    let [hi, lo] = received[9].to_be_bytes();
    cloud.write_all(&[0x40, 2, hi, lo]).await.unwrap();
    cloud.flush().await.unwrap();
    for _ in 0..10 {
        let (kind, body) = tokio::time::timeout(Duration::from_secs(5), read_packet(&mut cloud))
            .await
            .expect("the burst after the tenth PUBACK");
        assert_eq!(kind & 0xf6, 0x32, "QoS 1 PUBLISH, got {kind:#x}");
        received.push(packet_id(&body));
    }
    let more = tokio::time::timeout(Duration::from_millis(300), read_packet(&mut cloud)).await;
    assert!(more.is_err(), "no more than the room freed: {more:?}");
    shutdown.trigger();
}
