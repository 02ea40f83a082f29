//! The web UI's guard, without a browser: every route in the table refuses a request without a
//! session; viewers cannot change anything; CSRF; the login throttle; the security headers and
//! the cookie's flags; the one-time setup token; the connection limit.
//!
//! The gateway behind the UI is a stand-in implementation of the `Gateway` port (the real one
//! is exercised by `crates/fieldlink/tests/web.rs`); what is tested here is the UI's own edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Method;
use fieldlink_core::ports::BoxFuture;
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::status::GatewayStatus;
use fieldlink_test_support::web_client::{Answer, WebClient, form};
use fieldlink_web::config::WebSettings;
use fieldlink_web::users::{Role, set_user};
use fieldlink_web::{Access, QueueDetail, StatusFeed, route_table};

/// The gateway behind the UI: a fixed status, and a count of purges (what a mutation did).
struct StandIn {
    status: StatusFeed,
    _tx: tokio::sync::watch::Sender<Option<Arc<GatewayStatus>>>,
    purges: AtomicU64,
}

impl StandIn {
    fn new() -> Arc<Self> {
        let status = GatewayStatus {
            version: "test".into(),
            written_ms: 0,
            clock_synchronized: true,
            components: vec![("queue".into(), "up".into())],
            queue: Default::default(),
            uplink: None,
            disk: Default::default(),
            alarms: vec![],
            data_dir: None,
            ota: None,
        };
        let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(status)));
        Arc::new(Self {
            status: rx,
            _tx: tx,
            purges: AtomicU64::new(0),
        })
    }
}

impl fieldlink_web::Gateway for StandIn {
    fn status(&self) -> StatusFeed {
        self.status.clone()
    }
    fn queue(&self) -> BoxFuture<'_, Result<QueueDetail, String>> {
        Box::pin(async { Ok(QueueDetail::default()) })
    }
    fn purge_queue(&self) -> BoxFuture<'_, Result<u64, String>> {
        self.purges.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(0) })
    }
    fn metrics(&self) -> String {
        "# metrics\n".into()
    }
    fn devices(&self) -> Vec<fieldlink_web::devices::DeviceView> {
        Vec::new()
    }
    fn write_point(
        &self,
        _device: &str,
        _point: &str,
        _value: fieldlink_web::devices::WriteValue,
    ) -> BoxFuture<'_, Result<String, String>> {
        self.purges.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok("ok".into()) })
    }
    fn watch_topics(
        &self,
        _user: &str,
        _filter: &fieldlink_core::topic::TopicFilter,
    ) -> Result<tokio::sync::mpsc::Receiver<fieldlink_core::message::Message>, String> {
        Err("no broker here".into())
    }
}

/// A UI on a free loopback port with a data directory of its own.
struct Ui {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    gateway: Arc<StandIn>,
    tasks: Shutdown,
}

impl Ui {
    async fn start(accounts: &[(&str, Role, &str)], tune: impl FnOnce(&mut WebSettings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, role, password) in accounts {
            set_user(
                &dir.path().join("web/users"),
                name,
                *role,
                password.as_bytes(),
            )
            .unwrap();
        }
        let mut settings = WebSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..WebSettings::default()
        };
        tune(&mut settings);
        let gateway = StandIn::new();
        let tasks = Shutdown::new();
        let ui = fieldlink_web::start(
            &settings,
            dir.path(),
            &fieldlink_core::tls::FileKeys,
            gateway.clone(),
            &tasks,
        )
        .unwrap();
        Self {
            addr: ui.addr(),
            dir,
            gateway,
            tasks,
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("web/cert.pem")
    }

    fn client(&self) -> WebClient {
        WebClient::new(self.addr, &self.cert())
    }

    async fn logged_in(&self, name: &str, password: &str) -> (WebClient, String) {
        let mut client = self.client();
        let answer = client
            .post_form(
                "/login",
                &form(&[("username", name), ("password", password)]),
            )
            .await;
        assert_eq!(answer.status, 303, "login of {name}: {answer:?}");
        let session = client.get("/api/v1/session").await;
        assert_eq!(session.status, 200, "{session:?}");
        let csrf = json_field(&session.body, "csrf");
        (client, csrf)
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        self.tasks.trigger();
    }
}

fn json_field(body: &str, name: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    value[name].as_str().unwrap().to_owned()
}

/// The path with a value for its parameter.
fn concrete(path: &str) -> String {
    path.replace("{name}", "someone")
        .replace("{device}", "boiler")
        .replace("{point}", "setpoint")
}

async fn request(
    client: &mut WebClient,
    method: &Method,
    path: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    client
        .send(
            method.as_str(),
            &concrete(path),
            &headers,
            "confirm=purge&name=x&role=viewer&password=0123456789",
        )
        .await
}

#[tokio::test]
async fn every_route_but_the_public_ones_refuses_a_request_without_a_session() {
    let ui = Ui::start(&[("ada", Role::Admin, "admin-password")], |_| {}).await;
    let table = route_table();
    assert!(table.len() >= 20, "the table lists every route: {table:?}");
    for route in table.iter().filter(|r| r.access != Access::Public) {
        let mut anonymous = ui.client();
        let answer = request(&mut anonymous, &route.method, route.path, &[]).await;
        let to_login = answer.status == 303 && answer.header("location") == Some("/login");
        assert!(
            answer.status == 401 || to_login,
            "{} {} answered {} without a session",
            route.method,
            route.path,
            answer.status
        );
        // A stolen-looking cookie is no session either.
        let mut forged = ui.client();
        forged.cookie = Some("__Host-fieldlink=not-a-session".into());
        let answer = request(&mut forged, &route.method, route.path, &[]).await;
        assert!(
            matches!(answer.status, 401 | 303),
            "{} {} with a forged cookie: {}",
            route.method,
            route.path,
            answer.status
        );
    }
    assert_eq!(
        ui.gateway.purges.load(Ordering::SeqCst),
        0,
        "no mutation ran"
    );
    // The public routes answer without one.
    let mut anonymous = ui.client();
    assert_eq!(anonymous.get("/healthz").await.status, 200);
    assert_eq!(anonymous.get("/login").await.status, 200);
    assert_eq!(anonymous.get("/static/app.js").await.status, 200);
}

#[tokio::test]
async fn a_viewer_cannot_change_anything_and_an_admin_needs_the_csrf_token() {
    let ui = Ui::start(
        &[
            ("ada", Role::Admin, "admin-password"),
            ("vic", Role::Viewer, "viewer-password"),
        ],
        |_| {},
    )
    .await;
    let (mut viewer, viewer_csrf) = ui.logged_in("vic", "viewer-password").await;
    assert_eq!(
        viewer.get("/").await.status,
        200,
        "a viewer sees the dashboard"
    );
    assert_eq!(
        viewer.get("/users").await.status,
        403,
        "but not the accounts"
    );
    for route in route_table()
        .iter()
        .filter(|r| r.method != Method::GET && r.access == Access::Admin)
    {
        let answer = request(
            &mut viewer,
            &route.method,
            route.path,
            &[("x-csrf-token", &viewer_csrf)],
        )
        .await;
        assert_eq!(
            answer.status, 403,
            "a viewer's {} {}",
            route.method, route.path
        );
    }
    assert_eq!(ui.gateway.purges.load(Ordering::SeqCst), 0);

    let (mut admin, csrf) = ui.logged_in("ada", "admin-password").await;
    let missing = admin.post_form("/queue/purge", "confirm=purge").await;
    assert_eq!(missing.status, 403, "no CSRF token");
    let wrong = admin
        .post_form(
            "/queue/purge",
            &form(&[("confirm", "purge"), ("csrf", &viewer_csrf)]),
        )
        .await;
    assert_eq!(wrong.status, 403, "another session's token");
    let wrong_header = admin
        .send(
            "POST",
            "/api/v1/queue/purge",
            &[
                ("content-type", "application/json"),
                ("x-csrf-token", "nope"),
            ],
            r#"{"confirm":"purge"}"#,
        )
        .await;
    assert_eq!(wrong_header.status, 403);
    assert_eq!(ui.gateway.purges.load(Ordering::SeqCst), 0);
    let right = admin
        .post_form(
            "/queue/purge",
            &form(&[("confirm", "purge"), ("csrf", &csrf)]),
        )
        .await;
    assert_eq!(right.status, 200, "{}", right.body);
    let api = admin
        .send(
            "POST",
            "/api/v1/queue/purge",
            &[
                ("content-type", "application/json"),
                ("x-csrf-token", &csrf),
            ],
            r#"{"confirm":"purge"}"#,
        )
        .await;
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(ui.gateway.purges.load(Ordering::SeqCst), 2);
    let unconfirmed = admin
        .post_form(
            "/queue/purge",
            &form(&[("confirm", "yes"), ("csrf", &csrf)]),
        )
        .await;
    assert_eq!(
        unconfirmed.status, 400,
        "the typed confirmation is required"
    );
    assert_eq!(ui.gateway.purges.load(Ordering::SeqCst), 2);

    // Logging out ends the session on the server, not only in the browser.
    let stolen = admin.cookie.clone();
    let out = admin.post_form("/logout", &form(&[("csrf", &csrf)])).await;
    assert_eq!(out.status, 303);
    let mut replay = ui.client();
    replay.cookie = stolen;
    assert_eq!(replay.get("/api/v1/status").await.status, 401);
}

#[tokio::test]
async fn a_removed_account_loses_its_session_at_once() {
    let ui = Ui::start(
        &[
            ("ada", Role::Admin, "admin-password"),
            ("vic", Role::Viewer, "viewer-password"),
        ],
        |_| {},
    )
    .await;
    let (mut viewer, _) = ui.logged_in("vic", "viewer-password").await;
    assert_eq!(viewer.get("/api/v1/status").await.status, 200);
    fieldlink_web::users::remove_user(&ui.dir.path().join("web/users"), "vic").unwrap();
    assert_eq!(viewer.get("/api/v1/status").await.status, 401);
}

#[tokio::test]
async fn wrong_passwords_are_throttled_per_address_before_any_hashing() {
    let ui = Ui::start(&[("ada", Role::Admin, "admin-password")], |_| {}).await;
    let mut client = ui.client();
    for attempt in 1..=fieldlink_web::throttle::FREE_FAILURES + 1 {
        let answer = client
            .post_form(
                "/login",
                &form(&[("username", "ada"), ("password", "guess")]),
            )
            .await;
        assert_eq!(answer.status, 401, "attempt {attempt}");
        assert!(
            answer.body.contains("Wrong user name or password"),
            "{}",
            answer.body
        );
    }
    // Now even the right password waits: the attempt is refused before it is checked.
    let answer = client
        .post_form(
            "/login",
            &form(&[("username", "ada"), ("password", "admin-password")]),
        )
        .await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert!(answer.header("retry-after").is_some());
    assert!(client.cookie.is_none());
    // An unknown name is answered exactly like a wrong password.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = client
        .post_form(
            "/login",
            &form(&[("username", "nobody"), ("password", "guess")]),
        )
        .await;
    assert_eq!(unknown.status, 401);
    assert!(unknown.body.contains("Wrong user name or password"));
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_the_cookie_is_locked_down() {
    let ui = Ui::start(&[("ada", Role::Admin, "admin-password")], |_| {}).await;
    let mut client = ui.client();
    let login = client
        .post_form(
            "/login",
            &form(&[("username", "ada"), ("password", "admin-password")]),
        )
        .await;
    let cookie = login.header("set-cookie").unwrap();
    for flag in [
        "__Host-fieldlink=",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    for path in ["/login", "/", "/api/v1/status", "/nowhere", "/healthz"] {
        let answer = client.get(path).await;
        let csp = answer.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert!(
            answer.header("strict-transport-security").is_some(),
            "{path}"
        );
    }
    assert_eq!(
        client.get("/").await.header("cache-control"),
        Some("no-store")
    );
}

/// Captures what the UI logs, to read the setup token as an operator would.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_setup_token_from_the_log_makes_the_first_admin_once() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let ui = {
        let _guard = tracing::subscriber::set_default(subscriber);
        Ui::start(&[], |_| {}).await
    };
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let token = text
        .split("setup token ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the token is in the log")
        .to_owned();

    let mut client = ui.client();
    let login = client.get("/login").await;
    assert_eq!(
        login.header("location"),
        Some("/setup"),
        "no account yet: to the setup page"
    );
    let wrong = client
        .post_form(
            "/setup",
            &form(&[
                ("token", "guess"),
                ("username", "ada"),
                ("password", "long-enough-pw"),
                ("confirm", "long-enough-pw"),
            ]),
        )
        .await;
    assert_eq!(wrong.status, 403);
    let short = client
        .post_form(
            "/setup",
            &form(&[
                ("token", &token),
                ("username", "ada"),
                ("password", "short"),
                ("confirm", "short"),
            ]),
        )
        .await;
    assert_eq!(
        short.status, 400,
        "a weak password is refused and the token kept"
    );
    let made = client
        .post_form(
            "/setup",
            &form(&[
                ("token", &token),
                ("username", "ada"),
                ("password", "long-enough-pw"),
                ("confirm", "long-enough-pw"),
            ]),
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.body);
    assert_eq!(
        client.get("/users").await.status,
        200,
        "logged in as the new admin"
    );

    let mut other = ui.client();
    let again = other
        .post_form(
            "/setup",
            &form(&[
                ("token", &token),
                ("username", "eve"),
                ("password", "long-enough-pw"),
                ("confirm", "long-enough-pw"),
            ]),
        )
        .await;
    assert_eq!(again.status, 403, "the token works once");
    let users = fieldlink_web::users::Users::load(&ui.dir.path().join("web/users")).unwrap();
    assert_eq!(users.list(), vec![("ada".to_owned(), Role::Admin)]);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let ui = Ui::start(&[("ada", Role::Admin, "admin-password")], |s| {
        s.max_connections = 2
    })
    .await;
    // Two clients that connect and say nothing hold both slots...
    let idle: Vec<_> =
        futures_util::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(ui.addr)))
            .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a third is closed at once, before any TLS.
    let mut third = tokio::net::TcpStream::connect(ui.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut third, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection is closed: {read:?}"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ui.client().get("/healthz").await.status,
        200,
        "slots come back"
    );
}

/// One address (a compromised device on the LAN, a script) holds at most half of the slots:
/// the technician's browser, from another address, still gets in.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let ui = Ui::start(&[("ada", Role::Admin, "admin-password")], |s| {
        s.max_connections = 4
    })
    .await;
    let hostile = |_| async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(ui.addr).await
    };
    // It connects as often as there are slots and says nothing.
    let idle: Vec<_> = futures_util::future::join_all((0..4).map(hostile)).await;
    assert!(idle.iter().all(Result::is_ok));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ui.client().get("/healthz").await.status,
        200,
        "another address is served"
    );
    drop(idle);
}

#[tokio::test]
async fn a_form_posted_from_another_site_is_refused_even_the_login() {
    let ui = Ui::start(&[("ada", Role::Admin, "admin-password")], |_| {}).await;
    let body = form(&[("username", "ada"), ("password", "admin-password")]);
    let host = ui.addr.to_string();
    for (name, value) in [
        ("origin", "https://evil.example".to_owned()),
        ("origin", "null".to_owned()),
        ("sec-fetch-site", "cross-site".to_owned()),
    ] {
        let mut client = ui.client();
        let answer = client
            .send(
                "POST",
                "/login",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    (name, &value),
                ],
                &body,
            )
            .await;
        assert_eq!(answer.status, 403, "{name}: {value}");
        assert!(client.cookie.is_none());
    }
    // The UI's own pages post with their own origin: accepted.
    let mut client = ui.client();
    let own = format!("https://{host}");
    let answer = client
        .send(
            "POST",
            "/login",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &own),
                ("sec-fetch-site", "same-origin"),
            ],
            &body,
        )
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
}

#[tokio::test]
async fn a_body_that_never_comes_does_not_hold_a_connection_before_login() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ui = Ui::start(&[("ada", Role::Admin, "admin-password")], |s| {
        s.max_connections = 1
    })
    .await;
    // A login whose body is announced and never sent, over a real TLS connection.
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in fieldlink_core::tls::read_certs(&ui.cert()).unwrap() {
            roots.add(cert).unwrap();
        }
        roots
    };
    let tls = fieldlink_core::tls::TlsPolicy::default()
        .client_config(roots)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(ui.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(ui.addr.ip().into());
    let mut hostile = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    hostile
        .write_all(
            b"POST /login HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
              content-length: 1000\r\n\r\nusername=a",
        )
        .await
        .unwrap();
    // It holds the only slot for now...
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    let mut answer = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(40), hostile.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was never ended");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "{:?}",
        start.elapsed()
    );
    // ...and gives it back: a real client gets in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ui.client().get("/healthz").await.status, 200);
}
