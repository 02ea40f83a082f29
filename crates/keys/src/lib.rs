//! Private keys in PKCS#11 tokens: SoftHSM2, a TPM 2.0 through tpm2-pkcs11, a secure element,
//! an HSM. The key is born in the token and never leaves it: TLS handshakes and certificate
//! requests are signed by the token.
//!
//! - [`config`]: `[keys]`, the module and where the PIN is read from (never the TOML itself);
//! - [`Pkcs11Keys`]: the [`KeyResolver`](fieldlink_core::tls::KeyResolver) the binary gives the
//!   uplink and the broker: `key_file` paths as files, `key_uri = "pkcs11:…"` through the token,
//!   each key's session kept and opened again when the token went away and came back;
//! - [`key::TokenKey`]: rustls' `SigningKey` and rcgen's over a token key (ECDSA P-256, P-384);
//! - [`manage`]: what `fieldlink keys` does (list, generate, csr, install-cert, delete).
//!
//! ```
//! use fieldlink_keys::uri::KeyUri;
//! let uri = KeyUri::parse("pkcs11:token=gw-token;object=uplink").unwrap();
//! assert_eq!((uri.token.as_str(), uri.object.as_deref()), ("gw-token", Some("uplink")));
//! ```

pub mod config;
pub mod error;
pub mod key;
pub mod manage;
mod resolver;
pub mod token;
pub mod uri;

pub use error::KeyError;
pub use resolver::Pkcs11Keys;
