//! The web UI in a real browser: Debian's chromium driven through chromedriver (WebDriver) by
//! fantoccini, against the real gateway binary and a real MQTT client. The browser trusts the
//! UI's self-signed certificate for the session only (`acceptInsecureCerts`), as a technician
//! does after comparing the fingerprint from the log.
//!
//! `scripts/screenshots` runs the ignored test at the end to write `docs/ui/*.png`.

mod web_gateway;

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use fieldlink_test_support::{free_port, wait_for_port};
use web_gateway::Gateway;

/// chromedriver in its own process group, killed with its browser when dropped (a failing test
/// would otherwise leave chromium running, reparented to init).
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (apt: chromium-driver; scripts/test installs it)");
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
        Self {
            child,
            port,
            _profile: tempfile::tempdir().unwrap(),
        }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert("acceptInsecureCerts".into(), true.into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", self._profile.path().display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

async fn fill(browser: &Client, name: &str, value: &str) {
    let field = browser
        .find(Locator::Css(&format!("[name={name}]")))
        .await
        .unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

async fn submit(browser: &Client) {
    browser
        .find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until the element at `css` shows `expected` (the page is not reloaded meanwhile).
async fn until_text(browser: &Client, css: &str, expected: &str) {
    let start = Instant::now();
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && element.text().await.is_ok_and(|t| t.trim() == expected)
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{css} never showed {expected:?}; page:\n{}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn login(browser: &Client, gateway: &Gateway, name: &str, password: &str) {
    browser.goto(&gateway.url("/login")).await.unwrap();
    fill(browser, "username", name).await;
    fill(browser, "password", password).await;
    submit(browser).await;
}

/// A gateway configured with `extra`, an admin `ada`, and a browser logged in as her on the
/// dashboard. Keep the driver: its drop ends the browser.
async fn admin_in_browser(extra: &str) -> (Gateway, Driver, Client) {
    let mut gateway = Gateway::configure_with(extra);
    assert!(
        gateway
            .users(&["add", "ada", "--role", "admin"], "admin-password\n")
            .status
            .success()
    );
    gateway.run();
    let driver = Driver::start();
    let browser = driver.browser().await;
    login(&browser, &gateway, "ada", "admin-password").await;
    until_text(&browser, "h1", "Dashboard").await;
    (gateway, driver, browser)
}

#[tokio::test]
async fn first_admin_then_logins_and_the_dashboard_updates_live() {
    let mut gateway = Gateway::configure();
    gateway.run();
    let token = gateway.setup_token();
    let driver = Driver::start();
    let browser = driver.browser().await;

    // No account yet: the UI sends the browser to the setup page.
    browser.goto(&gateway.url("/")).await.unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/setup")
    );
    fill(&browser, "token", &token).await;
    fill(&browser, "username", "ada").await;
    fill(&browser, "password", "long-enough-pw").await;
    fill(&browser, "confirm", "long-enough-pw").await;
    submit(&browser).await;
    until_text(&browser, "h1", "Dashboard").await;

    // Out, a wrong password, then the right one.
    browser
        .find(Locator::Css("header form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until_text(&browser, "h1", "Log in").await;
    login(&browser, &gateway, "ada", "wrong-password").await;
    until_text(&browser, "[role=alert]", "Wrong user name or password.").await;
    login(&browser, &gateway, "ada", "long-enough-pw").await;
    until_text(&browser, "h1", "Dashboard").await;

    // The dashboard follows the queue by itself (server-sent events), no reload.
    until_text(&browser, "#live-state", "live").await;
    until_text(&browser, "#queue-depth", "0").await;
    for i in 0..3 {
        gateway.publish("site/boiler/temp", &format!("2{i}.5"));
    }
    until_text(&browser, "#queue-depth", "3").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn a_viewer_sees_the_gateway_but_is_offered_no_change() {
    let mut gateway = Gateway::configure();
    assert!(
        gateway
            .users(&["add", "ada", "--role", "admin"], "admin-password\n")
            .status
            .success()
    );
    assert!(
        gateway
            .users(&["add", "vic"], "viewer-password\n")
            .status
            .success()
    );
    gateway.run();
    let driver = Driver::start();
    let browser = driver.browser().await;
    login(&browser, &gateway, "vic", "viewer-password").await;
    until_text(&browser, "h1", "Dashboard").await;
    let nav = text_of(&browser, "header").await;
    assert!(!nav.contains("Users"), "no Users link for a viewer: {nav}");
    browser.goto(&gateway.url("/queue")).await.unwrap();
    until_text(&browser, "h1", "Queue").await;
    assert!(
        browser
            .find(Locator::Css("form[action='/queue/purge']"))
            .await
            .is_err(),
        "no purge form for a viewer"
    );
    browser.goto(&gateway.url("/users")).await.unwrap();
    until_text(&browser, ".message", "Only an admin may do this.").await;
    // Even a forged form post from the page's own origin is refused.
    let status = browser
        .execute_async(
            "const done = arguments[0];
             fetch('/queue/purge', {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'confirm=purge'})
               .then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    browser.close().await.unwrap();
}

/// Writes a PNG of each page to `docs/ui/` (run by `scripts/screenshots`).
#[tokio::test]
#[ignore = "writes docs/ui/*.png; run by scripts/screenshots"]
async fn screenshots() {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ui");
    std::fs::create_dir_all(&out).unwrap();
    let mut peer = web_gateway::ModbusPeer::start();
    assert_eq!(peer.cmd("set ir 0 215"), "ok");
    assert_eq!(peer.cmd("set hr 1 205"), "ok");
    let mut gateway = Gateway::configure_with(&web_gateway::boiler(&peer));
    assert!(
        gateway
            .users(&["add", "ada", "--role", "admin"], "admin-password\n")
            .status
            .success()
    );
    assert!(
        gateway
            .users(&["add", "vic"], "viewer-password\n")
            .status
            .success()
    );
    // A site layer for the Configuration page to show.
    let site = gateway.dir.path().join("data/config");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("site.toml"),
        "# Site settings of boiler room 2\n[queue]\nmax_age = \"7d\"\n\n[[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n",
    )
    .unwrap();
    gateway.run();
    for i in 0..5 {
        gateway.publish(
            &format!("site/meter{}/power", i % 2),
            &format!("{}", 100 + i),
        );
    }
    let driver = Driver::start();
    let browser = driver.browser().await;
    browser.goto(&gateway.url("/login")).await.unwrap();
    std::fs::write(out.join("login.png"), browser.screenshot().await.unwrap()).unwrap();
    login(&browser, &gateway, "ada", "admin-password").await;
    until_text(&browser, "#live-state", "live").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (path, name) in [
        ("/", "dashboard"),
        ("/devices", "devices"),
        ("/queue", "queue"),
        ("/certificates", "certificates"),
        ("/config", "config"),
        ("/users", "users"),
    ] {
        browser.goto(&gateway.url(path)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::write(
            out.join(format!("{name}.png")),
            browser.screenshot().await.unwrap(),
        )
        .unwrap();
    }
    // A check with two mistakes, each under its line.
    edit_config(
        &browser,
        "# Site settings of boiler room 2\n[queue]\nmax_age = \"7 days\"\n\n[[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\nqos = 3\n",
    )
    .await;
    click(&browser, "button[formaction='/config/check']").await;
    until_contains(
        &browser,
        "#check-result",
        &["2 problems"],
        Duration::from_secs(20),
    )
    .await;
    std::fs::write(
        out.join("config-check.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    browser
        .goto(&gateway.url("/live?filter=site%2F%23"))
        .await
        .unwrap();
    until_text(&browser, "#live-data-state", "live").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(out.join("live.png"), browser.screenshot().await.unwrap()).unwrap();
    browser.close().await.unwrap();
}

#[tokio::test]
async fn an_admin_writes_a_setpoint_to_a_real_modbus_device_and_sees_the_answer() {
    let mut peer = web_gateway::ModbusPeer::start();
    assert_eq!(peer.cmd("set ir 0 215"), "ok");
    let (gateway, _driver, browser) = admin_in_browser(&web_gateway::boiler(&peer)).await;

    // The value read from the device, with its unit and quality.
    let start = Instant::now();
    loop {
        browser.goto(&gateway.url("/devices")).await.unwrap();
        if text_of(&browser, "td[data-point=temp]").await == "21.5 °C" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no reading: {}",
            browser.source().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The field carries the point's range (the browser refuses more; the server checks too).
    let form = browser.find(Locator::Css("form.write")).await.unwrap();
    let value = form.find(Locator::Css("[name=value]")).await.unwrap();
    assert_eq!(value.attr("max").await.unwrap().as_deref(), Some("30"));

    // A real write: typed, confirmed, the device's answer shown, the register changed.
    value.send_keys("22.5").await.unwrap();
    form.find(Locator::Css("[name=confirm]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    form.find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until_text(&browser, "#outcome", "boiler/setpoint: ok (value 22.5)").await;
    assert_eq!(peer.cmd("get hr 1 1"), "225");
    browser.close().await.unwrap();
}

/// Waits until the element at `css` contains each of `words`.
async fn until_contains(browser: &Client, css: &str, words: &[&str], limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
            && words.iter().all(|w| text.contains(w))
        {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "{css} never showed {words:?}; page:\n{}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Puts `text` in the configuration page's editor.
async fn edit_config(browser: &Client, text: &str) {
    browser
        .goto(
            browser
                .current_url()
                .await
                .unwrap()
                .join("/config")
                .unwrap()
                .as_str(),
        )
        .await
        .unwrap();
    until_text(browser, "h1", "Configuration").await;
    fill(browser, "text", text).await;
}

#[tokio::test]
async fn two_mistakes_show_at_their_lines_and_the_fixed_config_is_applied_and_kept() {
    let (gateway, _driver, browser) = admin_in_browser("apply_check = \"2s\"\n").await;

    // Lines 2 and 7 are wrong: a word for a size, and a key no route has.
    edit_config(
        &browser,
        "[queue]\nmax_bytes = \"lots\"\n\n[[routes]]\nname = \"alarms\"\nfilter = \"alarm/#\"\ncolour = \"red\"\n",
    )
    .await;
    click(&browser, "button[formaction='/config/check']").await;
    until_contains(
        &browser,
        "#check-result",
        &["2 problems"],
        Duration::from_secs(20),
    )
    .await;
    let at_2 = text_of(&browser, "tr.problem[data-line='2']").await;
    assert!(at_2.contains("queue.max_bytes"), "{at_2}");
    let at_7 = text_of(&browser, "tr.problem[data-line='7']").await;
    assert!(at_7.contains("colour"), "{at_7}");
    assert_eq!(
        browser
            .find_all(Locator::Css("#problems li"))
            .await
            .unwrap()
            .len(),
        2
    );
    // The line numbers beside the text.
    assert!(text_of(&browser, "#gutter").await.starts_with("1\n2\n3"));

    // Fixed: the diff shows the new route, Apply restarts the gateway on it and keeps it.
    edit_config(
        &browser,
        "[[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\n[[routes]]\nname = \"alarms\"\nfilter = \"alarm/#\"\n",
    )
    .await;
    click(&browser, "button[formaction='/config/check']").await;
    until_contains(
        &browser,
        "#check-result",
        &["Valid"],
        Duration::from_secs(20),
    )
    .await;
    let changes = text_of(&browser, "#changes").await;
    assert!(
        changes.contains("routes[1].filter") && changes.contains("\"alarm/#\""),
        "{changes}"
    );
    click(&browser, "button[formaction='/config/apply']").await;
    until_contains(
        &browser,
        "#apply-state",
        &["Applied and kept"],
        Duration::from_secs(60),
    )
    .await;

    // The same session goes on: no login page, and the new route takes messages.
    browser.goto(&gateway.url("/queue")).await.unwrap();
    until_text(&browser, "h1", "Queue").await;
    gateway.publish("alarm/boiler", "overheat");
    let start = Instant::now();
    loop {
        browser.goto(&gateway.url("/queue")).await.unwrap();
        if browser.source().await.unwrap().contains("alarm/boiler") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no alarm queued");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    browser.close().await.unwrap();
}

#[tokio::test]
async fn an_uplink_that_cannot_connect_is_rolled_back_and_the_page_says_why() {
    use fieldlink_test_support::Mosquitto;
    use fieldlink_test_support::certs::{TestCa, write};
    let ca = TestCa::new("cloud CA");
    let server = ca.issue("cloud", &["localhost"]);
    let pki = tempfile::tempdir().unwrap();
    let ca_file = write(pki.path(), "ca.pem", ca.pem());
    let cert = write(pki.path(), "server.pem", &server.cert_pem);
    let key = write(pki.path(), "server.key", &server.key_pem);
    let tls = free_port();
    let _cloud = Mosquitto::start(&format!(
        "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        ca_file.display(),
        cert.display(),
        key.display()
    ));
    wait_for_port(([127, 0, 0, 1], tls).into(), Duration::from_secs(10));
    let (gateway, _driver, browser) = admin_in_browser(&format!(
        "apply_check = \"3s\"\n\
         [uplink]\nhost = \"localhost\"\nport = {tls}\nclient_id = \"gw-web\"\nca_file = \"{}\"\n\
         reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n",
        ca_file.display()
    ))
    .await;
    let mut api = gateway.client();
    let login_api = api
        .post_form(
            "/login",
            &fieldlink_test_support::web_client::form(&[
                ("username", "ada"),
                ("password", "admin-password"),
            ]),
        )
        .await;
    assert_eq!(login_api.status, 303);
    web_gateway::uplink_connected(&mut api).await;

    // The uplink to a port where nothing listens.
    let closed = free_port();
    edit_config(&browser, &format!("[uplink]\nport = {closed}\n")).await;
    click(&browser, "button[formaction='/config/apply']").await;
    // The page follows the apply by itself, then says why it was rolled back.
    let said = until_contains(
        &browser,
        "#apply-state",
        &["Rolled back", "uplink", "did not connect again"],
        Duration::from_secs(60),
    )
    .await;
    assert!(said.contains("previous configuration"), "{said}");
    assert!(
        said.to_lowercase().contains("refused"),
        "the uplink's last error: {said}"
    );

    // Back on the old configuration: nothing written, the uplink connected to the real broker.
    assert!(!gateway.dir.path().join("data/config/site.toml").exists());
    web_gateway::uplink_connected(&mut api).await;
    // The browser's session lived through both restarts.
    browser.goto(&gateway.url("/queue")).await.unwrap();
    until_text(&browser, "h1", "Queue").await;
    browser.close().await.unwrap();
}
