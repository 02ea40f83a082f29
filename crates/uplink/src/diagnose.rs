//! Connection failures in plain words, for the status page and the log.

use std::error::Error as StdError;

use rustls::{AlertDescription, CertificateError};

/// The plainest true sentence about why a connection failed. `clock_synchronized` is whether
/// the wall clock is known to be right: a certificate that reads as expired or not yet valid
/// by a clock that is not is a wrong clock, not a wrong certificate.
pub(crate) fn explain(error: &(dyn StdError + 'static), clock_synchronized: bool) -> String {
    match tls_error(error) {
        Some(tls) if !clock_synchronized && is_about_time(tls) => format!(
            "the clock is not synchronized yet: the server certificate cannot be checked until \
             time sync (by this clock it is {}); retrying",
            explain_tls(tls).trim_start_matches("server certificate ")
        ),
        Some(tls) => explain_tls(tls),
        None => error.to_string(),
    }
}

/// Whether a connection failed on a certificate's validity period.
pub(crate) fn is_clock_error(error: &(dyn StdError + 'static)) -> bool {
    tls_error(error).is_some_and(is_about_time)
}

fn is_about_time(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }
                | CertificateError::ExpiredRevocationList
                | CertificateError::ExpiredRevocationListContext { .. }
        )
    )
}

/// The rustls error somewhere in the chain, if there is one.
fn tls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error::source() skips the error it wraps (it returns that error's source), and
        // tokio-rustls wraps the rustls error in an io::Error: look inside.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls);
        }
        source = e.source();
    }
    None
}

/// Whether the cloud said no (a certificate or TLS alert, a CONNACK refusal), as opposed to
/// could not be reached or went away: the status calls the first "refused".
pub(crate) fn is_refusal(error: &(dyn StdError + 'static)) -> bool {
    if let Some(tls) = tls_error(error) {
        return matches!(
            tls,
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::AlertReceived(_)
                | rustls::Error::PeerIncompatible(_)
        );
    }
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = source {
        if matches!(
            e.downcast_ref::<rumqttc::ConnectionError>(),
            Some(rumqttc::ConnectionError::ConnectionRefused(_))
        ) || matches!(
            e.downcast_ref::<rumqttc::v5::ConnectionError>(),
            Some(rumqttc::v5::ConnectionError::ConnectionRefused(_))
        ) {
            return true;
        }
        source = e.source();
    }
    false
}

/// The CONNACK code, when the cloud refused the connection for its credentials: MQTT 3.1.1's
/// `BadUserNamePassword` (4) and `NotAuthorized` (5), MQTT 5's 0x86, 0x87 and
/// `BadAuthenticationMethod` (0x8C). A refused login is not a network blip: it is retried slowly.
pub(crate) fn credentials_refused(error: &(dyn StdError + 'static)) -> Option<&'static str> {
    use rumqttc::ConnectReturnCode as V4;
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5;
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(rumqttc::ConnectionError::ConnectionRefused(code)) =
            e.downcast_ref::<rumqttc::ConnectionError>()
        {
            return match code {
                V4::BadUserNamePassword => Some("bad user name or password"),
                V4::NotAuthorized => Some("not authorized"),
                _ => None,
            };
        }
        if let Some(rumqttc::v5::ConnectionError::ConnectionRefused(code)) =
            e.downcast_ref::<rumqttc::v5::ConnectionError>()
        {
            return match code {
                V5::BadUserNamePassword => Some("bad user name or password"),
                V5::NotAuthorized => Some("not authorized"),
                V5::BadAuthenticationMethod => Some("bad authentication method"),
                _ => None,
            };
        }
        source = e.source();
    }
    None
}

/// Whether rumqttc gave up because a keep-alive ping went unanswered: a stall it saw first
/// (when `stall_timeout` is not shorter than the keep-alive).
pub(crate) fn is_unanswered_ping(error: &(dyn StdError + 'static)) -> bool {
    matches!(
        error.downcast_ref::<rumqttc::ConnectionError>(),
        Some(rumqttc::ConnectionError::MqttState(
            rumqttc::StateError::AwaitPingResp
        ))
    ) || matches!(
        error.downcast_ref::<rumqttc::v5::ConnectionError>(),
        Some(rumqttc::v5::ConnectionError::MqttState(
            rumqttc::v5::StateError::AwaitPingResp
        ))
    )
}

fn explain_tls(e: &rustls::Error) -> String {
    use rustls::Error::*;
    match e {
        InvalidCertificate(CertificateError::Revoked) => {
            "server certificate revoked (listed in a configured CRL)".into()
        }
        InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "server certificate expired".into()
        }
        InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "server certificate not valid yet (is this device's clock right?)".into(),
        InvalidCertificate(CertificateError::UnknownIssuer) => {
            "server certificate not trusted: its CA is not in uplink.ca_file".into()
        }
        InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "server certificate does not match uplink.host".into(),
        InvalidCertificate(
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. },
        ) => "a CRL in uplink.crl_files expired (it is past its nextUpdate): update it \
              (uplink.stale_crl = \"warn\" accepts a stale CRL meanwhile)"
            .into(),
        InvalidCertificate(other) => format!("server certificate refused: {other:?}"),
        AlertReceived(
            AlertDescription::HandshakeFailure
            | AlertDescription::ProtocolVersion
            | AlertDescription::InsufficientSecurity,
        ) => {
            "the server shares no TLS version or cipher suite with our policy (TLS 1.2+, AEAD only)"
                .into()
        }
        AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate (mutual TLS)".into()
        }
        AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown,
        ) => "the server refused our client certificate".into(),
        AlertReceived(AlertDescription::CertificateRevoked) => {
            "the server says our client certificate is revoked".into()
        }
        AlertReceived(AlertDescription::CertificateExpired) => {
            "the server says our client certificate is expired".into()
        }
        PeerIncompatible(_) => {
            "the server shares no TLS version or cipher suite with our policy (TLS 1.2+, AEAD only)"
                .into()
        }
        other => format!("TLS: {other}"),
    }
}
