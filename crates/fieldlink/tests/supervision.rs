//! Supervision: a component whose task dies is marked down, the watchdog stops, and the
//! gateway says so and stops (to be restarted by systemd); a clean stop under load keeps every
//! message a client was told is stored.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fieldlink::config::parse;
use fieldlink::supervisor::Watchdog;
use fieldlink::{Ended, Gateway};
use fieldlink_core::config::Origin;
use fieldlink_core::ports::Health;
use fieldlink_test_support::{free_port, wait_for_port, within};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

fn config(data_dir: &Path, port: u16) -> String {
    format!(
        "[gateway]\ndata_dir = \"{}\"\nshutdown_grace = \"5s\"\n\
         [[broker.listeners]]\nname = \"local\"\nbind = \"127.0.0.1\"\nport = {port}\n\
         [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n",
        data_dir.display()
    )
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    within(Duration::from_secs(10), what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_queue_writer_takes_the_queue_down_stops_the_watchdog_and_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let settings = parse(&config(dir.path(), free_port()), Origin::BuiltIn).unwrap();
    let mut gateway = Gateway::start(settings).await.unwrap();
    // The running queue, reached while `run_until` holds the gateway.
    let queue = gateway.queue().clone();
    let pings = Arc::new(AtomicUsize::new(0));
    let counter = pings.clone();
    let watchdog = Watchdog {
        every: Duration::from_millis(20),
        ping: Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    };
    let ended = {
        let run = gateway.run_until(std::future::pending(), Some(watchdog));
        tokio::pin!(run);
        // Fed while every component works.
        tokio::select! {
            ended = &mut run => panic!("ended early: {ended:?}"),
            () = until("watchdog pings", || pings.load(Ordering::SeqCst) >= 3) => {}
        }
        queue.crash_writer().await;
        within(Duration::from_secs(10), "the run to end", &mut run).await
    };
    let Ended::Failed(failure) = ended else {
        panic!("{ended:?}");
    };
    assert_eq!(failure.component, "queue");
    assert!(
        failure
            .to_string()
            .contains("the queue writer panicked: fault injected"),
        "{failure}"
    );
    let board = gateway.status().snapshot();
    assert!(
        matches!(&board["queue"], Health::Down(why) if why.contains("panicked")),
        "{board:?}"
    );
    assert!(!gateway.status().serving(), "the watchdog would be fed");

    // The status file says so too, for `fieldlink status` and the operator.
    let status_file = fieldlink::status::find_status_file(dir.path());
    until("the status file to show the queue down", || {
        std::fs::read_to_string(&status_file).is_ok_and(|s| s.contains("panicked"))
    })
    .await;
    gateway.stop().await;
}

/// One MQTT client publishing `site/load/<client>/<n>` at QoS 1 as fast as the gateway takes
/// them, until the connection ends; returns the `n`s whose PUBACK it received.
async fn publish_until_cut(port: u16, client: usize) -> HashSet<u64> {
    let mut options = MqttOptions::new(format!("load-{client}"), "127.0.0.1", port);
    options
        .set_inflight(50)
        .set_keep_alive(Duration::from_secs(30));
    let (mqtt, mut events) = AsyncClient::new(options, 100);
    let publisher = tokio::spawn(async move {
        for n in 0u64.. {
            let topic = format!("site/load/{client}/{n}");
            if mqtt
                .publish(topic, QoS::AtLeastOnce, false, vec![0u8; 32])
                .await
                .is_err()
            {
                break;
            }
        }
    });
    // rumqttc hands publishes out in order: each gets its packet id when it is sent.
    let mut next_sent = 0u64;
    let mut by_pkid: HashMap<u16, u64> = HashMap::new();
    let mut acked = HashSet::new();
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                by_pkid.insert(pkid, next_sent);
                next_sent += 1;
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Some(n) = by_pkid.remove(&ack.pkid) {
                    acked.insert(n);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    publisher.abort();
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("fieldlink.toml");
    std::fs::write(&path, config(&dir.path().join("data"), port)).unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut gateway = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10));

    let clients: Vec<_> = (0..4)
        .map(|c| tokio::spawn(publish_until_cut(port, c)))
        .collect();
    // Under load: every client has had some acknowledged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill(Pid::from_raw(gateway.id() as i32), Signal::SIGTERM).unwrap();
    let mut acked = Vec::new();
    for c in clients {
        acked.push(
            within(Duration::from_secs(20), "the client to be cut", c)
                .await
                .unwrap(),
        );
    }
    let status = tokio::task::spawn_blocking(move || gateway.wait().unwrap())
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("Stopped cleanly"), "{log}");

    let peek = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["queue", "peek", "--limit", "10000000"])
        .output()
        .unwrap();
    assert!(peek.status.success(), "{peek:?}");
    let stored: HashSet<String> = String::from_utf8(peek.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(3).map(str::to_owned))
        .collect();
    let mut total = 0;
    for (c, acked) in acked.iter().enumerate() {
        assert!(!acked.is_empty(), "client {c} had nothing acknowledged");
        total += acked.len();
        let missing: Vec<_> = acked
            .iter()
            .filter(|n| !stored.contains(&format!("site/load/{c}/{n}")))
            .collect();
        assert!(
            missing.is_empty(),
            "client {c}: {} acknowledged messages are not in the queue, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    eprintln!("{total} acknowledged messages, all in the queue after SIGTERM");
}
