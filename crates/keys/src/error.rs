//! Why a token or a key cannot be used, one variant per cause, each saying what to do.

use std::path::PathBuf;

use fieldlink_core::fault::Fault;

/// Why a PKCS#11 token, key or certificate cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The `pkcs11:` URI cannot be read or does not name one key.
    #[error("{uri:?}: {problem}. Hint: write pkcs11:token=LABEL;object=LABEL (RFC 7512)")]
    Uri {
        /// The URI as written.
        uri: String,
        /// What is wrong.
        problem: String,
    },
    /// The PKCS#11 module cannot be loaded or initialised.
    #[error(
        "PKCS#11 module {module:?} cannot be used: {problem}. Hint: check [keys] module (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so; TPM: /usr/lib/<arch>/pkcs11/libtpm2_pkcs11.so) and that its token is plugged in"
    )]
    Module {
        /// The module's path.
        module: PathBuf,
        /// What the loader said.
        problem: String,
    },
    /// No slot holds a token with that label.
    #[error(
        "no token labelled {label:?} (tokens present: {present}). Hint: plug the token in, or fix the URI's token="
    )]
    NoToken {
        /// The label the URI asks for.
        label: String,
        /// The labels found, for the operator to compare.
        present: String,
    },
    /// The PIN file or credential cannot be read, or is readable by others.
    #[error("PIN {place}: {problem}. Hint: {hint}")]
    Pin {
        /// The file or credential (never the PIN).
        place: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        hint: &'static str,
    },
    /// The token refused the PIN.
    #[error(
        "token {label:?} refused the PIN (C_Login: {rv}). Hint: check [keys] pin_file; several wrong PINs lock the token"
    )]
    WrongPin {
        /// The token's label.
        label: String,
        /// The PKCS#11 return value.
        rv: String,
    },
    /// The token holds no private key with that label or id.
    #[error(
        "token {token:?} has no private key {object}. Hint: `fieldlink keys list` shows the keys; `fieldlink keys generate --label L` makes one"
    )]
    NoKey {
        /// The token's label.
        token: String,
        /// The key's label or id, as the URI names it.
        object: String,
    },
    /// The key is of a type fieldlink cannot sign TLS handshakes with.
    #[error("key {object} on token {token:?}: {problem}. Hint: use an ECDSA P-256 or P-384 key")]
    Unsupported {
        /// The token's label.
        token: String,
        /// The key.
        object: String,
        /// What is wrong.
        problem: String,
    },
    /// A certificate is refused (does not match the key, does not chain, not valid now).
    #[error("certificate {path:?} refused: {problem}")]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// The key label is taken already.
    #[error(
        "token {token:?} has a key labelled {label:?} already. Hint: pick another label or `fieldlink keys delete --label {label}` first"
    )]
    Exists {
        /// The token's label.
        token: String,
        /// The label.
        label: String,
    },
    /// A PKCS#11 call failed (the token went away, a device error).
    #[error("token {token:?}: {call}: {problem}")]
    Token {
        /// The token's label.
        token: String,
        /// What we were doing.
        call: &'static str,
        /// What the module said.
        problem: String,
    },
    /// `[keys]` has no PKCS#11 module, yet a `pkcs11:` key is named.
    #[error(
        "{uri:?} needs a PKCS#11 module. Hint: set [keys] module and pin_file (or pin_credential)"
    )]
    NotConfigured {
        /// The URI.
        uri: String,
    },
}

impl KeyError {
    /// Whose fault it is: what the configuration names is the operator's to fix; a token that
    /// fails or went away is the environment's.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Token { .. } | Self::Module { .. } | Self::NoToken { .. } => Fault::Environment,
            _ => Fault::Config,
        }
    }
}

/// A cryptoki error in few words: the call and the PKCS#11 return value's name
/// (`Function::Login: PinIncorrect`), not the specification's paragraph about it.
pub(crate) fn describe(e: &cryptoki::error::Error) -> String {
    match e {
        cryptoki::error::Error::Pkcs11(rv, function) => format!("{function}: {rv:?}"),
        other => other.to_string(),
    }
}
