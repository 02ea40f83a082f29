//! A small HTTPS file server for the OTA tests: serves a directory with `Range`, and on
//! demand cuts an answer after some bytes or serves slowly, recording what was asked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::TlsAcceptor;

/// What the server was asked: the path and where the `Range` started (`None`: no Range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The request's path.
    pub path: String,
    /// The first byte asked for with `Range: bytes=N-`.
    pub range_from: Option<u64>,
}

#[derive(Default)]
struct Control {
    /// The next answer's body stops (the connection is closed) after this many bytes.
    cut_after: Option<u64>,
    /// Body bytes per second; no limit when `None`.
    rate: Option<u64>,
    served: Vec<Served>,
}

/// The server, on its own thread; stopped when dropped.
pub struct HttpsFiles {
    addr: SocketAddr,
    control: Arc<Mutex<Control>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpsFiles {
    /// Serves `root` on 127.0.0.1 with the PEM certificate chain and key given.
    pub fn start(root: PathBuf, cert_pem: &str, key_pem: &str) -> Self {
        use rustls_pki_types::pem::PemObject as _;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("a PEM certificate");
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("a PEM key");
        let config = fieldlink_core::tls::TlsPolicy::default()
            .server_config(certs, key)
            .expect("the certificate and key match");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("bound");
        let control = Arc::new(Mutex::new(Control::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shared = control.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let serve = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let (acceptor, root, control) =
                            (acceptor.clone(), root.clone(), shared.clone());
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = serve_one(tls, &root, &control).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            addr,
            control,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next answer stops after `bytes` of its body, the connection closed.
    pub fn cut_next_after(&self, bytes: u64) {
        self.lock().cut_after = Some(bytes);
    }

    /// Serves at most `bytes_per_second` (`None`: as fast as it can).
    pub fn throttle(&self, bytes_per_second: Option<u64>) {
        self.lock().rate = bytes_per_second;
    }

    /// Every request so far.
    pub fn served(&self) -> Vec<Served> {
        self.lock().served.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for HttpsFiles {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    root: &std::path::Path,
    control: &Mutex<Control>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut byte).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&byte[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let range_from = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.eq_ignore_ascii_case("range") {
            return None;
        }
        value
            .trim()
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    });
    let (cut, rate) = {
        let mut c = control.lock().unwrap_or_else(|e| e.into_inner());
        c.served.push(Served {
            path: path.clone(),
            range_from,
        });
        (c.cut_after.take(), c.rate)
    };
    let file = root.join(path.trim_start_matches('/'));
    let Ok(mut body) = tokio::fs::File::open(&file).await else {
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return stream.shutdown().await;
    };
    let len = body.metadata().await?.len();
    let start = range_from.unwrap_or(0);
    let answer = match range_from {
        Some(from) if from >= len => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            return stream.shutdown().await;
        }
        Some(from) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            len - 1,
            len - from
        ),
        None => format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"),
    };
    stream.write_all(answer.as_bytes()).await?;
    tokio::io::AsyncSeekExt::seek(&mut body, std::io::SeekFrom::Start(start)).await?;
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut want = buf.len();
        if let Some(cut) = cut {
            want = want.min(usize::try_from(cut.saturating_sub(sent)).unwrap_or(want));
            if want == 0 {
                // A cut: the connection ends in the middle of the body.
                return stream.shutdown().await;
            }
        }
        let n = body.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
        sent += n as u64;
        if let Some(rate) = rate {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
    stream.shutdown().await
}
