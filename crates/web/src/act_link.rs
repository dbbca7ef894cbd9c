//! Signed, expiring, single-purpose action links (`/tocsin/v1/act/{token}`): what a Teams card
//! or an email carries instead of a button that calls back, since neither can call back.
//!
//! A link names one act ([`model::alert::Control`]: acknowledge, resolve, silence for an hour)
//! on one alert, for one audience ([`Audience`]: the mailbox an email went to, or the Teams
//! action whose channel saw the card), until it expires, with a random nonce. The token is
//! `base64url(claims JSON).base64url(HMAC-SHA256)`, keyed by a key derived from the token
//! signing key ([`crate::Authenticator::derived_key`]), so every process sharing that key
//! reads the links the others minted, and no link can pass for an API token or a console
//! session. Delivery mints links ([`ActLinks::url`]); the act pages read them
//! ([`ActLinks::read`]) and make them single-use by claiming the once-only audit key
//! [`LinkClaims::once_key`] when they act.
//!
//! Links are minted only when `[links] public_url` says where people reach Tocsin.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use model::alert::Control;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashSet;
use subtle::ConstantTimeEq;

/// `[links]`: where people reach Tocsin, for the action links in Teams cards and emails.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkSettings {
    /// Tocsin's address as people's browsers reach it (`https://tocsin.example.com`); empty:
    /// Teams cards and emails carry no action links.
    pub public_url: String,
    /// How long a link stays valid after its message was sent, in minutes.
    pub lifetime_minutes: u64,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            public_url: String::new(),
            lifetime_minutes: 24 * 60,
        }
    }
}

impl LinkSettings {
    /// Refuses a `public_url` that is not an absolute http(s) URL, naming the setting.
    pub fn check(&self) -> Result<(), String> {
        let url = self.public_url.trim();
        if url.is_empty() {
            return Ok(());
        }
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains(['?', '#']) => Ok(()),
            _ => Err(format!(
                "links.public_url: `{url}` must be an absolute http(s) URL such as https://tocsin.example.com"
            )),
        }
    }
}

/// Who a link was sent to, and so who may use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Audience {
    /// The mailbox an email went to (lower case): whoever holds the link holds the mailbox,
    /// and acts as the identity mapped to that address.
    Mailbox(String),
    /// The channel of a Teams action (its name): everyone in it saw the card, so the person
    /// who uses the link says who they are by signing in.
    Channel(String),
}

/// What a genuine link says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    #[serde(rename = "a")]
    pub act: String,
    /// The alert key.
    #[serde(rename = "k")]
    pub alert: String,
    #[serde(rename = "to")]
    pub audience: Audience,
    /// Expiry, epoch seconds.
    #[serde(rename = "exp")]
    pub expires: i64,
    #[serde(rename = "n")]
    pub nonce: String,
}

impl LinkClaims {
    /// The act the link is for.
    pub fn control(&self) -> Option<Control> {
        Control::parse(&self.act)
    }

    /// The audit log's once-only key that using the link claims.
    pub fn once_key(&self) -> String {
        format!("act-link:{}", self.nonce)
    }
}

/// Why a token is not a usable link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this is not a Tocsin action link (mistyped, cut, or signed with another key)")]
    NotALink,
    #[error("this action link expired")]
    Expired,
}

/// Mints and reads action links.
pub struct ActLinks {
    key: Vec<u8>,
    /// `public_url` without a trailing `/`.
    base: String,
    lifetime_seconds: i64,
    /// The mailboxes mapped to an identity that may act: only their emails carry links.
    mailboxes: HashSet<String>,
}

impl ActLinks {
    /// Links under `settings.public_url`, signed with `key`; `None` when no public URL is set.
    /// `mailboxes` are the addresses whose emails may carry links.
    pub fn new(
        settings: &LinkSettings,
        key: Vec<u8>,
        mailboxes: impl IntoIterator<Item = String>,
    ) -> Option<Self> {
        let base = settings.public_url.trim().trim_end_matches('/');
        (!base.is_empty()).then(|| ActLinks {
            key,
            base: base.to_owned(),
            lifetime_seconds: i64::try_from(settings.lifetime_minutes.saturating_mul(60))
                .unwrap_or(i64::MAX),
            mailboxes: mailboxes
                .into_iter()
                .map(|m| m.to_ascii_lowercase())
                .collect(),
        })
    }

    /// How long a link stays valid, in seconds.
    pub fn lifetime_seconds(&self) -> i64 {
        self.lifetime_seconds
    }

    /// Whether an email to `address` may carry links (its address is mapped).
    pub fn serves_mailbox(&self, address: &str) -> bool {
        self.mailboxes.contains(&address.to_ascii_lowercase())
    }

    fn mac(&self, claims: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(claims);
        mac.finalize().into_bytes().to_vec()
    }

    /// A new link's token for `control` on `alert`, for `audience`, from `now` (epoch seconds).
    pub fn token(&self, control: Control, alert: &str, audience: Audience, now: i64) -> String {
        let claims = LinkClaims {
            act: control.action_id().to_owned(),
            alert: alert.to_owned(),
            audience,
            expires: now.saturating_add(self.lifetime_seconds),
            nonce: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>()),
        };
        let json = serde_json::to_vec(&claims).expect("claims serialize");
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(self.mac(&json))
        )
    }

    /// A new link's full URL (see [`ActLinks::token`]).
    pub fn url(&self, control: Control, alert: &str, audience: Audience, now: i64) -> String {
        format!(
            "{}/tocsin/v1/act/{}",
            self.base,
            self.token(control, alert, audience, now)
        )
    }

    /// A link of each control ([`Control::ALL`]) for `alert` and `audience`, from `now`: its
    /// button's label and URL, as a card or a mail shows them.
    pub fn for_alert(
        &self,
        alert: &str,
        audience: &Audience,
        now: i64,
    ) -> Vec<(&'static str, String)> {
        Control::ALL
            .into_iter()
            .map(|control| {
                (
                    control.label(),
                    self.url(control, alert, audience.clone(), now),
                )
            })
            .collect()
    }

    /// What `token` says, if this Tocsin signed it, it names a known act, and it has not
    /// expired at `now` (epoch seconds).
    pub fn read(&self, token: &str, now: i64) -> Result<LinkClaims, LinkError> {
        let (claims, signature) = token.split_once('.').ok_or(LinkError::NotALink)?;
        let json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| LinkError::NotALink)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| LinkError::NotALink)?;
        if !bool::from(self.mac(&json).ct_eq(&signature)) {
            return Err(LinkError::NotALink);
        }
        let claims: LinkClaims = serde_json::from_slice(&json).map_err(|_| LinkError::NotALink)?;
        if claims.control().is_none() {
            return Err(LinkError::NotALink);
        }
        if claims.expires <= now {
            return Err(LinkError::Expired);
        }
        Ok(claims)
    }

    /// The anti-forgery token of the confirmation form of the link with `nonce`.
    pub fn form_token(&self, nonce: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(format!("act-form|{nonce}").as_bytes()))
    }

    /// Whether `token` is the confirmation form's anti-forgery token for `nonce`.
    pub fn genuine_form(&self, nonce: &str, token: &str) -> bool {
        bool::from(self.form_token(nonce).as_bytes().ct_eq(token.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(public_url: &str, lifetime_minutes: u64) -> ActLinks {
        ActLinks::new(
            &LinkSettings {
                public_url: public_url.into(),
                lifetime_minutes,
            },
            b"derived key".to_vec(),
            ["Alice@Example.com".to_owned()],
        )
        .unwrap()
    }

    #[test]
    fn a_link_reads_back_until_it_expires() {
        let links = links("https://tocsin.example.com/", 60);
        let url = links.url(
            Control::Resolve,
            "disk|db-1",
            Audience::Mailbox("alice@example.com".into()),
            1_000,
        );
        let token = url
            .strip_prefix("https://tocsin.example.com/tocsin/v1/act/")
            .expect("under the public URL, one slash");
        let claims = links.read(token, 1_000).unwrap();
        assert_eq!(claims.control(), Some(Control::Resolve));
        assert_eq!(claims.alert, "disk|db-1");
        assert_eq!(claims.expires, 1_000 + 3_600);
        assert!(claims.once_key().starts_with("act-link:"));
        assert_eq!(links.read(token, 4_599).unwrap(), claims);
        assert_eq!(links.read(token, 4_600), Err(LinkError::Expired));
        let again = links.token(
            Control::Resolve,
            "disk|db-1",
            claims.audience.clone(),
            1_000,
        );
        assert_ne!(
            links.read(&again, 1_000).unwrap().nonce,
            claims.nonce,
            "every link is its own"
        );
    }

    #[test]
    fn a_forged_or_altered_link_is_not_a_link() {
        let links = links("https://t.example", 60);
        let token = links.token(
            Control::Acknowledge,
            "a",
            Audience::Channel("teams".into()),
            0,
        );
        let (claims, signature) = token.split_once('.').unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        json["k"] = "another-alert".into();
        let altered = format!(
            "{}.{signature}",
            URL_SAFE_NO_PAD.encode(json.to_string().as_bytes())
        );
        let other_key = ActLinks::new(
            &LinkSettings {
                public_url: "https://t.example".into(),
                lifetime_minutes: 60,
            },
            b"another key".to_vec(),
            [],
        )
        .unwrap();
        for bad in [
            altered.as_str(),
            "",
            "no-dot",
            "a.b",
            &other_key.token(Control::Acknowledge, "a", Audience::Channel("t".into()), 0),
        ] {
            assert_eq!(links.read(bad, 0), Err(LinkError::NotALink), "{bad}");
        }
    }

    #[test]
    fn forms_and_mailboxes() {
        let links = links("https://t.example", 60);
        let form = links.form_token("n1");
        assert!(links.genuine_form("n1", &form));
        assert!(!links.genuine_form("n2", &form));
        assert!(links.serves_mailbox("alice@example.COM"));
        assert!(!links.serves_mailbox("bob@example.com"));
        assert!(ActLinks::new(&LinkSettings::default(), vec![1], []).is_none());
    }

    #[test]
    fn the_public_url_is_checked() {
        let check = |url: &str| {
            LinkSettings {
                public_url: url.into(),
                ..LinkSettings::default()
            }
            .check()
        };
        assert!(check("").is_ok());
        assert!(check("https://tocsin.example.com/base").is_ok());
        for bad in ["tocsin.example.com", "https://", "ftp://x", "https://x/?q"] {
            assert!(
                check(bad).unwrap_err().contains("links.public_url"),
                "{bad}"
            );
        }
    }
}
