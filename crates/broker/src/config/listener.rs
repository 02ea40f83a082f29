//! Validation of a listener's security: TLS mode and files, identities, anonymous access and
//! the handshake limits.

use std::path::PathBuf;
use std::time::Duration;

use fieldlink_core::config::{
    Collector, choice_or, duration, int, min_tls_version, paths, stale_crl,
};
use toml::Spanned;

use super::file::ListenerFile;
use super::{
    CertIdentity, ClientIdRule, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES,
    ListenerSettings, ListenerTls,
};

/// Fills the security fields of `listener` from `file`.
pub(super) fn security(
    key: &str,
    entry: &Spanned<ListenerFile>,
    listener: &mut ListenerSettings,
    c: &mut Collector<'_>,
) {
    let file = entry.get_ref();
    listener.tls = tls(key, entry, c).unwrap_or(ListenerTls::None);
    listener.min_tls_version =
        min_tls_version(c, &format!("{key}.min_tls_version"), &file.min_tls_version);
    // Anonymous access by default only where no one else can reach: plain TCP on loopback.
    let loopback_plain = listener.addr.ip().is_loopback() && listener.tls == ListenerTls::None;
    listener.anonymous = file
        .anonymous
        .as_ref()
        .map_or(loopback_plain, |a| *a.get_ref());
    listener.client_id = choice_or(
        c,
        &format!("{key}.client_id"),
        &file.client_id,
        &[
            ("equal", ClientIdRule::Equal),
            ("prefix", ClientIdRule::Prefix),
            ("any", ClientIdRule::Any),
        ],
        ClientIdRule::Equal,
        (
            "unknown client id rule",
            "write \"equal\" (client id = identity), \"prefix\" (identity or identity:...) or \"any\"",
        ),
    );
    listener.handshake_timeout = duration(
        c,
        &format!("{key}.handshake_timeout"),
        &file.handshake_timeout,
        Duration::from_millis(100)..=Duration::from_secs(120),
        DEFAULT_HANDSHAKE_TIMEOUT,
    );
    listener.max_handshakes = int(
        c,
        &format!("{key}.max_handshakes"),
        &file.max_handshakes,
        1..=10_000,
    )
    .unwrap_or(DEFAULT_MAX_HANDSHAKES);
}

fn tls(key: &str, entry: &Spanned<ListenerFile>, c: &mut Collector<'_>) -> Option<ListenerTls> {
    let file = entry.get_ref();
    let mode = file.tls.as_ref().map_or("none", |m| m.get_ref().as_str());
    let path = |c: &mut Collector<'_>, name: &str, value: &Option<Spanned<PathBuf>>, hint: &str| {
        match value {
            Some(p) => Some(p.get_ref().clone()),
            None => {
                c.missing(&format!("{key}.{name}"), entry.span(), hint);
                None
            }
        }
    };
    let key_ref = |c: &mut Collector<'_>| {
        fieldlink_core::config::values::key_ref(
            c,
            key,
            file.key_file.as_ref(),
            file.key_uri.as_ref(),
            entry.span(),
            KEY_HINT,
        )
    };
    match mode {
        "none" => Some(ListenerTls::None),
        "server-auth" => {
            let cert_file = path(c, "cert_file", &file.cert_file, CERT_HINT);
            let key = key_ref(c);
            Some(ListenerTls::ServerAuth {
                cert_file: cert_file?,
                key: key?,
            })
        }
        "mutual" => {
            let cert_file = path(c, "cert_file", &file.cert_file, CERT_HINT);
            let key_file = key_ref(c);
            let ca_file = path(
                c,
                "ca_file",
                &file.ca_file,
                "mutual TLS needs the CAs that issue device certificates: ca_file = \"/etc/fieldlink/devices-ca.pem\"",
            );
            let identity = choice_or(
                c,
                &format!("{key}.identity"),
                &file.identity,
                &[
                    ("cn", CertIdentity::CommonName),
                    ("san", CertIdentity::SubjectAltName),
                ],
                CertIdentity::CommonName,
                (
                    "unknown identity field",
                    "write \"cn\" (the subject's common name) or \"san\" (its first DNS name)",
                ),
            );
            Some(ListenerTls::Mutual {
                cert_file: cert_file?,
                key: key_file?,
                ca_file: ca_file?,
                crl_files: paths(&file.crl_files),
                stale_crl: stale_crl(c, &format!("{key}.stale_crl"), &file.stale_crl),
                identity,
            })
        }
        "psk" => Some(ListenerTls::Psk {
            psk_file: path(
                c,
                "psk_file",
                &file.psk_file,
                "PSK needs a 0600 file of identity:hexkey lines: psk_file = \"/etc/fieldlink/devices.psk\"",
            )?,
            allow_plain_psk: file.allow_plain_psk.as_ref().is_some_and(|b| *b.get_ref()),
        }),
        _ => {
            let span = file.tls.as_ref().map(Spanned::span);
            c.at(
                &format!("{key}.tls"),
                span,
                "unknown TLS mode",
                "write \"none\", \"server-auth\", \"mutual\" or \"psk\"",
            );
            None
        }
    }
}

const CERT_HINT: &str =
    "TLS needs the listener's certificate chain: cert_file = \"/etc/fieldlink/broker.pem\"";
const KEY_HINT: &str = "TLS needs the listener's private key: key_file = \"/etc/fieldlink/broker.key\", \
                        or key_uri = \"pkcs11:token=…;object=…\" for a key in a token";
