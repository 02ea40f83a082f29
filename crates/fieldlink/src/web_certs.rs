//! The uplink's own certificate from the web UI's Certificates page: a certificate request
//! (CSR) signed by its key (a key file, or a key in a PKCS#11 token, which never leaves it),
//! and a new certificate checked before it is used: it parses, its public key is the key's, it
//! chains to `[keys] ca_file` and is valid now. It is then written where `uplink.cert_file`
//! points and applied through the same restart, health check and rollback as a configuration
//! (`crate::restart`): if the uplink does not connect with it, the previous file returns.

use std::path::PathBuf;

use fieldlink_core::tls::{KeyRef, KeyResolver as _};
use fieldlink_keys::Pkcs11Keys;
use fieldlink_uplink::config::UplinkTls;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::config::Settings;

/// Where the uplink's identity is: its key, its certificate file, its client id.
fn identity(settings: &Settings) -> Result<(&KeyRef, &PathBuf, &str), String> {
    let uplink = settings
        .uplink
        .as_ref()
        .ok_or("no [uplink] is configured: there is no uplink certificate")?;
    match &uplink.tls {
        UplinkTls::Mutual { key, cert_file, .. } => Ok((key, cert_file, &uplink.client_id)),
        _ => Err(
            "the uplink presents no certificate of its own (uplink.tls is not \
                  \"mutual\"): there is nothing to request or upload"
                .into(),
        ),
    }
}

/// A PKCS#10 request for the uplink's key, its subject the uplink's client id: PEM.
pub(crate) fn uplink_csr(settings: &Settings, keys: &Pkcs11Keys) -> Result<String, String> {
    let (key, _, client_id) = identity(settings)?;
    match key {
        KeyRef::File(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the uplink's key {}: {e}", path.display()))?;
            let pair = rcgen::KeyPair::from_pem(&pem)
                .map_err(|e| format!("the uplink's key {} is not usable: {e}", path.display()))?;
            let mut params =
                rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, client_id);
            params
                .serialize_request(&pair)
                .and_then(|r| r.pem())
                .map_err(|e| format!("cannot make the request: {e}"))
        }
        KeyRef::Pkcs11(uri) => {
            let uri = fieldlink_keys::uri::KeyUri::parse(uri).map_err(|e| e.to_string())?;
            let tokens = keys
                .tokens()
                .ok_or("a key in a token needs [keys] module and pin_file")?;
            let label = uri
                .object
                .as_deref()
                .ok_or("the uplink's key_uri names no object= label")?;
            let session = tokens
                .open(&uri.token, uri.serial.as_deref())
                .map_err(|e| e.to_string())?;
            fieldlink_keys::manage::csr(&session, label, client_id, &[]).map_err(|e| e.to_string())
        }
    }
}

/// Checks `pem` as the uplink's new certificate chain; the file to write and its text.
pub(crate) fn checked_upload(
    settings: &Settings,
    keys: &Pkcs11Keys,
    pem: &str,
) -> Result<(PathBuf, String), String> {
    let (key, cert_file, _) = identity(settings)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the text is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err(
            "no certificate in the text: paste the PEM (-----BEGIN CERTIFICATE-----), \
                    the uplink's certificate first, then its intermediates"
                .into(),
        );
    }
    let provider = rustls::crypto::ring::default_provider();
    let source = keys.resolve(key).map_err(|e| e.to_string())?;
    fieldlink_core::tls::certified_key(chain.clone(), source.as_ref(), &provider).map_err(
        |_| {
            "its public key is not the uplink's key: it was issued for another \
                      request"
                .to_owned()
        },
    )?;
    let ca_file = settings.keys.ca_file.as_ref().ok_or(
        "no CA to check it against: set [keys] ca_file to the CA that issues the gateway's \
         certificates (fieldlink config set keys.ca_file PATH, then restart the service)",
    )?;
    let cas = fieldlink_core::tls::read_certs(ca_file).map_err(|e| e.to_string())?;
    fieldlink_keys::manage::verify_chain(&chain, &cas, &provider)
        .map_err(|problem| format!("{problem} (CA file {})", ca_file.display()))?;
    Ok((cert_file.clone(), pem.trim().to_owned() + "\n"))
}
