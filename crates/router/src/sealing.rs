//! The configuration out of memory: the stored document (action secrets included, in
//! `config.db` or the shared PostgreSQL database) and the snapshots processes that keep their
//! own files send each other over the bus are sealed with XChaCha20-Poly1305 under a 256-bit
//! key, never in clear.
//!
//! A sealed document is [`MAGIC`], a random 24-byte nonce (random nonces of this size never
//! meet in practice), then the ciphertext with its tag, bound to its [`Purpose`] (a snapshot
//! does not open as a stored document, nor the reverse). Opening tries the current key, then
//! each previous one (rotation: the store re-seals with the current key at start). A stored
//! document in plain JSON is accepted only as what an older Tocsin wrote (also re-sealed at
//! start); a snapshot must be sealed, or anyone who can publish to the broker could change the
//! configuration. A document that no key opens is refused whole: a wrong key never yields a
//! half-read configuration.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// How a sealed document starts.
const MAGIC: &[u8] = b"TOCSIN-SEALED/1\n";
const NONCE_BYTES: usize = 24;

/// What a sealed document is for; it opens for that and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The stored configuration.
    AtRest,
    /// A snapshot sent to the other processes over the bus.
    Broadcast,
}

impl Purpose {
    /// Authenticated with the ciphertext.
    fn context(self) -> &'static [u8] {
        match self {
            Purpose::AtRest => b"tocsin configuration",
            Purpose::Broadcast => b"tocsin configuration snapshot",
        }
    }
}

/// The length of a key, in bytes.
pub const KEY_BYTES: usize = 32;

/// The current key, which seals, and the previous ones, which still open.
pub struct Keys {
    current: XChaCha20Poly1305,
    previous: Vec<XChaCha20Poly1305>,
}

/// How a stored document was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// With the current key: nothing to do.
    Current,
    /// With a previous key, or from plain JSON: to be sealed with the current key.
    Outdated,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "the stored configuration is sealed with a key that is neither `store.secret_key` nor \
         one of `store.previous_secret_keys`"
    )]
    NoKeyOpens,
    #[error(
        "a configuration change from another process is sealed with a key this process does \
         not have: give every process the same `store.secret_key`"
    )]
    ForeignSnapshot,
    #[error("a configuration change on the bus is not sealed; it is ignored")]
    UnsealedSnapshot,
}

impl Keys {
    pub fn new(current: &[u8; KEY_BYTES], previous: &[[u8; KEY_BYTES]]) -> Keys {
        let cipher = |key: &[u8; KEY_BYTES]| XChaCha20Poly1305::new(key.into());
        Keys {
            current: cipher(current),
            previous: previous.iter().map(cipher).collect(),
        }
    }

    /// A fresh random key, for tests and for a first start.
    pub fn generate_key() -> [u8; KEY_BYTES] {
        XChaCha20Poly1305::generate_key(&mut OsRng).into()
    }

    /// `document` sealed with the current key, for `purpose`.
    pub fn seal(&self, purpose: Purpose, document: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .current
            .encrypt(
                &nonce,
                Payload {
                    msg: document,
                    aad: purpose.context(),
                },
            )
            .expect("sealing in memory cannot fail");
        [MAGIC, nonce.as_slice(), &sealed].concat()
    }

    /// The stored document in `stored`, and whether it must be sealed again.
    pub fn open(&self, stored: &[u8]) -> Result<(Vec<u8>, Opened), SealError> {
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            // Written by a Tocsin from before sealing.
            return Ok((stored.to_vec(), Opened::Outdated));
        };
        self.unseal(Purpose::AtRest, rest)
            .ok_or(SealError::NoKeyOpens)
    }

    /// The snapshot in `sealed`, which must be sealed.
    pub fn open_snapshot(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let rest = sealed
            .strip_prefix(MAGIC)
            .ok_or(SealError::UnsealedSnapshot)?;
        self.unseal(Purpose::Broadcast, rest)
            .map(|(snapshot, _)| snapshot)
            .ok_or(SealError::ForeignSnapshot)
    }

    /// What follows [`MAGIC`], opened for `purpose` by the current key or a previous one.
    fn unseal(&self, purpose: Purpose, rest: &[u8]) -> Option<(Vec<u8>, Opened)> {
        if rest.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_BYTES);
        let nonce = XNonce::from_slice(nonce);
        let payload = || Payload {
            msg: sealed,
            aad: purpose.context(),
        };
        if let Ok(document) = self.current.decrypt(nonce, payload()) {
            return Some((document, Opened::Current));
        }
        self.previous
            .iter()
            .find_map(|key| key.decrypt(nonce, payload()).ok())
            .map(|document| (document, Opened::Outdated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_opens_with_its_key_or_a_previous_one_and_no_other() {
        let (old, new, stranger) = (
            Keys::generate_key(),
            Keys::generate_key(),
            Keys::generate_key(),
        );
        let document = br#"{"actions":[{"properties":{"password":"hunter2"}}]}"#;
        let sealed = Keys::new(&old, &[]).seal(Purpose::AtRest, document);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            Keys::new(&old, &[]).open(&sealed).unwrap(),
            (document.to_vec(), Opened::Current)
        );
        assert_eq!(
            Keys::new(&new, &[stranger, old]).open(&sealed).unwrap(),
            (document.to_vec(), Opened::Outdated),
            "rotated: a previous key opens it"
        );
        assert!(Keys::new(&new, &[stranger]).open(&sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(Keys::new(&old, &[]).open(&tampered).is_err());
        assert_eq!(
            Keys::new(&new, &[]).open(document).unwrap(),
            (document.to_vec(), Opened::Outdated),
            "plain JSON from an older Tocsin"
        );
        assert_ne!(
            Keys::new(&old, &[]).seal(Purpose::AtRest, document),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn a_snapshot_opens_only_sealed_with_a_key_of_ours_and_only_as_a_snapshot() {
        let (ours, theirs) = (Keys::generate_key(), Keys::generate_key());
        let keys = Keys::new(&ours, &[]);
        let snapshot = br#"{"version":1,"configuration":{}}"#;
        let sealed = keys.seal(Purpose::Broadcast, snapshot);
        assert_eq!(keys.open_snapshot(&sealed).unwrap(), snapshot.to_vec());
        assert!(
            keys.open(&sealed).is_err(),
            "a snapshot is not a stored document"
        );
        let stored = keys.seal(Purpose::AtRest, snapshot);
        assert!(
            keys.open_snapshot(&stored).is_err(),
            "nor a stored document a snapshot"
        );
        assert!(matches!(
            Keys::new(&theirs, &[]).open_snapshot(&sealed),
            Err(SealError::ForeignSnapshot)
        ));
        assert!(matches!(
            keys.open_snapshot(snapshot),
            Err(SealError::UnsealedSnapshot)
        ));
    }
}
