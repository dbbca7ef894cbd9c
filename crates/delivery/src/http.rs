//! The HTTP side of every HTTP channel: one `reqwest` client (a connection pool per host, no
//! redirects followed), at most `max_in_flight_per_destination` requests in flight per
//! destination, a timeout per request, and the classification of what came back.
//!
//! A channel builds its request with [`Http::request`] and hands it to [`Http::send`], which
//! waits for a slot at the destination (scheme, host, port), sends, and reads the answer
//! (bounded) into a [`Reply`] — whatever its status. No answer at all becomes a [`Failure`]:
//! 904 (connection) or 905 (timeout), both retryable. The channel then decides what the
//! answer means; for the usual case [`Reply::failure`] turns a non-2xx status into a failure
//! carrying that status: 408, 425, 429 and 5xx retryable (after `Retry-After` when given), the
//! rest permanent.
//!
//! A circuit breaker per destination keeps a dead one from costing everyone: after
//! `circuit_failure_threshold` failures in a row (no answer, 5xx, 429) the circuit opens and
//! attempts fail at once with 908, retryable when the cooldown ends; then one probe request is
//! let through — success closes the circuit, failure opens it again.
//!
//! URLs of Slack, Teams and many webhooks carry their credentials in the path or query, so no
//! reason and no log line shows more of a URL than [`redact`] does: `scheme://host[:port]/…`.

use crate::channels::ChannelSettings;
use crate::failure::{Code, Failure};
use crate::outbound::{OutboundPolicy, PolicyResolver, Refused};
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, RequestBuilder, StatusCode, Url};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most of an answer's body that is read; the rest is dropped.
const MAX_BODY: usize = 64 * 1024;
/// The most of an answer's body quoted in a failure reason.
const MAX_QUOTED: usize = 300;

pub struct Http {
    /// Where requests may go; the clients resolve names through it.
    outbound: Arc<OutboundPolicy>,
    client: Client,
    /// For actions with `sslTrustAll`: accepts any certificate.
    trusting: Client,
    timeout: Duration,
    per_destination: usize,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    circuits: Mutex<HashMap<String, Circuit>>,
    failure_threshold: u32,
    cooldown: Duration,
}

/// The health of one destination, as its circuit sees it.
#[derive(Debug, Default, Clone)]
struct Circuit {
    consecutive_failures: u32,
    /// Open until this instant; after it, one probe may go.
    open_until: Option<tokio::time::Instant>,
    probing: bool,
}

/// A circuit's state, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    /// The cooldown is over: the next request is a probe.
    HalfOpen,
}

/// An answer, read whole (up to 64 KiB).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The destination, redacted, for reasons.
    pub destination: String,
}

impl Http {
    pub fn new(settings: &ChannelSettings) -> Self {
        let outbound = Arc::new(OutboundPolicy::new(settings.outbound_allow.clone()));
        let build = |trust_all: bool| {
            Client::builder()
                .user_agent(concat!("tocsin/", env!("CARGO_PKG_VERSION")))
                .dns_resolver(Arc::new(PolicyResolver {
                    policy: Arc::clone(&outbound),
                }))
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(settings.max_in_flight_per_destination)
                .pool_idle_timeout(Duration::from_secs(90))
                .danger_accept_invalid_certs(trust_all)
                .build()
                .expect("the HTTP client's TLS backend initializes")
        };
        Http {
            client: build(false),
            trusting: build(true),
            timeout: Duration::from_millis(settings.request_timeout_ms),
            per_destination: settings.max_in_flight_per_destination.max(1),
            destinations: Mutex::new(HashMap::new()),
            circuits: Mutex::new(HashMap::new()),
            failure_threshold: settings.circuit_failure_threshold.max(1),
            cooldown: Duration::from_millis(settings.circuit_cooldown_ms),
            outbound,
        }
    }

    /// Where actions may send requests.
    pub fn outbound(&self) -> &OutboundPolicy {
        &self.outbound
    }

    /// The address to connect to for `host` (a name or an address) that the outbound policy
    /// permits, for channels that connect by other means than this client (SMTP).
    pub async fn permitted_address(&self, host: &str, port: u16) -> Result<IpAddr, Failure> {
        let refused = |why: String| {
            Failure::bad_action(format!(
                "{host}:{port}: refused by the outbound policy: {why}"
            ))
        };
        if let Ok(address) = host.parse::<IpAddr>() {
            self.outbound.check_host(host).map_err(refused)?;
            return Ok(address);
        }
        let resolved = tokio::net::lookup_host((host, port)).await.map_err(|e| {
            Failure::transient(
                Code::Connection,
                format!("{host}:{port}: cannot resolve: {e}"),
            )
        })?;
        let permitted = self.outbound.permitted(host, resolved).map_err(refused)?;
        permitted.first().map(|a| a.ip()).ok_or_else(|| {
            Failure::transient(
                Code::Connection,
                format!("{host}:{port}: resolves to no address"),
            )
        })
    }

    /// Every destination's circuit state, keyed by `scheme://host:port`.
    pub fn circuit_states(&self) -> Vec<(String, CircuitState)> {
        let now = tokio::time::Instant::now();
        self.circuits
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(key, circuit)| {
                let state = match circuit.open_until {
                    None => CircuitState::Closed,
                    Some(until) if until > now => CircuitState::Open,
                    Some(_) => CircuitState::HalfOpen,
                };
                (key.clone(), state)
            })
            .collect()
    }

    /// Lets a request to `key` go, or fails it at once while the circuit is open.
    fn admit(&self, key: &str, shown: &str) -> Result<(), Failure> {
        let now = tokio::time::Instant::now();
        let mut circuits = self.circuits.lock().expect("not poisoned");
        let circuit = circuits.entry(key.to_owned()).or_default();
        let Some(until) = circuit.open_until else {
            return Ok(());
        };
        let wait = if until > now {
            until - now
        } else if !circuit.probing {
            circuit.probing = true;
            return Ok(());
        } else {
            // A probe is out: wait for its verdict.
            self.cooldown.min(Duration::from_secs(1))
        };
        Err(Failure::transient_after(
            Code::CircuitOpen,
            format!(
                "{shown}: circuit open after {} failures in a row; next probe in {} ms",
                circuit.consecutive_failures,
                wait.as_millis()
            ),
            Some(wait),
        ))
    }

    /// Tells the circuit of `key` whether the destination answered sanely.
    fn observe(&self, key: &str, healthy: bool) {
        let mut circuits = self.circuits.lock().expect("not poisoned");
        let circuit = circuits.entry(key.to_owned()).or_default();
        if healthy {
            *circuit = Circuit::default();
            return;
        }
        circuit.consecutive_failures += 1;
        if circuit.probing || circuit.consecutive_failures >= self.failure_threshold {
            if circuit.open_until.is_none() || circuit.probing {
                tracing::warn!(
                    destination = key,
                    failures = circuit.consecutive_failures,
                    "circuit opened"
                );
            }
            circuit.open_until = Some(tokio::time::Instant::now() + self.cooldown);
            circuit.probing = false;
        }
    }

    /// The default time an answer may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Starts a request; `trust_all` skips certificate checks (the `sslTrustAll` property).
    pub fn request(&self, method: Method, url: Url, trust_all: bool) -> RequestBuilder {
        let client = if trust_all {
            &self.trusting
        } else {
            &self.client
        };
        client.request(method, url)
    }

    /// POSTs `payload` as JSON to `url`: the answer when it is a success, else its failure.
    pub async fn post_json(&self, url: Url, payload: &serde_json::Value) -> Result<Reply, Failure> {
        let reply = self
            .send(self.request(Method::POST, url, false).json(payload))
            .await?;
        if reply.is_success() {
            Ok(reply)
        } else {
            Err(reply.failure(&reply.quote()))
        }
    }

    /// Sends `request` once its destination has a free slot, and reads the answer. A timeout
    /// set on the request replaces the default; it bounds both the wait for a slot and the
    /// exchange.
    pub async fn send(&self, request: RequestBuilder) -> Result<Reply, Failure> {
        let (client, request) = request.build_split();
        let mut request = request.map_err(|e| {
            Failure::bad_action(format!(
                "cannot build the request: {}",
                chain(&e.without_url())
            ))
        })?;
        let url = request.url();
        let destination = redact(url);
        if let Some(host) = url.host_str() {
            self.outbound.check_host(host).map_err(|why| {
                Failure::bad_action(format!(
                    "{destination}: refused by the outbound policy: {why}"
                ))
            })?;
        }
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        self.admit(&key, &destination)?;
        let timeout = *request.timeout_mut().get_or_insert(self.timeout);
        let started = tokio::time::Instant::now();
        let _slot = self.reserve(&key, &destination, timeout).await?;
        *request.timeout_mut() = Some(timeout.saturating_sub(started.elapsed()));
        let no_answer = |e: reqwest::Error| {
            if let Some(refused) = refusal(&e) {
                Failure::bad_action(format!("{destination}: {refused}"))
            } else if e.is_timeout() {
                Failure::transient(
                    Code::Timeout,
                    format!("{destination}: no answer within {} ms", timeout.as_millis()),
                )
            } else {
                Failure::transient(
                    Code::Connection,
                    format!("{destination}: {}", chain(&e.without_url())),
                )
            }
        };
        let mut response = match client.execute(request).await {
            Ok(response) => response,
            Err(e) => {
                // A refusal is Tocsin's, not the destination's failure.
                if refusal(&e).is_none() {
                    self.observe(&key, false);
                }
                return Err(no_answer(e));
            }
        };
        let status = response.status();
        self.observe(
            &key,
            !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS),
        );
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(no_answer)? {
            let room = MAX_BODY.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
        Ok(Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body,
            destination,
        })
    }

    /// Waits up to `timeout` for one of the slots of destination `key` (`scheme://host:port`;
    /// `shown` is how reasons name it). Also for channels that do not speak HTTP (SMTP).
    pub async fn reserve(
        &self,
        key: &str,
        shown: &str,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, Failure> {
        let slots = Arc::clone(
            self.destinations
                .lock()
                .expect("not poisoned")
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_destination))),
        );
        let slot = tokio::time::timeout(timeout, slots.acquire_owned())
            .await
            .map_err(|_| {
                Failure::transient(
                    Code::Timeout,
                    format!(
                        "{shown}: no free slot within {} ms ({} requests already in flight)",
                        timeout.as_millis(),
                        self.per_destination
                    ),
                )
            })?;
        Ok(slot.expect("destination semaphores are never closed"))
    }
}

impl Reply {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The start of the body, on one line, for a reason.
    pub fn quote(&self) -> String {
        let text = self.text();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        crate::templates::limit(&text, MAX_QUOTED)
    }

    /// `Retry-After` as a duration: delay-seconds or an HTTP date.
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self
            .headers
            .get(reqwest::header::RETRY_AFTER)?
            .to_str()
            .ok()?;
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        let at = httpdate::parse_http_date(value).ok()?;
        Some(at.duration_since(SystemTime::now()).unwrap_or_default())
    }

    /// The usual reading of a status that is not a success: the status is the code; 408, 425,
    /// 429 and 5xx are worth retrying (after `Retry-After` if given), the rest are not (a 3xx
    /// included: redirects are not followed). `detail` says what the destination said.
    pub fn failure(&self, detail: &str) -> Failure {
        let reason = if detail.is_empty() {
            format!("{} answered {}", self.destination, self.status)
        } else {
            format!("{} answered {}: {detail}", self.destination, self.status)
        };
        let code = Code::Http(self.status.as_u16());
        match self.status.as_u16() {
            408 | 425 | 429 | 500..=599 => {
                Failure::transient_after(code, reason, self.retry_after())
            }
            _ => Failure::permanent(code, reason),
        }
    }
}

/// `scheme://host[:port]/…`: enough to tell destinations apart, never a path or a query,
/// where tokens live.
pub fn redact(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

/// An error and its causes, `: `-joined (reqwest's own message is only the outermost).
/// The outbound policy's refusal at connect time, if that is what `error` comes from.
fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = cause.source();
    }
    None
}

pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Retry;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn http(per_destination: usize, timeout_ms: u64) -> Http {
        Http::new(&ChannelSettings {
            max_in_flight_per_destination: per_destination,
            request_timeout_ms: timeout_ms,
            // These tests fail on purpose, often: keep the circuit out of their way.
            circuit_failure_threshold: 1000,
            outbound_allow: crate::channels::tests::loopback(),
            ..ChannelSettings::default()
        })
    }

    #[tokio::test]
    async fn a_failing_destination_opens_its_circuit_and_a_probe_closes_it() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(4)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        let http = Http::new(&ChannelSettings {
            circuit_failure_threshold: 3,
            circuit_cooldown_ms: 300,
            outbound_allow: crate::channels::tests::loopback(),
            ..ChannelSettings::default()
        });
        let url = Url::parse(&format!("{}/hook", server.uri())).unwrap();
        let send = || http.send(http.request(Method::POST, url.clone(), false));
        for _ in 0..3 {
            assert_eq!(send().await.unwrap().status, 503);
        }
        let refused = send().await.unwrap_err();
        assert_eq!(refused.code, Code::CircuitOpen, "{}", refused.reason);
        assert!(
            refused.reason.contains("circuit open after 3 failures"),
            "{}",
            refused.reason
        );
        assert!(matches!(refused.retry, Retry::After(wait) if wait <= Duration::from_millis(300)));
        assert_eq!(
            server.received_requests().await.unwrap().len(),
            3,
            "no request while open"
        );
        assert_eq!(http.circuit_states()[0].1, CircuitState::Open);

        tokio::time::sleep(Duration::from_millis(320)).await;
        assert_eq!(http.circuit_states()[0].1, CircuitState::HalfOpen);
        assert_eq!(
            send().await.unwrap().status,
            503,
            "the probe goes out, fails: open again"
        );
        assert_eq!(send().await.unwrap_err().code, Code::CircuitOpen);
        tokio::time::sleep(Duration::from_millis(320)).await;
        assert_eq!(send().await.unwrap().status, 200, "the probe succeeds");
        assert_eq!(http.circuit_states()[0].1, CircuitState::Closed);
        assert_eq!(send().await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn the_outbound_policy_refuses_at_connect_time_and_no_request_leaves() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        let strict = Http::new(&ChannelSettings::default());
        let port = server.address().port();
        for (url, refused_because) in [
            (
                format!("http://127.0.0.1:{port}/hook"),
                "127.0.0.1 is a loopback",
            ),
            // A name is checked on what it resolves to when the request is made.
            (
                format!("http://localhost:{port}/hook"),
                "localhost is a loopback",
            ),
        ] {
            let url = Url::parse(&url).unwrap();
            let refused = strict
                .send(strict.request(Method::POST, url, false))
                .await
                .unwrap_err();
            assert_eq!(refused.code, Code::BadAction, "{}", refused.reason);
            assert_eq!(refused.retry, Retry::Never);
            assert!(
                refused.reason.contains("refused by the outbound policy")
                    && refused.reason.contains(refused_because),
                "{}",
                refused.reason
            );
        }
        assert!(server.received_requests().await.unwrap().is_empty());
        assert!(
            strict
                .circuit_states()
                .iter()
                .all(|(_, s)| *s == CircuitState::Closed),
            "a refusal is not the destination's failure"
        );
        let refused = strict.permitted_address("localhost", 25).await.unwrap_err();
        assert!(refused.reason.contains("loopback"), "{}", refused.reason);
        assert_eq!(
            http(1, 1000)
                .permitted_address("localhost", 25)
                .await
                .unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
    }

    #[test]
    fn redaction_keeps_only_scheme_host_and_port() {
        let url = Url::parse("https://hooks.slack.com/services/T0/B0/secret?x=1").unwrap();
        assert_eq!(redact(&url), "https://hooks.slack.com/…");
        let url = Url::parse("http://user:pw@127.0.0.1:8080/a").unwrap();
        assert_eq!(redact(&url), "http://127.0.0.1:8080/…");
    }

    #[tokio::test]
    async fn statuses_are_classified_and_retry_after_honoured() {
        let server = MockServer::start().await;
        for (route, status, header) in [
            ("/throttled", 429, Some("7")),
            ("/down", 503, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            ("/gone", 410, None),
            ("/moved", 301, None),
            ("/ok", 202, None),
        ] {
            let mut answer = ResponseTemplate::new(status).set_body_string("no_service\n");
            if let Some(value) = header {
                answer = answer.insert_header("retry-after", value);
            }
            Mock::given(path(route))
                .respond_with(answer)
                .mount(&server)
                .await;
        }
        let http = http(2, 5000);
        let call = |route: &str| {
            let url = Url::parse(&format!("{}{route}?token=secret", server.uri())).unwrap();
            http.send(http.request(Method::POST, url, false))
        };

        let throttled = call("/throttled").await.unwrap();
        let failure = throttled.failure(&throttled.quote());
        assert_eq!(failure.code, Code::Http(429));
        assert_eq!(failure.retry, Retry::After(Duration::from_secs(7)));
        assert!(
            failure
                .reason
                .ends_with("answered 429 Too Many Requests: no_service"),
            "{}",
            failure.reason
        );
        assert!(!failure.reason.contains("secret") && !failure.reason.contains("/throttled"));

        let down = call("/down").await.unwrap();
        assert_eq!(
            down.failure("").retry,
            Retry::After(Duration::ZERO),
            "a past date: now"
        );
        assert_eq!(call("/gone").await.unwrap().failure("").retry, Retry::Never);
        let moved = call("/moved").await.unwrap().failure("");
        assert_eq!(
            (moved.code, moved.retry),
            (Code::Http(301), Retry::Never),
            "redirects are not followed"
        );
        assert!(call("/ok").await.unwrap().is_success());
    }

    #[tokio::test]
    async fn no_answer_is_a_retryable_connection_or_timeout_failure() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let http = http(2, 300);
        let url = Url::parse(&format!("http://127.0.0.1:{port}/hook/secret")).unwrap();
        let failure = http
            .send(http.request(Method::POST, url, false))
            .await
            .unwrap_err();
        assert_eq!(failure.code, Code::Connection);
        assert_eq!(failure.retry, Retry::OnSchedule, "worth retrying");
        assert!(!failure.reason.contains("secret"), "{}", failure.reason);

        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
            .mount(&server)
            .await;
        let url = Url::parse(&format!("{}/slow", server.uri())).unwrap();
        let failure = http
            .send(http.request(Method::POST, url, false))
            .await
            .unwrap_err();
        assert_eq!(
            (failure.code, failure.retry),
            (Code::Timeout, Retry::OnSchedule)
        );
    }

    #[tokio::test]
    async fn one_slow_destination_does_not_hold_up_another() {
        let slow = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(1)))
            .mount(&slow)
            .await;
        let fast = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&fast)
            .await;
        let http = Arc::new(http(2, 5000));
        let started = std::time::Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let http = Arc::clone(&http);
            let url = Url::parse(&slow.uri()).unwrap();
            calls.spawn(async move { http.send(http.request(Method::POST, url, false)).await });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fast_started = std::time::Instant::now();
        let url = Url::parse(&fast.uri()).unwrap();
        http.send(http.request(Method::POST, url, false))
            .await
            .unwrap();
        assert!(
            fast_started.elapsed() < Duration::from_millis(700),
            "the fast destination waited for a slot of the slow one"
        );
        while let Some(call) = calls.join_next().await {
            call.unwrap().unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "4 slow calls, 2 at a time, 1 s each: two rounds"
        );
        let saturated = Http::new(&ChannelSettings {
            max_in_flight_per_destination: 1,
            request_timeout_ms: 200,
            outbound_allow: crate::channels::tests::loopback(),
            ..ChannelSettings::default()
        });
        let saturated = Arc::new(saturated);
        let first = {
            let http = Arc::clone(&saturated);
            let url = Url::parse(&slow.uri()).unwrap();
            // This one may take longer than the default: it holds the only slot meanwhile.
            let request = http
                .request(Method::POST, url, false)
                .timeout(Duration::from_secs(2));
            tokio::spawn(async move { http.send(request).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let url = Url::parse(&slow.uri()).unwrap();
        let waited = saturated
            .send(saturated.request(Method::POST, url, false))
            .await
            .unwrap_err();
        assert_eq!(waited.code, Code::Timeout);
        assert!(waited.reason.contains("no free slot"), "{}", waited.reason);
        assert!(first.await.unwrap().unwrap().is_success());
    }
}
