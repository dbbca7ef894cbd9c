//! The outbound policy: which addresses actions may send requests to.
//!
//! Whoever may configure actions could otherwise make Tocsin call into its own network — the
//! cloud's metadata service at `169.254.169.254`, an admin port on loopback, a database on a
//! private address. So by default an action may not reach a loopback, private, link-local
//! (metadata), shared (carrier NAT), unspecified or broadcast address, nor their IPv6
//! counterparts (unique local, link-local, IPv4-mapped and NAT64 forms of the above), nor the
//! names `localhost`, `*.localhost` and `metadata.google.internal`.
//!
//! The policy is checked twice. When an action is saved, each URL property is checked
//! ([`OutboundPolicy::check_url`]): an address or a forbidden name is refused then, 400 naming
//! the property. When a request is made, again on what the name resolves to *now*
//! ([`PolicyResolver`], the HTTP client's resolver) — a DNS answer can change after the action
//! was saved — and on an address literal ([`OutboundPolicy::check_host`]); a refusal then is a
//! permanent 906 naming the address, recorded as undelivered.
//!
//! `[channels] outbound_allow` lists what a site does need: networks (`10.20.0.0/16`), single
//! addresses, host names and `*.domain` patterns. A name on the list is trusted whatever it
//! resolves to.

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// One entry of `outbound_allow`: a network (an address is a network of one) or a host name,
/// possibly `*.domain` for every name under `domain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Allowed {
    Network(IpNet),
    Host(String),
}

impl TryFrom<String> for Allowed {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let entry = text.trim();
        if let Ok(network) = entry.parse::<IpNet>() {
            return Ok(Allowed::Network(network));
        }
        if let Ok(address) = entry.parse::<IpAddr>() {
            return Ok(Allowed::Network(IpNet::from(address)));
        }
        let name = entry.strip_prefix("*.").unwrap_or(entry);
        let valid_name = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid_name || entry.contains('/') {
            return Err(format!(
                "outbound_allow entry `{text}` is neither a network (10.0.0.0/8), an address, \
                 a host name nor *.domain"
            ));
        }
        Ok(Allowed::Host(entry.to_ascii_lowercase()))
    }
}

impl From<Allowed> for String {
    fn from(allowed: Allowed) -> String {
        match allowed {
            Allowed::Network(network) => network.to_string(),
            Allowed::Host(host) => host,
        }
    }
}

/// Where actions may send requests: everywhere but the forbidden ranges, and there only what
/// is allowed.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allowed: Vec<Allowed>,
}

impl OutboundPolicy {
    pub fn new(allowed: Vec<Allowed>) -> Self {
        OutboundPolicy { allowed }
    }

    /// Checks a URL an action is saved with: its host, when it is an address or a forbidden
    /// name. Other names are checked on what they resolve to when a request is made.
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        match url.host() {
            None => Ok(()),
            Some(url::Host::Ipv4(address)) => self.check_address(IpAddr::V4(address)),
            Some(url::Host::Ipv6(address)) => self.check_address(IpAddr::V6(address)),
            Some(url::Host::Domain(name)) => self.check_name(name),
        }
    }

    /// Checks the host of a request about to be made: `host_str` of its URL (a bracketed IPv6
    /// address or a name, which URLs keep in lower case) or an address. Allocates nothing
    /// unless it refuses: it runs on every request.
    pub fn check_host(&self, host: &str) -> Result<(), String> {
        match host.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(address) => self.check_address(address),
            Err(_) => self.check_name(host),
        }
    }

    /// `name` in lower case, as URLs keep host names.
    fn check_name(&self, name: &str) -> Result<(), String> {
        let name = name.trim_end_matches('.');
        if self.name_allowed(name) {
            return Ok(());
        }
        let forbidden = if name == "localhost" || name.ends_with(".localhost") {
            Some("loopback")
        } else if name == "metadata.google.internal" {
            Some("cloud metadata")
        } else {
            None
        };
        match forbidden {
            Some(why) => Err(refusal(name, why)),
            None => Ok(()),
        }
    }

    fn name_allowed(&self, name: &str) -> bool {
        self.allowed.iter().any(|allowed| match allowed {
            Allowed::Host(pattern) => match pattern.strip_prefix("*.") {
                Some(domain) => name
                    .strip_suffix(domain)
                    .is_some_and(|rest| rest.ends_with('.')),
                None => pattern == name,
            },
            Allowed::Network(_) => false,
        })
    }

    fn check_address(&self, address: IpAddr) -> Result<(), String> {
        let allowed = self.allowed.iter().any(|allowed| match allowed {
            Allowed::Network(network) => network.contains(&address),
            Allowed::Host(_) => false,
        });
        match forbidden(address) {
            Some(why) if !allowed => Err(refusal(&address.to_string(), why)),
            _ => Ok(()),
        }
    }

    /// The addresses `name` (in lower case) resolves to that requests may go to, or why none
    /// may.
    pub(crate) fn permitted(
        &self,
        name: &str,
        resolved: impl Iterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, String> {
        let resolved: Vec<SocketAddr> = resolved.collect();
        if self.name_allowed(name.trim_end_matches('.')) {
            return Ok(resolved);
        }
        let mut refused = None;
        let permitted: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|address| match self.check_address(address.ip()) {
                Ok(()) => true,
                Err(why) => {
                    refused.get_or_insert(why);
                    false
                }
            })
            .collect();
        match (permitted.is_empty(), refused) {
            (true, Some(why)) => Err(format!("`{name}` resolves to {why}")),
            _ => Ok(permitted),
        }
    }
}

fn refusal(what: &str, why: &str) -> String {
    format!(
        "{what} is a {why} address, which actions may not reach; add it to \
         [channels] outbound_allow if this site needs it"
    )
}

/// Why requests may not go to `address` by default, if they may not.
fn forbidden(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [first, second, ..] = address.octets();
    if address.is_loopback() {
        Some("loopback")
    } else if address.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if address.is_private() {
        Some("private")
    } else if first == 100 && (64..128).contains(&second) {
        Some("shared (carrier NAT)")
    } else if first == 0 {
        Some("unspecified")
    } else if address.is_broadcast() || address.is_multicast() {
        Some("broadcast or multicast")
    } else {
        None
    }
}

fn forbidden_v6(address: Ipv6Addr) -> Option<&'static str> {
    let segments = address.segments();
    if let Some(v4) = address.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., high, low] = segments;
        return forbidden_v4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
    }
    if address.is_loopback() {
        Some("loopback")
    } else if address.is_unspecified() {
        Some("unspecified")
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if segments[0] & 0xfe00 == 0xfc00 {
        Some("unique local (private)")
    } else if address.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

/// The HTTP client's resolver: the system's answer, less the addresses the policy forbids.
pub struct PolicyResolver {
    pub policy: Arc<OutboundPolicy>,
}

/// A request refused by the outbound policy at connect time; the HTTP layer recognises it in
/// the error chain.
#[derive(Debug, thiserror::Error)]
#[error("refused by the outbound policy: {0}")]
pub struct Refused(pub String);

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str();
            let resolved = tokio::net::lookup_host((host, 0)).await?;
            let permitted = policy.permitted(host, resolved).map_err(Refused)?;
            let addresses: Addrs = Box::new(permitted.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(
            allowed
                .iter()
                .map(|a| Allowed::try_from(a.to_string()).unwrap())
                .collect(),
        )
    }

    fn check(policy: &OutboundPolicy, url: &str) -> Result<(), String> {
        policy.check_url(&Url::parse(url).unwrap())
    }

    #[test]
    fn internal_addresses_and_names_are_refused_by_default() {
        let default = OutboundPolicy::default();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:8080/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://localhost:9000/",
            "http://api.localhost/",
            "http://metadata.google.internal/computeMetadata/v1/",
        ] {
            let refused = check(&default, url).expect_err(url);
            assert!(refused.contains("outbound_allow"), "{url}: {refused}");
        }
        for url in [
            "https://hooks.slack.com/services/T/B/x",
            "https://8.8.8.8/",
            "https://[2001:4860::8888]/",
            "https://172.32.0.1/",
        ] {
            check(&default, url).expect(url);
        }
    }

    #[test]
    fn the_allow_list_opens_networks_and_names() {
        let site = policy(&["127.0.0.0/8", "10.20.0.5", "*.corp.example", "localhost"]);
        check(&site, "http://127.0.0.1:8080/").unwrap();
        check(&site, "http://10.20.0.5/").unwrap();
        check(&site, "http://localhost/").unwrap();
        check(&site, "http://10.20.0.6/").unwrap_err();
        check(&site, "http://192.168.0.1/").unwrap_err();
        assert!(site.name_allowed("hooks.corp.example"));
        assert!(!site.name_allowed("corp.example.evil"));
        assert!(!site.name_allowed("xcorp.example"));
        site.check_host("[::1]").unwrap_err();
        site.check_host("127.0.0.2").unwrap();
    }

    #[test]
    fn resolved_addresses_are_filtered_and_a_name_with_none_left_is_refused() {
        let default = OutboundPolicy::default();
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 0);
        let mixed = default
            .permitted(
                "mixed.example",
                [at("10.0.0.1"), at("93.184.216.34")].into_iter(),
            )
            .unwrap();
        assert_eq!(mixed, [at("93.184.216.34")]);
        let internal = default
            .permitted("internal.example", [at("10.0.0.1")].into_iter())
            .unwrap_err();
        assert!(
            internal.starts_with("`internal.example` resolves to 10.0.0.1 is a private"),
            "{internal}"
        );
        let trusted = policy(&["internal.example"]);
        assert_eq!(
            trusted
                .permitted("internal.example", [at("10.0.0.1")].into_iter())
                .unwrap(),
            [at("10.0.0.1")]
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
        let resolver = PolicyResolver {
            policy: Arc::new(OutboundPolicy::default()),
        };
        let error = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addresses) => panic!("resolved to {:?}", addresses.collect::<Vec<_>>()),
            Err(error) => error,
        };
        assert!(error.downcast_ref::<Refused>().is_some(), "{error}");
    }

    #[test]
    fn entries_that_are_neither_networks_nor_names_are_refused() {
        for bad in ["10.0.0.0/33", "http://x", "a b", "", "*."] {
            Allowed::try_from(bad.to_string()).expect_err(bad);
        }
        assert_eq!(
            String::from(Allowed::try_from(" Hooks.Example ".to_string()).unwrap()),
            "hooks.example"
        );
    }
}
