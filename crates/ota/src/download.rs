//! The bundle's download: one HTTPS GET, resumed with `Range` after a cut or a restart.
//!
//! A small HTTP/1.1 client of our own over tokio-rustls rather than an HTTP library: the
//! agent needs one GET with `Range`, `Content-Length`/`Content-Range`, and a few redirects,
//! over the gateway's one TLS policy (`core::tls`, ring only). hyper-based clients bring
//! their own connection pools, HTTP/2 and a second way to configure rustls for roughly
//! forty crates; this is three hundred lines we can read.
//!
//! The body goes from the socket to the file through one 64 KiB buffer, so memory stays the
//! same whatever the bundle's size. The file is `<sha256>.raucb.part` until it is complete:
//! its length is where the next attempt, after a cut or a restart of fieldlink, resumes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest response head read (status line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// The buffer between the socket and the file.
const CHUNK: usize = 64 * 1024;
/// Redirects followed, at most.
const MAX_REDIRECTS: usize = 5;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The URL cannot be used (the request's fault).
    #[error("the URL {url:?} cannot be used: {problem}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The network or the server failed: a later attempt may succeed.
    #[error("the download from {host} failed: {problem}")]
    Transient {
        /// The server.
        host: String,
        /// What happened.
        problem: String,
    },
    /// The server refused for good (404, 403, …) or answered what we cannot read.
    #[error("the server {host} refused the download: {problem}")]
    Refused {
        /// The server.
        host: String,
        /// Its answer.
        problem: String,
    },
    /// Not enough room for the bundle.
    #[error(
        "not enough free space in {dir:?}: the bundle needs {needed} more bytes and \
         {keep_free} must stay free, {available} are free. Hint: free disk space, or lower \
         ota.keep_free"
    )]
    NoSpace {
        /// The download directory.
        dir: PathBuf,
        /// Bytes still to download.
        needed: u64,
        /// Free bytes now.
        available: u64,
        /// The reserve.
        keep_free: u64,
    },
    /// The bundle is larger than `ota.max_bundle_bytes`.
    #[error("the bundle is {size} bytes, more than ota.max_bundle_bytes ({max})")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The file could not be written.
    #[error("cannot write the download {path:?}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl DownloadError {
    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// An `https://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The host name (or IP address), which the certificate must carry.
    pub host: String,
    /// The port, 443 by default.
    pub port: u16,
    /// The path and query, starting with '/'.
    pub path: String,
}

impl Url {
    /// Reads an `https://` URL; user info, fragments and other schemes are refused.
    pub fn parse(url: &str) -> Result<Self, DownloadError> {
        let bad = |problem| DownloadError::Url {
            url: url.to_owned(),
            problem,
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("only https:// is allowed"))?;
        if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("it contains spaces or control characters"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = path.split('#').next().unwrap_or("/");
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not allowed"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p.parse().map_err(|_| bad("the port is not a number"))?;
                (h, port)
            }
            _ => (authority, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// How much of the bundle is here and how big it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes in the file.
    pub have: u64,
    /// The bundle's size, once the server said it.
    pub total: Option<u64>,
}

/// Downloads bundles over HTTPS under the gateway's TLS policy.
#[derive(Clone)]
pub struct Downloader {
    tls: TlsConnector,
    timeout: Duration,
    attempts: u32,
    keep_free: u64,
    max_bytes: u64,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader")
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Downloader {
    /// A downloader verifying servers with `tls` (built by `core::tls::TlsPolicy`).
    pub fn new(
        tls: Arc<ClientConfig>,
        timeout: Duration,
        attempts: u32,
        keep_free: u64,
        max_bytes: u64,
    ) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            timeout,
            attempts: attempts.max(1),
            keep_free,
            max_bytes,
        }
    }

    /// Downloads `url` into `file` (appending to what is there), retrying transient failures
    /// (each attempt resumes); `progress` hears of every chunk written.
    pub async fn fetch(
        &self,
        url: &str,
        file: &Path,
        mut progress: impl FnMut(Progress),
    ) -> Result<u64, DownloadError> {
        let mut failures = 0;
        loop {
            let before = file_len(file);
            match self.attempt(url, file, &mut progress).await {
                Ok(total) => return Ok(total),
                Err(e) if e.is_transient() => {
                    // Attempts count failures in a row: a download that gains bytes goes on.
                    if file_len(file) > before {
                        failures = 0;
                    }
                    failures += 1;
                    if failures >= self.attempts {
                        return Err(e);
                    }
                    let pause = Duration::from_secs(u64::from(failures.min(30)));
                    tracing::warn!(
                        error = %e,
                        have = file_len(file),
                        "Download cut; resuming in {pause:?}"
                    );
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn attempt(
        &self,
        url: &str,
        file: &Path,
        progress: &mut impl FnMut(Progress),
    ) -> Result<u64, DownloadError> {
        let mut url = Url::parse(url)?;
        for _ in 0..=MAX_REDIRECTS {
            let have = file_len(file);
            let (mut stream, head, leftover) = self.request(&url, have).await?;
            let transient = |problem: String| DownloadError::Transient {
                host: url.host.clone(),
                problem,
            };
            let refused = |problem: String| DownloadError::Refused {
                host: url.host.clone(),
                problem,
            };
            let (start, length, total) = match head.status {
                200 => {
                    let len = head
                        .content_length
                        .ok_or_else(|| refused("the answer has no Content-Length".into()))?;
                    (0, len, len)
                }
                206 => {
                    let (start, end, total) = head
                        .content_range
                        .ok_or_else(|| refused("a 206 answer without Content-Range".into()))?;
                    if start != have {
                        return Err(refused(format!(
                            "asked for bytes from {have}, got from {start}"
                        )));
                    }
                    (start, end + 1 - start, total)
                }
                416 => match head.unsatisfied_total {
                    Some(total) if total == have => return Ok(total),
                    _ => {
                        // What we hold is longer than the file: it is not this bundle.
                        truncate(file, 0)?;
                        return Err(transient(
                            "the partial download is longer than the bundle; starting over".into(),
                        ));
                    }
                },
                301 | 302 | 303 | 307 | 308 => {
                    let location = head
                        .location
                        .ok_or_else(|| refused("a redirect without Location".into()))?;
                    url = Url::parse(&location)?;
                    continue;
                }
                408 | 429 | 500..=599 => {
                    return Err(transient(format!("HTTP {} {}", head.status, head.reason)));
                }
                status => return Err(refused(format!("HTTP {status} {}", head.reason))),
            };
            if total > self.max_bytes {
                return Err(DownloadError::TooLarge {
                    size: total,
                    max: self.max_bytes,
                });
            }
            if start == 0 {
                truncate(file, 0)?;
            }
            self.check_space(file, total - start)?;
            progress(Progress {
                have: start,
                total: Some(total),
            });
            self.body(&mut stream, leftover, file, start, length, total, progress)
                .await
                .map_err(|e| match e {
                    BodyError::Net(problem) => transient(problem),
                    BodyError::File(source) => DownloadError::File {
                        path: file.to_owned(),
                        source,
                    },
                })?;
            return Ok(total);
        }
        Err(DownloadError::Refused {
            host: url.host,
            problem: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    fn check_space(&self, file: &Path, needed: u64) -> Result<(), DownloadError> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let available = free_bytes(dir).map_err(|source| DownloadError::File {
            path: dir.to_owned(),
            source,
        })?;
        if available < needed.saturating_add(self.keep_free) {
            return Err(DownloadError::NoSpace {
                dir: dir.to_owned(),
                needed,
                available,
                keep_free: self.keep_free,
            });
        }
        Ok(())
    }

    /// Connects, sends the GET (with `Range` when `have > 0`) and reads the answer's head.
    async fn request(
        &self,
        url: &Url,
        have: u64,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Head, Vec<u8>), DownloadError> {
        let transient = |problem: String| DownloadError::Transient {
            host: url.host.clone(),
            problem,
        };
        let name = ServerName::try_from(url.host.clone()).map_err(|_| DownloadError::Url {
            url: url.host.clone(),
            problem: "not a valid host name",
        })?;
        let tcp = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((url.host.as_str(), url.port)),
        )
        .await
        .map_err(|_| transient("connection timed out".into()))?
        .map_err(|e| transient(format!("cannot connect: {e}")))?;
        let mut tls = tokio::time::timeout(self.timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| transient("TLS handshake timed out".into()))?
            .map_err(
                |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    // A certificate we do not trust will not become trusted by retrying.
                    Some(rustls::Error::InvalidCertificate(c)) => DownloadError::Refused {
                        host: url.host.clone(),
                        problem: format!("TLS: the server's certificate is not trusted: {c:?}"),
                    },
                    _ => transient(format!("TLS handshake: {e}")),
                },
            )?;
        let host = if url.port == 443 {
            url.host.clone()
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fieldlink/{}\r\n\
             Accept-Encoding: identity\r\nConnection: close\r\n",
            url.path,
            env!("CARGO_PKG_VERSION")
        );
        if have > 0 {
            request.push_str(&format!("Range: bytes={have}-\r\n"));
        }
        request.push_str("\r\n");
        tokio::time::timeout(self.timeout, tls.write_all(request.as_bytes()))
            .await
            .map_err(|_| transient("sending the request timed out".into()))?
            .map_err(|e| transient(format!("sending the request: {e}")))?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(DownloadError::Refused {
                    host: url.host.clone(),
                    problem: format!("the answer's head is longer than {MAX_HEAD} bytes"),
                });
            }
            let n = tokio::time::timeout(self.timeout, tls.read(&mut chunk))
                .await
                .map_err(|_| transient("no answer".into()))?
                .map_err(|e| transient(format!("reading the answer: {e}")))?;
            if n == 0 {
                return Err(transient("the server closed the connection".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = Head::parse(&buf[..end]).ok_or_else(|| DownloadError::Refused {
            host: url.host.clone(),
            problem: "the answer is not HTTP/1.x".into(),
        })?;
        Ok((tls, head, buf[end..].to_vec()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn body(
        &self,
        stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
        leftover: Vec<u8>,
        path: &Path,
        start: u64,
        length: u64,
        total: u64,
        progress: &mut impl FnMut(Progress),
    ) -> Result<(), BodyError> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(BodyError::File)?;
        let mut have = start;
        let end = start + length;
        let take = usize::try_from(length.min(leftover.len() as u64)).unwrap_or(0);
        file.write_all(&leftover[..take])
            .await
            .map_err(BodyError::File)?;
        have += take as u64;
        let mut buf = vec![0u8; CHUNK];
        while have < end {
            let want = usize::try_from((end - have).min(CHUNK as u64)).unwrap_or(CHUNK);
            let n = match tokio::time::timeout(self.timeout, stream.read(&mut buf[..want])).await {
                Err(_) => {
                    file.sync_data().await.map_err(BodyError::File)?;
                    return Err(BodyError::Net(format!(
                        "no data for {:?} at byte {have} of {total}",
                        self.timeout
                    )));
                }
                Ok(Err(e)) => {
                    file.sync_data().await.map_err(BodyError::File)?;
                    return Err(BodyError::Net(format!("at byte {have} of {total}: {e}")));
                }
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                file.sync_data().await.map_err(BodyError::File)?;
                return Err(BodyError::Net(format!(
                    "the connection ended at byte {have} of {total}"
                )));
            }
            file.write_all(&buf[..n]).await.map_err(BodyError::File)?;
            have += n as u64;
            progress(Progress {
                have,
                total: Some(total),
            });
        }
        file.sync_all().await.map_err(BodyError::File)?;
        Ok(())
    }
}

enum BodyError {
    Net(String),
    File(std::io::Error),
}

/// The parts of an answer's head the download needs.
#[derive(Debug, Default)]
struct Head {
    status: u16,
    reason: String,
    content_length: Option<u64>,
    /// `Content-Range: bytes START-END/TOTAL`.
    content_range: Option<(u64, u64, u64)>,
    /// `Content-Range: bytes */TOTAL` (a 416).
    unsatisfied_total: Option<u64>,
    location: Option<String>,
}

impl Head {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next()?;
        let mut parts = status_line.splitn(3, ' ');
        if !parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        let status = parts.next()?.parse().ok()?;
        let mut head = Head {
            status,
            reason: parts.next().unwrap_or("").to_owned(),
            ..Head::default()
        };
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':')?;
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => head.content_length = value.parse().ok(),
                "content-range" => {
                    let range = value.strip_prefix("bytes ")?;
                    let (span, total) = range.split_once('/')?;
                    if span == "*" {
                        head.unsatisfied_total = total.parse().ok();
                    } else {
                        let (a, b) = span.split_once('-')?;
                        let (a, b, t) = (a.parse().ok()?, b.parse().ok()?, total.parse().ok()?);
                        (a <= b && b < t).then_some(())?;
                        head.content_range = Some((a, b, t));
                    }
                }
                "location" => head.location = Some(value.to_owned()),
                // Chunked bodies: we read by length only; a static file has one.
                "transfer-encoding" if !value.eq_ignore_ascii_case("identity") => {
                    head.content_length = None;
                }
                _ => {}
            }
        }
        Some(head)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of `path`, 0 when it does not exist.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn truncate(path: &Path, len: u64) -> Result<(), DownloadError> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f.set_len(len),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|source| DownloadError::File {
        path: path.to_owned(),
        source,
    })
}

/// Bytes free for unprivileged users on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    // Both are C `unsigned long` (32 bits on armhf): widened before multiplying.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (
        u64::from(stat.blocks_available()),
        u64::from(stat.fragment_size()),
    );
    Ok(blocks.saturating_mul(size))
}

/// The SHA-256 of a file, read in 64 KiB pieces, as lowercase hex.
pub async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        context.update(&buf[..n]);
    }
    Ok(context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://updates.example:8443/b/x.raucb?t=1#f").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("updates.example", 8443, "/b/x.raucb?t=1")
        );
        let u = Url::parse("https://127.0.0.1/x").unwrap();
        assert_eq!(u.port, 443);
        assert!(Url::parse("http://h/x").is_err());
        assert!(Url::parse("https://u:p@h/x").is_err());
        assert!(Url::parse("https://h:port/x").is_err());
    }

    #[test]
    fn heads() {
        let h = Head::parse(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-99/100\r\nContent-Length: 90\r\n\r\n").unwrap();
        assert_eq!((h.status, h.content_range), (206, Some((10, 99, 100))));
        let h = Head::parse(
            b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */100\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.unsatisfied_total, Some(100));
        assert!(Head::parse(b"SSH-2.0\r\n\r\n").is_none());
    }
}
