//! `fieldlink demo`: the whole gateway in one command that needs nothing else. A temporary
//! state directory; a simulated boiler on Modbus TCP in process (a temperature that moves, a
//! writable setpoint); a route for everything under `site/`; a stand-in cloud broker in process
//! on loopback (a second fieldlink broker behind TLS, with a throw-away CA) that the uplink
//! connects to; the web UI with a one-time login printed. The terminal shows one line that
//! follows values read, queued and delivered. Ctrl-C stops everything and removes what it made.

mod modbus_sim;

use std::io::{IsTerminal as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use fieldlink_core::shutdown::Shutdown;

use crate::Gateway;
use crate::config::{Settings, parse};

/// A directory removed, with everything in it, when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn main() -> ExitCode {
    fieldlink_core::logging::init_with_default("warn,rumqttd=off");
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldlink demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let scratch = Scratch(make_scratch_dir()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fieldlink-demo")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(demo(&scratch.0));
    drop(runtime);
    drop(scratch);
    result
}

fn make_scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fieldlink-demo-{}", std::process::id()));
    fieldlink_core::private_fs::private_dir(&dir)
        .with_context(|| format!("cannot make {}", dir.display()))?;
    Ok(dir)
}

async fn demo(dir: &Path) -> anyhow::Result<()> {
    fieldlink_core::tls::install_default_provider();
    let signals = crate::cli::Signals::install()?;
    let device_tasks = Shutdown::new();
    let modbus = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let modbus_addr = modbus.local_addr()?;
    modbus_sim::start(modbus, &device_tasks);

    let ca = write_cloud_pki(dir)?;
    let cloud_port = free_port()?;
    let cloud = Gateway::start(cloud_settings(dir, cloud_port)?)
        .await
        .context("cannot start the stand-in cloud broker")?;

    let mqtt_port = free_port()?;
    let web_port = if port_free(8443) { 8443 } else { free_port()? };
    let settings = gateway_settings(dir, mqtt_port, web_port, cloud_port, &ca, modbus_addr)?;
    let password: String = fieldlink_web::sessions::random_token()
        .chars()
        .take(16)
        .collect();
    let users = fieldlink_web::users_file(&dir.join("gateway"));
    fieldlink_web::users::set_user(
        &users,
        "demo",
        fieldlink_web::users::Role::Admin,
        password.as_bytes(),
    )?;
    let mut gateway = Gateway::start(settings)
        .await
        .context("cannot start the gateway")?;

    say(&format!(
        "fieldlink demo is running (state in {dir}; removed on Ctrl-C)\n\
         \n  Web UI:        https://127.0.0.1:{web_port}/   user demo   password {password}\n\
         \x20                (a self-signed certificate: your browser asks once; its SHA-256 \
         fingerprint is {fingerprint})\n\
         \x20 Local broker:  mqtt://127.0.0.1:{mqtt_port}   e.g. mosquitto_sub -p {mqtt_port} -t 'site/#' -v\n\
         \x20 Field device:  a boiler on Modbus TCP at {modbus_addr} (site/boiler/temp, \
         site/boiler/setpoint; write site/boiler/setpoint/set)\n\
         \x20 Cloud:         a stand-in broker with TLS on 127.0.0.1:{cloud_port} (throw-away CA)\n\n",
        dir = dir.display(),
        fingerprint = gateway.web_fingerprint().unwrap_or_default(),
    ));

    let ended = {
        let summary = summary_loop(gateway.queue().clone(), gateway.uplink().map(|u| u.watch()));
        tokio::pin!(summary);
        tokio::select! {
            ended = gateway.run_until(signals.wait(), None) => ended,
            never = &mut summary => match never {},
        }
    };
    say("\nStopping…\n");
    gateway.stop().await;
    cloud.stop().await;
    device_tasks.trigger();
    device_tasks.drain(Duration::from_secs(2)).await;
    match ended {
        crate::Ended::Asked(_) => Ok(()),
        crate::Ended::Failed(failure) => Err(anyhow::anyhow!("{failure}")),
    }
}

/// One line, rewritten in place on a terminal (a new line every few seconds otherwise).
/// The demo's gateway is not editable (built in code, no file), so its components never
/// restart: the queue and the uplink's status taken at start stay the running ones.
async fn summary_loop(
    queue: fieldlink_queue::Queue,
    uplink: Option<tokio::sync::watch::Receiver<fieldlink_uplink::UplinkStatus>>,
) -> std::convert::Infallible {
    let tty = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(if tty { 1 } else { 3 }));
    loop {
        tick.tick().await;
        let metrics = crate::web::prometheus()
            .map(|h| h.render())
            .unwrap_or_default();
        let read: u64 = metric_sum(&metrics, "fieldlink_serial_values_total");
        let queued = queue.stats().await.map(|s| s.messages).unwrap_or(0);
        let (state, delivered) = uplink.as_ref().map_or(("none".into(), 0), |u| {
            let status = u.borrow().clone();
            (status.state.name().to_owned(), status.acked_total)
        });
        let line = format!(
            "values read {read} · queued {queued} · delivered {delivered} · uplink {state}"
        );
        if tty {
            say(&format!("\r{line}    "));
        } else {
            say(&format!("{line}\n"));
        }
    }
}

/// The sum of every series of a counter in a Prometheus text page.
fn metric_sum(page: &str, name: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[allow(clippy::print_stdout)]
fn say(text: &str) {
    print!("{text}");
    let _ = std::io::stdout().flush();
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A throw-away CA and a certificate for `localhost` signed by it, for the stand-in cloud.
fn write_cloud_pki(dir: &Path) -> anyhow::Result<PathBuf> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fieldlink demo CA (throw-away)");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])?.signed_by(&key, &issuer)?;
    let pki = dir.join("cloud-pki");
    fieldlink_core::private_fs::private_dir(&pki)?;
    let ca = pki.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem())?;
    std::fs::write(pki.join("cloud.pem"), cert.pem())?;
    fieldlink_core::private_fs::replace_atomically(
        &pki.join("cloud.key"),
        key.serialize_pem().as_bytes(),
    )?;
    Ok(ca)
}

fn cloud_settings(dir: &Path, port: u16) -> anyhow::Result<Settings> {
    let pki = dir.join("cloud-pki");
    let text = format!(
        "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"2s\"\n\
         [[broker.listeners]]\nname = \"cloud\"\nbind = \"127.0.0.1\"\nport = {port}\n\
         tls = \"server-auth\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nanonymous = true\n\
         client_id = \"any\"\n",
        data = dir.join("cloud").display(),
        cert = pki.join("cloud.pem").display(),
        key = pki.join("cloud.key").display(),
    );
    parse(&text, fieldlink_core::config::Origin::BuiltIn)
        .map_err(|e| anyhow::anyhow!("the stand-in cloud's configuration: {e}"))
}

fn gateway_settings(
    dir: &Path,
    mqtt_port: u16,
    web_port: u16,
    cloud_port: u16,
    ca: &Path,
    modbus: SocketAddr,
) -> anyhow::Result<Settings> {
    let text = format!(
        "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
         [[broker.listeners]]\nname = \"loopback\"\nbind = \"127.0.0.1\"\nport = {mqtt_port}\n\
         [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\
         [uplink]\nhost = \"localhost\"\nport = {cloud_port}\nclient_id = \"fieldlink-demo\"\n\
         tls = \"server-auth\"\nca_file = \"{ca}\"\n\
         [[devices]]\nname = \"boiler\"\nprotocol = \"modbus-tcp\"\naddress = \"{modbus}\"\n\
         unit = 1\ninterval = \"1s\"\nheartbeat = \"10s\"\n\
         [[devices.points]]\nname = \"temp\"\ntable = \"input\"\naddress = {temp}\ntype = \"u16\"\n\
         scale = 0.1\nunit = \"°C\"\n\
         [[devices.points]]\nname = \"setpoint\"\ntable = \"holding\"\naddress = {setpoint}\n\
         type = \"u16\"\nscale = 0.1\nunit = \"°C\"\nwritable = true\nmin = 5.0\nmax = 30.0\n\
         [web]\nport = {web_port}\n",
        data = dir.join("gateway").display(),
        ca = ca.display(),
        temp = modbus_sim::TEMP,
        setpoint = modbus_sim::SETPOINT,
    );
    parse(&text, fieldlink_core::config::Origin::BuiltIn)
        .map_err(|e| anyhow::anyhow!("the demo gateway's configuration: {e}"))
}
