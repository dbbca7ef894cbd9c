//! Verifying that a request comes from Slack, as Slack specifies (CONTRACT.md §1): the
//! `X-Slack-Signature` is `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{raw body}` keyed with
//! the app's signing secret; the `X-Slack-Request-Timestamp` must be within five minutes of
//! now (either way); the signatures are compared in constant time. A request that passed is
//! remembered for those five minutes, so that the same signed request sent again (a replay)
//! is refused too — Slack re-signs what it sends again.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

/// How far a request's timestamp may be from now, in seconds.
pub const WINDOW_SECONDS: i64 = 300;

/// Why a request is not taken for Slack's; never says what the signature should have been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the request has no X-Slack-Request-Timestamp or X-Slack-Signature")]
    Unsigned,
    #[error("the request's timestamp is more than five minutes from now")]
    Stale,
    #[error("the request's signature does not verify")]
    Forged,
    #[error("the request was received already")]
    Replayed,
}

/// The signing secret and the signatures seen within the window.
pub struct Verifier {
    secret: Vec<u8>,
    seen: Mutex<HashMap<String, i64>>,
}

impl Verifier {
    pub fn new(secret: &str) -> Verifier {
        Verifier {
            secret: secret.as_bytes().to_vec(),
            seen: Mutex::default(),
        }
    }

    /// Checks `body` with its headers at `now_s` (epoch seconds).
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_s: i64,
    ) -> Result<(), Refused> {
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(Refused::Unsigned);
        };
        let at: i64 = timestamp.trim().parse().map_err(|_| Refused::Stale)?;
        if (now_s - at).abs() > WINDOW_SECONDS {
            return Err(Refused::Stale);
        }
        let expected = sign(&self.secret, timestamp, body);
        if !bool::from(expected.as_bytes().ct_eq(signature.trim().as_bytes())) {
            return Err(Refused::Forged);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| (now_s - *at).abs() <= WINDOW_SECONDS);
        if seen.insert(expected, at).is_some() {
            return Err(Refused::Replayed);
        }
        Ok(())
    }
}

/// `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}` under `secret`: Slack's signature.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut text = String::with_capacity(3 + 64);
    text.push_str("v0=");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's own example (CONTRACT.md §1.1).
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slacks_example_verifies_once_and_anything_else_is_refused() {
        assert_eq!(
            sign(SECRET.as_bytes(), TIMESTAMP, BODY.as_bytes()),
            SIGNATURE
        );
        let now = 1_531_420_618 + 10;
        let verifier = Verifier::new(SECRET);
        let check = |ts: Option<&str>, sig: Option<&str>, body: &str, now: i64| {
            verifier.verify(ts, sig, body.as_bytes(), now)
        };
        assert_eq!(
            check(Some(TIMESTAMP), None, BODY, now),
            Err(Refused::Unsigned)
        );
        assert_eq!(
            check(
                Some(TIMESTAMP),
                Some(SIGNATURE),
                &format!("{BODY}&x=1"),
                now
            ),
            Err(Refused::Forged)
        );
        let upper = SIGNATURE.replace('a', "A");
        assert_eq!(
            check(Some(TIMESTAMP), Some(&upper), BODY, now),
            Err(Refused::Forged)
        );
        assert_eq!(
            check(Some(TIMESTAMP), Some(SIGNATURE), BODY, now + WINDOW_SECONDS),
            Err(Refused::Stale),
            "more than five minutes later"
        );
        assert_eq!(
            check(
                Some(TIMESTAMP),
                Some(SIGNATURE),
                BODY,
                now - 2 * WINDOW_SECONDS
            ),
            Err(Refused::Stale),
            "from the future"
        );
        assert_eq!(
            check(Some("soon"), Some(SIGNATURE), BODY, now),
            Err(Refused::Stale)
        );
        assert_eq!(check(Some(TIMESTAMP), Some(SIGNATURE), BODY, now), Ok(()));
        assert_eq!(
            check(Some(TIMESTAMP), Some(SIGNATURE), BODY, now + 1),
            Err(Refused::Replayed)
        );
        let wrong_key = Verifier::new("another-secret");
        assert_eq!(
            wrong_key.verify(Some(TIMESTAMP), Some(SIGNATURE), BODY.as_bytes(), now),
            Err(Refused::Forged)
        );
    }
}
