//! Validate-then-promote for the uplink's certificate files (`cert_file`, `ca_file`).
//!
//! A renewed certificate or CA bundle is written over the old file while the gateway runs. It
//! must not cut the gateway off the cloud if it is wrong, so the files on disk are only a
//! *candidate* until proven:
//!
//! 1. checked here first: readable, the certificate is our key's (rustls' key check, done when
//!    the TLS configuration is built) and not expired; a candidate that fails is refused
//!    with its reason and the files that last worked stay in use;
//! 2. then tried by a real handshake with the cloud (the uplink reconnects once, at a quiet
//!    moment: nothing in flight);
//! 3. promoted when the cloud accepts it; if the cloud refuses it (a TLS alert, an untrusted
//!    server under the new CA, a CONNACK refusal), the uplink goes back to the files that
//!    worked, and the candidate is not tried again until the files change once more.
//!
//! Before the first successful handshake there is nothing to go back to: the files on disk
//! are used as they are (their problems are reported as before).

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;

/// What the identity files held when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Our certificate chain (mutual TLS); empty otherwise.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The CA file's certificates; empty when the system's CAs are used.
    pub(crate) cas: Vec<CertificateDer<'static>>,
}

impl Identity {
    /// Why this identity cannot be used now, as far as it can be told without the key and
    /// the cloud: an expired certificate, or a CA file without a CA.
    pub(crate) fn problem(&self, ca_file_set: bool, now: SystemTime) -> Option<String> {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        if let Some(leaf) = self.chain.first()
            && fieldlink_core::x509::not_after(leaf).is_some_and(|not_after| not_after < now)
        {
            return Some("the new certificate has expired".into());
        }
        if ca_file_set && self.cas.is_empty() {
            return Some("the new CA file holds no certificate".into());
        }
        None
    }
}

/// Which identity files are proven, tried, or refused.
#[derive(Debug, Default)]
pub(crate) struct Rotation {
    /// What the last successful handshake used.
    good: Option<Identity>,
    /// What the current attempt uses, when it is not (yet) `good`.
    trial: Option<Identity>,
    /// A candidate refused (by the checks or by the cloud): not tried again while the files
    /// hold it.
    refused: Option<Identity>,
    /// Why the last candidate was refused, until the status has shown it.
    refusal: Option<String>,
}

impl Rotation {
    /// The files on disk are used as they are: nothing is proven yet (the first attempt).
    pub(crate) fn start(&mut self, on_disk: Identity) {
        self.trial = Some(on_disk);
    }

    /// Chooses the identity for the next attempt from what is on disk (`read`): the proven
    /// one, or a candidate that passes `check` (an error: why it is refused). `None` when
    /// nothing is proven yet (see [`Self::start`]).
    pub(crate) fn choose(
        &mut self,
        read: Result<Identity, String>,
        check: impl FnOnce(&Identity) -> Result<(), String>,
    ) -> Option<Identity> {
        let good = self.good.clone()?;
        let on_disk = match read {
            Ok(on_disk) => on_disk,
            Err(why) => {
                self.note_refusal(None, &why);
                return Some(good);
            }
        };
        if on_disk == good {
            self.trial = None;
            return Some(good);
        }
        if self.refused.as_ref() == Some(&on_disk) {
            return Some(good);
        }
        match check(&on_disk) {
            Ok(()) => {
                tracing::info!("New uplink certificate files: trying them with the cloud");
                self.trial = Some(on_disk.clone());
                Some(on_disk)
            }
            Err(why) => {
                self.note_refusal(Some(on_disk), &why);
                Some(good)
            }
        }
    }

    /// Whether `on_disk` differs from the proven files (a candidate to check).
    pub(crate) fn differs_from_proven(&self, on_disk: &Identity) -> bool {
        self.good.as_ref().is_some_and(|good| good != on_disk)
    }

    /// Why the last candidate was refused, once.
    pub(crate) fn take_refusal(&mut self) -> Option<String> {
        self.refusal.take()
    }

    /// Refuses `candidate` (it failed the checks): the proven files stay.
    pub(crate) fn refuse(&mut self, candidate: Identity, why: &str) {
        self.note_refusal(Some(candidate), why);
    }

    fn note_refusal(&mut self, candidate: Option<Identity>, why: &str) {
        self.refusal = Some(format!(
            "the uplink's new certificate files were refused ({why}); the previous ones stay in use"
        ));
        tracing::warn!(
            reason = why,
            "The uplink's new certificate files are refused; the previous ones stay in use"
        );
        self.refused = candidate;
        self.trial = None;
    }

    /// The attempt's handshake succeeded: what it used is proven. `true` when that was a new
    /// candidate (now in use).
    pub(crate) fn promote(&mut self) -> bool {
        let Some(trial) = self.trial.take() else {
            return false;
        };
        let was_new = self.good.is_some();
        if was_new {
            tracing::info!("The uplink's new certificate files are in use");
        }
        self.good = Some(trial);
        self.refused = None;
        was_new
    }

    /// The cloud refused the attempt: if it tried a candidate, the candidate is refused and
    /// the next attempt goes back to the proven files. Returns whether that happened.
    pub(crate) fn cloud_refused(&mut self, why: &str) -> bool {
        if self.good.is_none() {
            return false; // nothing to go back to: the files stay as they are
        }
        let Some(trial) = self.trial.take() else {
            return false;
        };
        tracing::warn!(
            reason = why,
            "The cloud refused the uplink's new certificate files; going back to the previous ones"
        );
        self.refusal = Some(format!(
            "the cloud refused the uplink's new certificate files ({why}); back to the previous ones"
        ));
        self.refused = Some(trial);
        true
    }

    /// Whether `on_disk` is a candidate worth a reconnect: not what is in use, not refused.
    pub(crate) fn is_new(&self, on_disk: &Identity) -> bool {
        self.good.as_ref().is_some_and(|good| good != on_disk)
            && self.refused.as_ref() != Some(on_disk)
            && self.trial.as_ref() != Some(on_disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: u8) -> Identity {
        Identity {
            chain: vec![CertificateDer::from(vec![n])],
            cas: Vec::new(),
        }
    }

    #[test]
    fn a_candidate_is_tried_promoted_or_refused_and_the_proven_one_comes_back() {
        let mut rotation = Rotation::default();
        let ok = |_: &Identity| Ok(());
        assert_eq!(rotation.choose(Ok(identity(1)), ok), None, "nothing proven");
        rotation.start(identity(1));
        assert!(!rotation.promote(), "the first files are not a rotation");
        // A candidate the cloud accepts is promoted.
        assert!(rotation.is_new(&identity(2)));
        assert_eq!(rotation.choose(Ok(identity(2)), ok), Some(identity(2)));
        assert!(rotation.promote());
        assert_eq!(rotation.take_refusal(), None);
        // A candidate the cloud refuses: back to 2, and 3 is not tried again.
        assert_eq!(rotation.choose(Ok(identity(3)), ok), Some(identity(3)));
        assert!(rotation.cloud_refused("bad certificate"));
        assert!(rotation.take_refusal().unwrap().contains("bad certificate"));
        assert!(!rotation.is_new(&identity(3)));
        assert_eq!(rotation.choose(Ok(identity(3)), ok), Some(identity(2)));
        // A candidate that fails the checks is never tried.
        let expired = |_: &Identity| Err("expired".to_owned());
        assert_eq!(rotation.choose(Ok(identity(4)), expired), Some(identity(2)));
        assert!(rotation.take_refusal().unwrap().contains("expired"));
        assert!(!rotation.is_new(&identity(4)));
        // Unreadable files: the proven ones stay.
        assert_eq!(
            rotation.choose(Err("no such file".into()), ok),
            Some(identity(2))
        );
    }
}
