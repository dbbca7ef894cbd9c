//! The subscription-confirmation handshake: when an HTTPS subscription is created, OCI
//! Notifications POSTs a `SubscriptionConfirmation` whose `ConfirmationURL` must be fetched for
//! the subscription to become active.
//!
//! Fetching a URL that a request names is a server-side request forgery risk, so
//! [`ConfirmPolicy::check`] lets through only `https` URLs on an Oracle Notifications host
//! (`….notification.<region>….oraclecloud.com`) and URLs whose host the operator put on
//! `confirm_allow_hosts`. The fetch is one GET with a timeout and no redirects. Every outcome
//! (CONFIRMED, PENDING when auto-confirmation is off, REFUSED, FAILED) is logged — host and
//! subscription, never the URL's token — and kept per subscription by
//! [`store::subscriptions`], which `GET /oci/v1/subscriptions` lists.

use reqwest::Url;
use std::time::Duration;

/// The domain of Oracle Cloud's commercial realm; other realms go on the allow-list.
const ORACLE_DOMAIN: &str = ".oraclecloud.com";
/// The host label that marks the Notifications service.
const NOTIFICATION_LABEL: &str = "notification";

/// Which confirmation URLs may be fetched.
#[derive(Debug, Clone)]
pub struct ConfirmPolicy {
    /// Fetch allowed URLs (else record them PENDING for a human).
    pub auto_confirm: bool,
    /// Extra hosts, exact (`127.0.0.1`, `ons.example.net`) or `*.`-prefixed for subdomains;
    /// `http` is allowed on them too.
    pub allow_hosts: Vec<String>,
}

impl ConfirmPolicy {
    /// The URL, if it may be fetched; else why not.
    pub fn check(&self, text: &str) -> Result<Url, String> {
        let url = Url::parse(text).map_err(|e| format!("is not a URL ({e})"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        let host = url.host_str().ok_or("has no host")?.to_ascii_lowercase();
        let scheme = url.scheme();
        if self
            .allow_hosts
            .iter()
            .any(|pattern| host_matches(pattern, &host))
        {
            return match scheme {
                "https" | "http" => Ok(url),
                other => Err(format!("has scheme `{other}`; only http(s) is fetched")),
            };
        }
        if !is_oracle_notifications_host(&host) {
            return Err(format!(
                "has host `{host}`, which is neither an Oracle Notifications host \
                 (…notification….oraclecloud.com) nor in sources.oci.confirm_allow_hosts; not fetched"
            ));
        }
        if scheme != "https" || url.port().is_some_and(|p| p != 443) {
            return Err(format!(
                "must be https on the default port for an Oracle host, got `{scheme}://{host}{}`",
                url.port().map(|p| format!(":{p}")).unwrap_or_default()
            ));
        }
        Ok(url)
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim().to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .strip_suffix(parent)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => !pattern.is_empty() && pattern == host,
    }
}

/// `notification.us-ashburn-1.oci.oraclecloud.com`, `cell1.notification.us-phoenix-1.oci.oraclecloud.com`.
fn is_oracle_notifications_host(host: &str) -> bool {
    host.strip_suffix(ORACLE_DOMAIN)
        .is_some_and(|name| name.split('.').any(|label| label == NOTIFICATION_LABEL))
}

/// Fetches confirmation URLs.
pub struct Confirmer {
    http: reqwest::Client,
}

impl Confirmer {
    pub fn new(timeout: Duration) -> Result<Confirmer, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tocsin/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Confirmer { http })
    }

    /// GETs the URL; `Ok` with the status on a 2xx.
    pub async fn fetch(&self, url: Url) -> Result<u16, String> {
        let response = self.http.get(url).send().await.map_err(|e| {
            // reqwest's errors name the URL, token included: keep only the kind.
            if e.is_timeout() {
                "the confirmation URL did not answer in time".to_owned()
            } else if e.is_connect() {
                "cannot connect to the confirmation host".to_owned()
            } else {
                "the confirmation request failed".to_owned()
            }
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(format!("the confirmation URL answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> ConfirmPolicy {
        ConfirmPolicy {
            auto_confirm: true,
            allow_hosts: allow.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn only_oracle_notifications_hosts_and_allowed_hosts_are_fetched() {
        let oracle = policy(&[]);
        for allowed in [
            "https://cell1.notification.us-phoenix-1.oci.oraclecloud.com/20181201/subscriptions/x/confirmation?token=t&protocol=CUSTOM_HTTPS",
            "https://notification.us-ashburn-1.oraclecloud.com/x",
            "https://NOTIFICATION.eu-frankfurt-1.OCI.oraclecloud.com:443/x",
        ] {
            assert!(oracle.check(allowed).is_ok(), "{allowed}");
        }
        for (refused, why) in [
            (
                "http://cell1.notification.us-phoenix-1.oci.oraclecloud.com/x",
                "must be https",
            ),
            (
                "https://cell1.notification.us-phoenix-1.oci.oraclecloud.com:8443/x",
                "default port",
            ),
            (
                "https://objectstorage.us-phoenix-1.oraclecloud.com/x",
                "neither an Oracle Notifications host",
            ),
            (
                "https://notification.us-phoenix-1.oraclecloud.com.evil.example/x",
                "neither",
            ),
            ("https://evil-notification.oraclecloud.com/x", "neither"),
            (
                "https://notification.oraclecloud.com@evil.example/x",
                "credentials",
            ),
            (
                "https://evil.example/#.notification.oraclecloud.com",
                "neither",
            ),
            ("https://127.0.0.1/x", "neither"),
            ("https://169.254.169.254/opc/v2/instance/", "neither"),
            ("file:///etc/passwd", "has no host"),
            ("not a url", "is not a URL"),
        ] {
            let err = oracle.check(refused).unwrap_err();
            assert!(err.contains(why), "{refused}: {err}");
        }
    }

    #[test]
    fn the_allow_list_admits_exact_hosts_and_subdomains_over_http_too() {
        let allow = policy(&["127.0.0.1", "*.ons.example.net", "[::1]"]);
        assert!(allow.check("http://127.0.0.1:9000/confirm?token=t").is_ok());
        assert!(
            allow.check("http://0x7f.0.0.1:9000/confirm").is_ok(),
            "normalized IPv4"
        );
        assert!(allow.check("https://a.b.ons.example.net/c").is_ok());
        assert!(allow.check("http://[::1]:8080/c").is_ok());
        assert!(
            allow.check("https://ons.example.net/c").is_err(),
            "the wildcard needs a subdomain"
        );
        assert!(allow.check("https://xons.example.net/c").is_err());
        assert!(allow.check("http://127.0.0.2/c").is_err());
        assert!(allow
            .check("ftp://127.0.0.1/c")
            .unwrap_err()
            .contains("scheme"));
    }

    /// A stand-in for OCI on loopback: `/ok` answers 200, `/gone` 410, `/moved` redirects.
    async fn fake_oci() -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        use warp::Filter;
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        let routes = warp::get()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .map(move |path: warp::path::FullPath, query: String| {
                let _ = seen.send(format!("{}?{query}", path.as_str()));
                match path.as_str() {
                    "/ok" => warp::http::Response::builder()
                        .status(200)
                        .body("confirmed"),
                    "/moved" => warp::http::Response::builder()
                        .status(302)
                        .header("location", "http://127.0.0.1:1/elsewhere")
                        .body(""),
                    _ => warp::http::Response::builder().status(410).body("expired"),
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(routes).incoming(listener).run());
        (address, requests)
    }

    #[tokio::test]
    async fn fetching_succeeds_only_on_2xx_and_follows_no_redirect() {
        let (address, mut requests) = fake_oci().await;
        let confirmer = Confirmer::new(Duration::from_secs(2)).unwrap();
        let url = |path: &str| Url::parse(&format!("http://{address}{path}")).unwrap();
        assert_eq!(confirmer.fetch(url("/ok?token=t1")).await, Ok(200));
        assert_eq!(requests.recv().await.unwrap(), "/ok?token=t1");
        let err = confirmer.fetch(url("/gone?token=t2")).await.unwrap_err();
        assert!(err.contains("410"), "{err}");
        let err = confirmer.fetch(url("/moved")).await.unwrap_err();
        assert!(err.contains("302"), "{err}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = confirmer
            .fetch(Url::parse(&format!("http://{closed}/x?token=secret")).unwrap())
            .await
            .unwrap_err();
        assert!(
            err.contains("cannot connect") && !err.contains("secret"),
            "{err}"
        );
        assert_eq!(requests.recv().await.unwrap(), "/gone?token=t2");
        assert_eq!(requests.recv().await.unwrap(), "/moved?");
        assert!(
            requests.try_recv().is_err(),
            "the redirect was not followed"
        );
    }
}
