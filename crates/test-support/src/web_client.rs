//! A small HTTPS client for the web UI's tests: one request per connection, a cookie kept
//! between requests, the UI's own certificate trusted (nothing else).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Every header, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body, decoded from chunks when it came chunked.
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A browser-like client of one UI.
#[derive(Clone)]
pub struct WebClient {
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    /// The session cookie (`name=value`), once the UI set one.
    pub cookie: Option<String>,
}

impl WebClient {
    /// A client of the UI at `addr` that trusts the PEM certificate in `cert_file` only.
    pub fn new(addr: SocketAddr, cert_file: &Path) -> Self {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cert_file).expect("the UI's certificate") {
            roots.add(cert.expect("a PEM certificate")).unwrap();
        }
        let tls = fieldlink_core::tls::TlsPolicy::default()
            .client_config(roots)
            .unwrap();
        Self {
            addr,
            tls: Arc::new(tls),
            cookie: None,
        }
    }

    /// GET `path`.
    pub async fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, &[], "").await
    }

    /// POST a form (`a=1&b=2`, already encoded) to `path`.
    pub async fn post_form(&mut self, path: &str, form: &str) -> Answer {
        self.send(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
        .await
    }

    /// Sends one request (with the cookie, if any) and reads the whole answer; keeps a
    /// cookie the answer sets (or drops it when the answer clears it).
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::IpAddress(self.addr.ip().into());
        let mut tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the web UI");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(cookie) = &self.cookie {
            request.push_str(&format!("cookie: {cookie}\r\n"));
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        // A close without close_notify is the server's business; what came is the answer.
        let _ = tls.read_to_end(&mut raw).await;
        let answer = parse(&raw);
        if let Some(set) = answer.header("set-cookie") {
            let pair = set.split(';').next().unwrap_or_default().trim().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        answer
    }

    /// GETs `path` and reads what arrives (a stream of server-sent events) until the text so
    /// far satisfies `done` or `limit` passes; returns the status and that text. `during` runs
    /// once the answer's head has arrived (to publish what the stream should show).
    pub async fn stream_until(
        &mut self,
        path: &str,
        limit: std::time::Duration,
        during: impl FnOnce(),
        done: impl Fn(&str) -> bool,
    ) -> (u16, String) {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::IpAddress(self.addr.ip().into());
        let mut tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the web UI");
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n", self.addr);
        if let Some(cookie) = &self.cookie {
            request.push_str(&format!("cookie: {cookie}\r\n"));
        }
        request.push_str("\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        let deadline = tokio::time::Instant::now() + limit;
        let mut raw = Vec::new();
        let mut during = Some(during);
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                if let Some(during) = during.take() {
                    during();
                }
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if status != 200 || done(body) {
                    return (status, body.to_owned());
                }
            }
            match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
                _ => {
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    let status = text
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    return (status, text);
                }
            }
        }
    }
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        unchunk(rest)
    } else {
        rest.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn unchunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            body.push_str(&after[..size.min(after.len())]);
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// `application/x-www-form-urlencoded` for simple test values (letters, digits, `-_.~`
/// pass; everything else is percent-encoded).
pub fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
