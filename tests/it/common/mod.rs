//! Test harness: runs the real `tocsin` binary on a free loopback port with its own data
//! directory, on either bus backend, and talks to it over real HTTP.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Rabbitmq,
}

pub const BACKENDS: [Backend; 2] = [Backend::Embedded, Backend::Rabbitmq];

pub fn amqp_uri() -> String {
    std::env::var("TOCSIN_TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A routing configuration: events of type `eventType` go to a STORE action `to-store`, events
/// of type `Unsupported` to a webhook whose destination refuses connections (one attempt).
pub fn store_configuration(event_type: &str) -> Value {
    json!({
        "actions": [
            {"name": "to-store", "type": "STORE", "state": "ENABLED"},
            {"name": "to-nowhere", "type": "WEB_HOOK", "state": "ENABLED", "properties": {"destination": format!("http://{}/refused", refusing_address()), "retryMaxAttempts": "1"}}
        ],
        "conditions": [
            {"name": "stored-type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": event_type},
            {"name": "unsupported-type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "Unsupported"}
        ],
        "subscriptions": [
            {"name": "store-it", "state": "ENABLED", "conditions": ["stored-type"], "actions": ["to-store"]},
            {"name": "cannot-deliver", "state": "ENABLED", "conditions": ["unsupported-type"], "actions": ["to-nowhere"]}
        ]
    })
}

pub fn event(event_type: &str, source_event_id: &str) -> Value {
    json!({
        "eventType": event_type,
        "resource": {"resourceName": "web-1", "resourceType": "vm", "resourceInstance": "i-1", "tags": {"zone": "a"}},
        "severity": "WARNING",
        "category": "ALERT",
        "subject": "CPU above 90%",
        "body": "CPU has been above 90% for 5 minutes",
        "priority": 7,
        "eventTimestamp": 1_700_000_000,
        "tags": {"ans:sourceEventId": source_event_id, "ans:correlationId": format!("corr-{source_event_id}")}
    })
}

pub struct Tocsin {
    child: Option<Child>,
    pub backend: Backend,
    /// `http` or `https`.
    scheme: &'static str,
    pub base: String,
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
    prefix: String,
    env: Vec<(String, String)>,
    pub user: String,
    pub password: String,
    pub http: reqwest::Client,
    /// This process's start made the broker topology its prefix names (a sibling's did not):
    /// dropping it removes that topology, unless `shutdown` did already.
    owns_topology: bool,
}

/// A loopback address where a connection is refused: the port is bound by this test process
/// for its whole life but never listened on, so nothing else can take it (a fixed "nobody
/// listens there" port, or one bound and let go, can be taken by anything).
pub fn refusing_address() -> std::net::SocketAddr {
    static HELD: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    let address = HELD.get_or_init(|| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = socket.local_addr().unwrap();
        // Held until the process ends; bound without listening, connecting to it is refused.
        std::mem::forget(socket);
        address
    });
    *address
}

/// The address in the "Tocsin is listening" line that a process logged to `log` past `from`
/// (its own start: the file collects every start of the data directory), in either log
/// format.
pub fn listening_address(log: &Path, from: u64) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(from as usize..)?);
    let line = text.lines().find(|l| l.contains("Tocsin is listening"))?;
    let (_, rest) = line
        .split_once("address=")
        .or_else(|| line.split_once("\"address\":\""))?;
    let end = rest.find(['"', ' ']).unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// Waits for `child`, writing its log to `log` from offset `from`, to say where it listens:
/// the port is the one the OS gave it (`--listen 127.0.0.1:0`), read back.
pub async fn wait_for_listening(child: &mut Child, log: &Path, from: u64) -> String {
    let started = Instant::now();
    loop {
        if let Some(address) = listening_address(log, from) {
            return address;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "tocsin exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "tocsin does not say where it listens:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unique(label: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "tocsin-e2e-{label}-{}-{}-{n}",
        std::process::id(),
        clock::now_epoch_millis()
    )
}

impl Tocsin {
    /// Starts Tocsin with `configuration` imported at every start (`null`: none) and extra
    /// `TOCSIN_*` settings.
    pub async fn start(backend: Backend, configuration: &Value, env: &[(&str, &str)]) -> Tocsin {
        Self::start_with(
            backend,
            configuration,
            env,
            None,
            "http",
            reqwest::Client::new(),
        )
        .await
    }

    /// Like [`start`](Self::start), with `toml` as its settings file.
    pub async fn start_with_settings(
        backend: Backend,
        configuration: &Value,
        toml: &str,
        env: &[(&str, &str)],
    ) -> Tocsin {
        let http = reqwest::Client::new();
        Self::start_with(backend, configuration, env, Some(toml), "http", http).await
    }

    /// Like [`start`](Self::start), talking `scheme` through `http` (HTTPS: a client that
    /// trusts the test's certificate).
    pub async fn start_with_client(
        backend: Backend,
        configuration: &Value,
        env: &[(&str, &str)],
        scheme: &'static str,
        http: reqwest::Client,
    ) -> Tocsin {
        Self::start_with(backend, configuration, env, None, scheme, http).await
    }

    async fn start_with(
        backend: Backend,
        configuration: &Value,
        env: &[(&str, &str)],
        settings: Option<&str>,
        scheme: &'static str,
        http: reqwest::Client,
    ) -> Tocsin {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // The stand-ins listen on loopback, which the outbound policy forbids by default.
        if !env.iter().any(|(k, _)| k == OUTBOUND_ALLOW) {
            env.push((OUTBOUND_ALLOW.into(), "127.0.0.0/8".into()));
        }
        if let Some(toml) = settings {
            let file = dir.path().join("tocsin.toml");
            std::fs::write(&file, toml).unwrap();
            env.push(("TOCSIN_SETTINGS".into(), file.display().to_string()));
        }
        if !configuration.is_null() {
            let routing = dir.path().join("routing.json");
            std::fs::write(&routing, configuration.to_string()).unwrap();
            env.push(("TOCSIN_CONFIG_IMPORT".into(), routing.display().to_string()));
        }
        let prefix = unique("bus");
        if backend == Backend::Rabbitmq {
            env.push(("TOCSIN_BUS_BACKEND".into(), "rabbitmq".into()));
            // A test may name its own way to the broker (a BrokerProxy).
            if !env.iter().any(|(key, _)| key == "TOCSIN_BUS_URL") {
                env.push(("TOCSIN_BUS_URL".into(), amqp_uri()));
            }
            env.push(("TOCSIN_BUS_PREFIX".into(), prefix.clone()));
        }
        let mut tocsin = Tocsin {
            child: None,
            backend,
            scheme,
            base: String::new(),
            data_dir,
            _dir: Some(dir),
            prefix,
            env,
            user: "admin".into(),
            password: String::new(),
            http,
            owns_topology: backend == Backend::Rabbitmq,
        };
        tocsin.launch().await;
        tocsin
    }

    /// (Re)starts the process on a port the OS chooses, with the same data directory and
    /// settings.
    pub async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let from = log.metadata().unwrap().len();
        let child = tocsin_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tocsin starts");
        // Held by self at once, so that a failed start below still kills it on drop.
        let log_path = self.log_path();
        let child = self.child.insert(child);
        let address = wait_for_listening(child, &log_path, from).await;
        self.base = format!("{}://{address}", self.scheme);
        let started = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tocsin exited with {status}:\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tocsin not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Ok(credentials) =
            std::fs::read_to_string(self.data_dir.join("initial-credentials.toml"))
        {
            let parsed: toml::Table = toml::from_str(&credentials).unwrap();
            self.password = parsed["password"].as_str().unwrap().to_owned();
        }
    }

    /// Sets `TOCSIN_*` variable `name` for the next [`Tocsin::launch`].
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(key, _)| key != name);
        self.env.push((name.into(), value.into()));
    }

    /// The prefix of its names on the broker (`bus.prefix`), shared with its siblings.
    pub fn bus_prefix(&self) -> &str {
        &self.prefix
    }

    /// The address it listens on.
    pub fn listen_address(&self) -> &str {
        self.base.rsplit_once('/').unwrap().1
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.parent().unwrap().join("tocsin.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.url(path))
            .basic_auth(&self.user, Some(&self.password))
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .basic_auth(&self.user, Some(&self.password))
            .json(body)
    }

    /// Posts one event and returns the accepted event (202 asserted).
    pub async fn send(&self, event: &Value) -> Value {
        let response = self
            .post("/cf/producer/v1/resource-events", event)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    /// GETs a consumer API path and returns the JSON page (200 asserted).
    pub async fn page(&self, path: &str) -> Value {
        let response = self.get(path).send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "{path}: {}",
            response.text().await.unwrap()
        );
        response.json().await.unwrap()
    }

    /// Waits until the consumer API path reports `count` results in all.
    pub async fn wait_for_count(&self, path: &str, count: u64) -> Value {
        let started = Instant::now();
        loop {
            let page = self.page(path).await;
            let total = page["responseMetadata"]["totalResultsCount"]
                .as_u64()
                .unwrap();
            if total == count {
                return page;
            }
            assert!(total < count, "{path}: {total} results, expected {count}");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{path}: {total} results after 30 s, expected {count}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of one `/metrics` scrape (200 asserted).
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").send().await.unwrap();
        assert_eq!(response.status(), 200, "/metrics");
        response.text().await.unwrap()
    }

    /// The events this process has routed since it started, whatever the outcome.
    pub async fn routed(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .filter(|line| line.starts_with("tocsin_events_routed_total{"))
            .map(|line| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum()
    }

    /// Waits until nothing is left to do on the bus: every queue empty, in-flight messages
    /// included, no job waiting for a retry, and none held in a group for a digest. What a test has sent by then has been routed
    /// and delivered (or recorded as undelivered), so a count taken now is final — the
    /// condition a negative check waits for instead of a fixed sleep.
    pub async fn wait_until_idle(&self) {
        let started = Instant::now();
        loop {
            let text = self.metrics().await;
            let busy: Vec<&str> = text
                .lines()
                .filter(|line| {
                    line.starts_with("tocsin_queue_depth{")
                        || line.starts_with("tocsin_delivery_retry_backlog ")
                        || line.starts_with("tocsin_delivery_held ")
                })
                .filter(|line| !line.ends_with(" 0"))
                .collect();
            if busy.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "still busy after 30 s: {busy:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }

    pub fn records_db(&self) -> PathBuf {
        self.data_dir.join("records.db")
    }

    async fn delete_broker_topology(&self) {
        delete_topology(self.rabbit_settings()).await;
    }

    /// The bus settings naming this process's topology on the broker.
    fn rabbit_settings(&self) -> bus::RabbitSettings {
        bus::RabbitSettings {
            uri: amqp_uri(),
            prefix: self.prefix.clone(),
            delivery_limit: 0,
            publish_timeout: Duration::ZERO,
            delivery_partitions: self
                .env
                .iter()
                .find(|(name, _)| name == "TOCSIN_BUS_DELIVERY_PARTITIONS")
                .map_or(bus::DEFAULT_DELIVERY_PARTITIONS, |(_, n)| {
                    n.parse().unwrap()
                }),
        }
    }

    /// Another process on the same broker queues (same prefix), with its own data directory
    /// and credentials, and the same imported configuration.
    pub async fn sibling(&self) -> Tocsin {
        let dir = tempfile::tempdir().unwrap();
        let mut sibling = Tocsin {
            child: None,
            backend: self.backend,
            scheme: self.scheme,
            base: String::new(),
            data_dir: dir.path().join("data"),
            _dir: Some(dir),
            prefix: self.prefix.clone(),
            env: self.env.clone(),
            user: self.user.clone(),
            password: String::new(),
            http: reqwest::Client::new(),
            owns_topology: false,
        };
        sibling.launch().await;
        sibling
    }

    /// Stops the process and removes what it left on the shared broker.
    pub async fn shutdown(mut self) {
        self.kill();
        if self.backend == Backend::Rabbitmq {
            self.delete_broker_topology().await;
            self.owns_topology = false;
        }
    }
}

impl Drop for Tocsin {
    fn drop(&mut self) {
        self.kill();
        // A test that fails, or never calls `shutdown`, would leave its quorum queues on the
        // shared broker, a few dozen a test: hundreds of them have wedged it. `drop` cannot
        // await, so a thread with a runtime of its own removes them.
        if self.owns_topology {
            let settings = self.rabbit_settings();
            let removed = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(delete_topology(settings));
            });
            let _ = removed.join();
        }
    }
}

/// Removes the queues and exchanges `settings` name from the broker; a failure is reported,
/// not raised (the test's outcome does not depend on it).
async fn delete_topology(settings: bus::RabbitSettings) {
    if let Err(e) = settings.delete_topology().await {
        eprintln!("cannot remove the test's topology from the broker: {e}");
    }
}

/// The `tocsin` binary, logging at `info`.
pub fn tocsin_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tocsin"));
    command.env("TOCSIN_LOG", "info");
    command
}

/// Runs `tocsin ARGS` (a command that talks to a running Tocsin) against `tocsin`, as its
/// admin client; returns (success, stdout, stderr).
pub fn cli(tocsin: &Tocsin, args: &[&str]) -> (bool, String, String) {
    let output = run_to_end(
        Command::new(env!("CARGO_BIN_EXE_tocsin"))
            .args(args)
            .args(["--url", &tocsin.base, "--user", &tocsin.user])
            .env("TOCSIN_PASSWORD", &tocsin.password),
    );
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The `message` of an error answer, which must have `status` and be JSON `{"message": …}`
/// and nothing else.
pub async fn error_message(response: reqwest::Response, status: u16) -> String {
    let got = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("a {status} answer is not JSON ({e}): {text}"));
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {text}"));
    assert_eq!(body.as_object().unwrap().len(), 1, "only a message: {text}");
    message.to_owned()
}

/// Runs `command` to its end, killing it and failing the test if that takes over 20 s.
pub fn run_to_end(command: &mut Command) -> std::process::Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tocsin starts");
    let pid = child.id().to_string();
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match output.recv_timeout(Duration::from_secs(20)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("{command:?} did not end within 20 s");
        }
    }
}

/// Runs `tocsin serve` on `data_dir` with `env`, expecting it to stop by itself (a refused
/// start).
pub fn serve_to_end(data_dir: &Path, env: &[(&str, &str)]) -> std::process::Output {
    run_to_end(
        tocsin_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .envs(env.iter().copied()),
    )
}

/// Counts rows of `status` in a records file, read directly (the process may be dead). A file
/// that is missing or cannot be read fails the test: it is not "no records".
pub fn count_records(db: &Path, status: &str) -> i64 {
    use rusqlite::OpenFlags;
    let read = || -> rusqlite::Result<i64> {
        // Without SQLITE_OPEN_CREATE: a wrong path must not become an empty database.
        let conn = rusqlite::Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.query_row(
            "SELECT COUNT(*) FROM records WHERE status = ?1",
            [status],
            |r| r.get(0),
        )
    };
    read().unwrap_or_else(|e| panic!("cannot count {status} records in {}: {e}", db.display()))
}

/// One request a [`Destination`] received, and how it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: warp::http::HeaderMap,
    pub body: Value,
    pub status: u16,
}

/// How a [`Destination`] answers one request: with `status`, after holding it `hold`.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub hold: Duration,
}

type Rule = Box<dyn FnMut(&Value) -> Reply + Send>;

/// A real HTTP server on loopback standing in for a webhook destination: it answers each
/// request with the status its rule gives for the body, and keeps what it received.
pub struct Destination {
    pub url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    rule: std::sync::Arc<std::sync::Mutex<Rule>>,
    server: tokio::task::JoinHandle<()>,
}

impl Destination {
    pub async fn start(mut rule: impl FnMut(&Value) -> u16 + Send + 'static) -> Destination {
        Self::start_replying(move |body| Reply {
            status: rule(body),
            hold: Duration::ZERO,
        })
        .await
    }

    /// A slow destination: like [`start`](Self::start), but each request is held `hold` before
    /// it is answered.
    pub async fn start_holding(
        hold: Duration,
        mut rule: impl FnMut(&Value) -> u16 + Send + 'static,
    ) -> Destination {
        Self::start_replying(move |body| Reply {
            status: rule(body),
            hold,
        })
        .await
    }

    /// A destination whose rule says, for each request, both the status and how long to hold
    /// it first. A request counts as received when it arrives, so the test sees it while it is
    /// still in flight.
    pub async fn start_replying(rule: impl FnMut(&Value) -> Reply + Send + 'static) -> Destination {
        use warp::Filter;
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let rule: std::sync::Arc<std::sync::Mutex<Rule>> =
            std::sync::Arc::new(std::sync::Mutex::new(Box::new(rule)));
        let route = {
            let (received, rule) = (received.clone(), rule.clone());
            warp::any()
                .and(warp::header::headers_cloned())
                .and(warp::body::json())
                .then(move |headers, body: Value| {
                    let (received, rule) = (received.clone(), rule.clone());
                    async move {
                        let Reply { status, hold } = (rule.lock().unwrap())(&body);
                        received.lock().unwrap().push(Received {
                            at: Instant::now(),
                            headers,
                            body,
                            status,
                        });
                        if !hold.is_zero() {
                            tokio::time::sleep(hold).await;
                        }
                        warp::reply::with_status(
                            warp::reply::json(&json!({"status": status})),
                            warp::http::StatusCode::from_u16(status).unwrap(),
                        )
                    }
                })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(warp::serve(route).incoming(listener).run());
        Destination {
            url,
            received,
            rule,
            server,
        }
    }

    /// Answers every request with `status` from now on.
    pub fn answer(&self, status: u16) {
        *self.rule.lock().unwrap() = Box::new(move |_| Reply {
            status,
            hold: Duration::ZERO,
        });
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until what was received satisfies `done`.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: received {received:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A fresh schema in the tests' PostgreSQL database (the role and database `.ci/run` creates,
/// or `TOCSIN_TEST_POSTGRES_URL`): the `store.url` of processes that share it, and only them.
pub async fn postgres_schema() -> String {
    let base = postgres_url();
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base}: {e} (`.ci/run` starts it)"));
    tokio::spawn(connection);
    let schema = unique("it").replace('-', "_");
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

/// The tests' PostgreSQL database.
fn postgres_url() -> String {
    std::env::var("TOCSIN_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        "postgres://tocsin_test:tocsin_test@127.0.0.1:5432/tocsin_test".to_owned()
    })
}

/// A fresh schema like [`postgres_schema`], reached through a [`Relay`] the test can cut: the
/// `store.url` to give Tocsin, and the relay.
pub async fn relayed_postgres_schema() -> (String, Relay) {
    relayed(&postgres_schema().await, 5432).await
}

/// The variable of the outbound policy's allow-list, which [`Tocsin::start`] sets to loopback
/// unless a test sets it.
pub const OUTBOUND_ALLOW: &str = "TOCSIN_CHANNELS_OUTBOUND_ALLOW";

/// A TCP relay on loopback to `upstream` that the test can cut: what it relays goes away for
/// the process that connects through it alone (other tests share the real service) and comes
/// back. While cut, it drops the relayed connections and closes new ones at once; its port
/// stays held all along.
pub struct Relay {
    /// The address to connect to instead of `upstream`.
    pub address: std::net::SocketAddr,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    server: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
        let server = {
            let cut = cut.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if *cut.borrow() {
                        continue; // dropped: the service is gone
                    }
                    let mut cutting = cut.subscribe();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cutting.wait_for(|cut| *cut) => {}
                        }
                    });
                }
            })
        };
        Relay {
            address,
            cut,
            server,
        }
    }

    /// The service goes away: relayed connections break, new ones are closed at once.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// The service is back.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.server.abort();
    }
}

/// `url` (`scheme://[credentials@]host[:port]/path`) pointed at a [`Relay`] to where it
/// pointed (`default_port` when it names none): the URL to give Tocsin, and the relay.
async fn relayed(url: &str, default_port: u16) -> (String, Relay) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, upstream) = match authority.rsplit_once('@') {
        Some((credentials, host)) => (format!("{credentials}@"), host.to_owned()),
        None => (String::new(), authority.to_owned()),
    };
    let upstream = if upstream.contains(':') {
        upstream
    } else {
        format!("{upstream}:{default_port}")
    };
    let relay = Relay::start(upstream).await;
    let url = format!("{scheme}://{credentials}{}/{path}", relay.address);
    (url, relay)
}

/// The test broker behind a [`Relay`] the test can cut.
pub struct BrokerProxy {
    /// The AMQP URI to give Tocsin (`TOCSIN_BUS_URL`).
    pub uri: String,
    relay: Relay,
}

impl BrokerProxy {
    pub async fn start() -> BrokerProxy {
        let (uri, relay) = relayed(&amqp_uri(), 5672).await;
        BrokerProxy { uri, relay }
    }

    /// The broker goes away: relayed connections break, new ones are closed at once.
    pub fn cut(&self) {
        self.relay.cut();
    }

    /// The broker is back.
    pub fn restore(&self) {
        self.relay.restore();
    }
}

/// A stateful stand-in (`respond` keeps what it was sent and answers from it) serving every
/// request on loopback while the returned server is kept.
pub async fn stand_in(respond: impl wiremock::Respond + 'static) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(respond)
        .mount(&server)
        .await;
    server
}

/// A WEB_HOOK action to `url` with extra `properties`.
pub fn webhook(name: &str, url: &str, properties: Value) -> Value {
    let mut all = json!({"destination": url});
    all.as_object_mut()
        .unwrap()
        .extend(properties.as_object().unwrap().clone());
    json!({"name": name, "type": "WEB_HOOK", "state": "ENABLED", "properties": all})
}

/// Every event (no conditions) goes to each of `actions`.
pub fn route_everything_to(actions: Vec<Value>) -> Value {
    let names: Vec<Value> = actions.iter().map(|a| a["name"].clone()).collect();
    json!({
        "actions": actions,
        "subscriptions": [{"name": "everything", "state": "ENABLED", "conditions": [], "actions": names}]
    })
}
