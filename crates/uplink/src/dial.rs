//! Reaching the cloud over TCP: every address of the host name, raced happy-eyeballs style.
//!
//! rumqttc dials `(host, port)` itself, one address, with no socket options and one timeout
//! for everything up to the CONNACK. A cloud name often has several addresses (IPv6 and IPv4,
//! several A records), and one whose SYNs are dropped would hang every attempt. So the bridge
//! ([`crate::bridge`]) dials here: the addresses are interleaved by family (RFC 8305), a new
//! attempt starts every [`STAGGER`] or as soon as the previous one fails, each attempt has its
//! own timeout, and the first connection wins (the others are dropped). An address that
//! failed after its TCP connect (the bridge says which) goes last in the next attempt.
//!
//! The winning socket gets `TCP_USER_TIMEOUT` (sent data unacknowledged that long closes the
//! connection in the kernel) and TCP keepalive probes that start only after a silence no
//! healthy MQTT session has (its pings come first), as a backstop to the drain loop's own
//! stall detection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fieldlink_core::metrics::UPLINK_DIAL_ATTEMPTS_TOTAL;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// A new attempt starts this long after the previous one if neither has finished (RFC 8305's
/// recommended "connection attempt delay").
pub const STAGGER: Duration = Duration::from_millis(250);

/// How a host name becomes addresses. The system's resolver in production; a seam for tests
/// (and for a future static address list).
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`, in the resolver's order of preference.
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system's resolver (`getaddrinfo` through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: String,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Socket options for the connection that wins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketTuning {
    /// `TCP_USER_TIMEOUT`: sent data unacknowledged this long closes the connection.
    pub(crate) user_timeout: Duration,
    /// Silence before the first TCP keepalive probe.
    pub(crate) keepalive_idle: Duration,
}

/// Connects to the first address of `host` that answers, `avoid` (one that failed us after
/// its TCP connect) tried last; the error lists every address tried and what each did.
pub(crate) async fn dial(
    resolver: &Arc<dyn Resolve>,
    host: &str,
    port: u16,
    attempt_timeout: Duration,
    tuning: SocketTuning,
    avoid: Option<SocketAddr>,
) -> Result<(TcpStream, SocketAddr), String> {
    let addrs = match tokio::time::timeout(attempt_timeout, resolver.resolve(host.to_owned(), port))
        .await
    {
        Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
        Ok(Ok(_)) => return Err(format!("{host} has no address")),
        Ok(Err(e)) => return Err(format!("cannot resolve {host}: {e}")),
        Err(_) => {
            return Err(format!(
                "cannot resolve {host}: no answer within {attempt_timeout:?}"
            ));
        }
    };
    let (stream, addr) = race(last(interleave(addrs), avoid), attempt_timeout).await?;
    tune(&stream, tuning);
    Ok((stream, addr))
}

/// Addresses alternating between the families, starting with the resolver's first choice.
pub(crate) fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut preferred, mut other): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(preferred.len() + other.len());
    preferred.reverse();
    other.reverse();
    loop {
        match (preferred.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// `addrs` with `avoid` moved to the end: an address that accepts TCP but then fails (a TLS
/// handshake that hangs, a stalled link) would otherwise win every race.
pub(crate) fn last(mut addrs: Vec<SocketAddr>, avoid: Option<SocketAddr>) -> Vec<SocketAddr> {
    if let Some(i) = avoid.and_then(|a| addrs.iter().position(|x| *x == a)) {
        let a = addrs.remove(i);
        addrs.push(a);
    }
    addrs
}

/// Staggered attempts, each with its own timeout; the first connection wins.
async fn race(
    addrs: Vec<SocketAddr>,
    attempt_timeout: Duration,
) -> Result<(TcpStream, SocketAddr), String> {
    let mut pending = addrs.into_iter();
    let mut running = JoinSet::new();
    let mut failures = Vec::new();
    let start_next = |running: &mut JoinSet<_>, pending: &mut std::vec::IntoIter<SocketAddr>| {
        let Some(addr) = pending.next() else {
            return false;
        };
        running.spawn(async move {
            let outcome = tokio::time::timeout(attempt_timeout, TcpStream::connect(addr)).await;
            (addr, outcome)
        });
        true
    };
    start_next(&mut running, &mut pending);
    loop {
        let stagger = tokio::time::sleep(STAGGER);
        tokio::select! {
            joined = running.join_next() => {
                let Some(Ok((addr, outcome))) = joined else {
                    // Nothing running (every address failed) or a task panicked.
                    if running.is_empty() && !start_next(&mut running, &mut pending) {
                        return Err(failures.join("; "));
                    }
                    continue;
                };
                match outcome {
                    Ok(Ok(stream)) => {
                        metrics::counter!(UPLINK_DIAL_ATTEMPTS_TOTAL, "result" => "connected").increment(1);
                        if !failures.is_empty() {
                            tracing::info!(%addr, tried = %failures.join("; "), "Uplink reached the cloud at another address");
                        }
                        // Dropping the set aborts the attempts still running.
                        return Ok((stream, addr));
                    }
                    Ok(Err(e)) => {
                        metrics::counter!(UPLINK_DIAL_ATTEMPTS_TOTAL, "result" => "failed").increment(1);
                        tracing::debug!(%addr, error = %e, "Uplink connection attempt failed");
                        failures.push(format!("{addr}: {e}"));
                    }
                    Err(_) => {
                        metrics::counter!(UPLINK_DIAL_ATTEMPTS_TOTAL, "result" => "timeout").increment(1);
                        tracing::debug!(%addr, "Uplink connection attempt timed out");
                        failures.push(format!("{addr}: no answer within {attempt_timeout:?}"));
                    }
                }
                // A failure starts the next attempt at once.
                if !start_next(&mut running, &mut pending) && running.is_empty() {
                    return Err(failures.join("; "));
                }
            }
            () = stagger => {
                start_next(&mut running, &mut pending);
            }
        }
    }
}

/// Best effort: a platform without these options still works, detected by the drain loop.
fn tune(stream: &TcpStream, tuning: SocketTuning) {
    let socket = socket2::SockRef::from(stream);
    let _ = stream.set_nodelay(true);
    if let Err(e) = socket.set_tcp_user_timeout(Some(tuning.user_timeout)) {
        tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set");
    }
    let interval = (tuning.keepalive_idle / 4).max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(tuning.keepalive_idle)
        .with_interval(interval)
        .with_retries(3);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keepalive not set");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_alternate_between_families_starting_with_the_first() {
        let got = interleave(vec![
            a("[2001:db8::1]:1"),
            a("[2001:db8::2]:1"),
            a("192.0.2.1:1"),
            a("[2001:db8::3]:1"),
            a("192.0.2.2:1"),
        ]);
        assert_eq!(
            got,
            [
                a("[2001:db8::1]:1"),
                a("192.0.2.1:1"),
                a("[2001:db8::2]:1"),
                a("192.0.2.2:1"),
                a("[2001:db8::3]:1"),
            ]
        );
        let v4_first = interleave(vec![a("192.0.2.1:1"), a("[2001:db8::1]:1")]);
        assert_eq!(v4_first, [a("192.0.2.1:1"), a("[2001:db8::1]:1")]);
    }

    #[test]
    fn an_address_that_failed_us_is_tried_last() {
        let addrs = vec![a("192.0.2.1:1"), a("192.0.2.2:1"), a("192.0.2.3:1")];
        assert_eq!(
            last(addrs.clone(), Some(a("192.0.2.1:1"))),
            [a("192.0.2.2:1"), a("192.0.2.3:1"), a("192.0.2.1:1")]
        );
        assert_eq!(last(addrs.clone(), Some(a("198.51.100.1:1"))), addrs);
        assert_eq!(last(addrs.clone(), None), addrs);
    }

    #[tokio::test]
    async fn the_winning_socket_gets_the_user_timeout_and_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let resolver: Arc<dyn Resolve> = Arc::new(SystemResolver);
        let tuning = SocketTuning {
            user_timeout: Duration::from_secs(20),
            keepalive_idle: Duration::from_secs(40),
        };
        let (stream, got) = dial(
            &resolver,
            "127.0.0.1",
            addr.port(),
            Duration::from_secs(2),
            tuning,
            None,
        )
        .await
        .unwrap();
        assert_eq!(got, addr);
        let socket = socket2::SockRef::from(&stream);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(20))
        );
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(40)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
    }

    #[tokio::test]
    async fn a_hanging_address_does_not_hold_up_the_next() {
        let silent = fieldlink_test_support::SilentAddress::start();
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live = live.local_addr().map(|a| (a, live)).unwrap();
        let started = std::time::Instant::now();
        let (_, got) = race(vec![silent.addr(), live.0], Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got, live.0);
        // Started after the stagger, not after the first attempt's 30 s.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn every_failure_is_named_when_no_address_answers() {
        // Two loopback ports nobody listens on: refused at once, both reported.
        let ports: Vec<SocketAddr> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            })
            .collect();
        let err = race(ports.clone(), Duration::from_secs(2))
            .await
            .unwrap_err();
        for p in ports {
            assert!(err.contains(&p.to_string()), "{err}");
        }
    }
}
