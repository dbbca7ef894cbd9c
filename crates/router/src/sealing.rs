//! The configuration at rest: `config.db` holds the document (action secrets included) sealed
//! with XChaCha20-Poly1305 under a 256-bit key, never in clear.
//!
//! A sealed document is [`MAGIC`], a random 24-byte nonce (random nonces of this size never
//! meet in practice), then the ciphertext with its tag. Opening tries the current key, then
//! each previous one (rotation: the store re-seals with the current key at start), and accepts a
//! plain JSON document only as what an older Tocsin wrote (also re-sealed at start). A
//! document that no key opens is refused whole: a wrong key never yields a half-read
//! configuration.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// How a sealed document starts.
const MAGIC: &[u8] = b"TOCSIN-SEALED/1\n";
const NONCE_BYTES: usize = 24;
/// Binds a sealed document to its use: it opens as a configuration and nothing else.
const CONTEXT: &[u8] = b"tocsin configuration";

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

    /// `document` sealed with the current key.
    pub fn seal(&self, document: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .current
            .encrypt(
                &nonce,
                Payload {
                    msg: document,
                    aad: CONTEXT,
                },
            )
            .expect("sealing in memory cannot fail");
        [MAGIC, nonce.as_slice(), &sealed].concat()
    }

    /// The document in `stored`, and whether it must be sealed again.
    pub fn open(&self, stored: &[u8]) -> Result<(Vec<u8>, Opened), SealError> {
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            // Written by a Tocsin from before sealing.
            return Ok((stored.to_vec(), Opened::Outdated));
        };
        if rest.len() < NONCE_BYTES {
            return Err(SealError::NoKeyOpens);
        }
        let (nonce, sealed) = rest.split_at(NONCE_BYTES);
        let nonce = XNonce::from_slice(nonce);
        let payload = || Payload {
            msg: sealed,
            aad: CONTEXT,
        };
        if let Ok(document) = self.current.decrypt(nonce, payload()) {
            return Ok((document, Opened::Current));
        }
        self.previous
            .iter()
            .find_map(|key| key.decrypt(nonce, payload()).ok())
            .map(|document| (document, Opened::Outdated))
            .ok_or(SealError::NoKeyOpens)
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
        let sealed = Keys::new(&old, &[]).seal(document);
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
            Keys::new(&old, &[]).seal(document),
            sealed,
            "a fresh nonce each time"
        );
    }
}
