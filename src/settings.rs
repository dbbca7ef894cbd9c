//! Tocsin's settings: one TOML file, every key overridable by an environment variable named
//! `TOCSIN_` + the key's path in upper case joined by `_` (`[bus] url` → `TOCSIN_BUS_URL`,
//! `data_dir` → `TOCSIN_DATA_DIR`), or by `TOCSIN_…_FILE` naming a file that holds the value.
//! Everything has a default, so no file is needed; a key or variable that names no setting is
//! an error ([`layers`]).

mod layers;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use web::Client;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP APIs listen on.
    pub listen: SocketAddr,
    /// Where Tocsin keeps its files (queue, records, generated credentials).
    pub data_dir: PathBuf,
    /// A configuration (actions, conditions, subscriptions) in the ANS import format, loaded
    /// at start; empty for none.
    pub config_import: PathBuf,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: u64,
    /// The `region` and `regionType` reported on stored events.
    pub region: String,
    pub region_type: String,
    pub bus: BusSettings,
    pub router: StageSettings,
    pub delivery: DeliverySettings,
    /// How channels treat destinations: timeouts, requests in flight per destination.
    pub channels: delivery::channels::ChannelSettings,
    pub auth: AuthSettings,
    /// The alarm sources beyond the ANS producer API.
    pub sources: SourcesSettings,
    /// `/metrics`.
    pub metrics: MetricsSettings,
    /// The configuration store (`config.db`).
    pub store: StoreSettings,
    /// Requests per client on the producer APIs.
    pub rate_limit: RateLimitSettings,
    /// HTTPS instead of plain HTTP.
    pub tls: TlsSettings,
    /// The web console at `/ui/`.
    pub console: console::ConsoleSettings,
    /// Control from chat: the Slack app, who may act (`chat::settings`).
    pub chat: chat::settings::ChatSettings,
    /// Where people reach Tocsin, for the action links in Teams cards and emails
    /// (`web::act_link`).
    pub links: web::act_link::LinkSettings,
}

/// `[store]`: where Tocsin keeps its state, and how the stored configuration is sealed at rest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite` (files in the data directory) or `postgres` (one database for every process;
    /// today the records and attempts live there).
    pub backend: store::Backend,
    /// The PostgreSQL URL, `postgres://user:password@host:5432/database`, with `postgres`.
    pub url: Secret,
    /// 32 bytes in base64 that seal the stored configuration; generated once into the data
    /// directory (`secret.key`) when empty — which `postgres` refuses: every process must read
    /// what the others sealed.
    pub secret_key: Secret,
    /// Keys that sealed it before: still opened, and re-sealed with `secret_key` at start.
    pub previous_secret_keys: Vec<Secret>,
}

impl StoreSettings {
    /// Refuses a PostgreSQL store without `secret_key`: each process would seal the shared
    /// configuration with a key generated into its own data directory, and no other process
    /// could read what it wrote.
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.backend == store::Backend::Postgres && self.secret_key.0.is_empty() {
            return Err(SettingsError::Invalid {
                origin: "store.secret_key".into(),
                message: "with `store.backend = \"postgres\"` every process reads the \
                          configuration the others sealed: set `secret_key` \
                          (TOCSIN_STORE_SECRET_KEY) to the same 32 bytes in base64 on every \
                          process, e.g. the output of `openssl rand -base64 32`"
                    .into(),
            });
        }
        Ok(())
    }
}

/// `[rate_limit]`: a token bucket per client on the producer APIs (ANS producer, OCI,
/// Alertmanager, CloudEvents), so that one runaway producer cannot starve the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Requests per second each client may make on average; 0 for no limit.
    pub per_second: f64,
    /// Requests a client may make at once after being idle (the bucket's size).
    pub burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        // Off by default: what a producer may send depends on the site (the bench alone sends
        // thousands of events per second as one client).
        RateLimitSettings {
            per_second: 0.0,
            burst: 100,
        }
    }
}

impl RateLimitSettings {
    /// The limit, if one is set.
    pub fn limit(&self) -> Result<Option<web::RateLimit>, SettingsError> {
        if self.per_second == 0.0 {
            return Ok(None);
        }
        if !(self.per_second.is_finite() && self.per_second > 0.0) || self.burst == 0 {
            return Err(SettingsError::Invalid {
                origin: "rate_limit".into(),
                message: "`per_second` must be a positive number (or 0 for no limit) and `burst` at least 1".into(),
            });
        }
        Ok(Some(web::RateLimit {
            per_second: self.per_second,
            burst: self.burst,
        }))
    }
}

/// `[tls]`: serve HTTPS with this certificate chain and key (PEM); plain HTTP when unset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsSettings {
    /// The certificate and key files, if HTTPS is set.
    pub fn files(&self) -> Result<Option<(&Path, &Path)>, SettingsError> {
        match (
            self.cert_file.as_os_str().is_empty(),
            self.key_file.as_os_str().is_empty(),
        ) {
            (true, true) => Ok(None),
            (false, false) => Ok(Some((&self.cert_file, &self.key_file))),
            _ => Err(SettingsError::Invalid {
                origin: "tls".into(),
                message: "`cert_file` and `key_file` are set together or not at all".into(),
            }),
        }
    }
}

/// `[metrics]`: who may scrape `/metrics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `/metrics` without credentials; by default it needs a client with the consumer
    /// scope (HTTP Basic or bearer), like the rest of the API.
    pub public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A durable queue in the data directory's SQLite file; nothing else to install.
    Embedded,
    /// RabbitMQ at `bus.url`.
    Rabbitmq,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    pub backend: Backend,
    /// AMQP URI of the broker, for the rabbitmq backend.
    pub url: String,
    /// Prefix of Tocsin's exchanges and queues on the broker.
    pub prefix: String,
    /// Deliveries of one message before it is dead-lettered, on either backend.
    pub delivery_limit: u32,
    /// How long an API call waits for the broker before answering 503.
    pub publish_timeout_ms: u64,
    /// Partitions of the deliveries queue on RabbitMQ, each with a single active consumer;
    /// fixed once a broker holds them (docs/src/scaling-out.md).
    pub delivery_partitions: std::num::NonZeroU16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageSettings {
    /// Messages a stage holds unacknowledged at most.
    pub prefetch: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// API clients; with none, Tocsin generates one at first start (docs/src/security.md).
    #[serde(skip_serializing)]
    pub clients: Vec<Client>,
    /// Key that signs bearer tokens; generated into the data directory when empty. Set the same
    /// value on every process that shares a broker, so their tokens are interchangeable.
    pub token_secret: Secret,
    /// Lifetime of issued bearer tokens.
    pub token_lifetime_seconds: u64,
}

// --- sources (issue 4) ---------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesSettings {
    /// How long the producer APIs remember a request's `Idempotency-Key` (and its answer) and
    /// an Alertmanager alert already published.
    pub idempotency_window_seconds: u64,
    pub oci: OciSourceSettings,
}

impl Default for SourcesSettings {
    fn default() -> Self {
        SourcesSettings {
            // A day: longer than any sender's retries, and than Alertmanager's repeat_interval
            // (4 h by default).
            idempotency_window_seconds: 24 * 3600,
            oci: OciSourceSettings::default(),
        }
    }
}

/// `[sources.oci]`: the OCI Notifications endpoint, `POST /oci/v1/notifications`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OciSourceSettings {
    /// Confirm subscriptions by fetching their confirmation URL (else a human does).
    pub auto_confirm: bool,
    /// Hosts whose confirmation URLs are fetched besides Oracle Notifications hosts: exact
    /// names or IPs, or `*.domain`.
    pub confirm_allow_hosts: Vec<String>,
    /// How long a delivered message is remembered to recognise OCI's redeliveries.
    pub dedupe_window_seconds: u64,
    /// The endpoint's own Basic credentials, for the subscription URL; when unset, API clients
    /// with the producer scope are accepted.
    pub username: String,
    pub password: Secret,
}

impl Default for OciSourceSettings {
    fn default() -> Self {
        OciSourceSettings {
            auto_confirm: true,
            confirm_allow_hosts: Vec::new(),
            // OCI retries for 2 hours by default.
            dedupe_window_seconds: 3 * 3600,
            username: String::new(),
            password: Secret::default(),
        }
    }
}

impl OciSourceSettings {
    /// The source's configuration, with `body_limit` bytes as its largest body.
    pub fn config(
        &self,
        body_limit: u64,
    ) -> Result<ingest::sources::oci::OciConfig, SettingsError> {
        use ingest::sources::oci::{confirm::ConfirmPolicy, BasicCredentials, OciConfig};
        let invalid = |message: &str| SettingsError::Invalid {
            origin: "sources.oci".into(),
            message: message.into(),
        };
        let credentials = match (self.username.is_empty(), self.password.0.is_empty()) {
            (true, true) => None,
            (false, false) if !self.username.contains(':') => Some(BasicCredentials {
                username: self.username.clone(),
                password: self.password.0.clone(),
            }),
            (false, false) => return Err(invalid("`username` must not contain `:`")),
            _ => {
                return Err(invalid(
                    "`username` and `password` are set together or not at all",
                ))
            }
        };
        Ok(OciConfig {
            body_limit,
            confirm: ConfirmPolicy {
                auto_confirm: self.auto_confirm,
                allow_hosts: self.confirm_allow_hosts.clone(),
            },
            dedupe_window: std::time::Duration::from_secs(self.dedupe_window_seconds),
            credentials,
        })
    }
}

// --- end of sources --------------------------------------------------------------------------

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            config_import: PathBuf::new(),
            body_limit_bytes: 1024 * 1024,
            region: "local".into(),
            region_type: "tocsin".into(),
            bus: BusSettings::default(),
            router: StageSettings { prefetch: 256 },
            delivery: DeliverySettings::default(),
            channels: Default::default(),
            auth: AuthSettings::default(),
            sources: SourcesSettings::default(),
            metrics: MetricsSettings::default(),
            store: StoreSettings::default(),
            rate_limit: RateLimitSettings::default(),
            tls: TlsSettings::default(),
            console: console::ConsoleSettings::default(),
            chat: Default::default(),
            links: Default::default(),
        }
    }
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            backend: Backend::Embedded,
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "tocsin".into(),
            delivery_limit: bus::DEFAULT_DELIVERY_LIMIT,
            publish_timeout_ms: 5000,
            delivery_partitions: std::num::NonZeroU16::new(bus::DEFAULT_DELIVERY_PARTITIONS)
                .expect("at least one partition"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Jobs in progress at most.
    pub prefetch: u16,
    /// Matched and undelivered records and attempts are deleted after this long.
    pub retention_hours: u64,
    /// How often retention looks for old records.
    pub retention_sweep_seconds: u64,
    /// The retry schedule (`[delivery.retry]`); an action can override it with its properties
    /// `retryMaxAttempts`, `retryInitialDelayMs` and `retryMaxDelayMs`.
    pub retry: delivery::retry::RetrySchedule,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            // Jobs wait mostly on destinations and commits, not on the CPU: many in flight
            // share each fsync (measured: 64 → 512 doubled delivered/s on the embedded bus).
            prefetch: 512,
            retention_hours: 72,
            retention_sweep_seconds: 60,
            retry: delivery::retry::RetrySchedule::default(),
        }
    }
}

impl Default for StageSettings {
    fn default() -> Self {
        StageSettings { prefetch: 64 }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            clients: Vec::new(),
            token_secret: Secret::default(),
            token_lifetime_seconds: 3600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// A string setting that must never reach a log: `Debug` shows only whether it is set.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

impl Settings {
    /// The configuration file to import at start, if one is set.
    pub fn config_import(&self) -> Option<&Path> {
        (!self.config_import.as_os_str().is_empty()).then_some(self.config_import.as_path())
    }

    /// The defaults, then the file (if any), then `TOCSIN_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let origin = file.map_or("settings".to_owned(), |p| p.display().to_string());
        let defaults = toml::Table::try_from(Settings::default()).expect("defaults serialize");
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let tree =
                    toml::from_str::<toml::Table>(&text).map_err(|e| SettingsError::Invalid {
                        origin: origin.clone(),
                        message: e.to_string(),
                    })?;
                layers::check_file_keys(&defaults, &tree, &origin)?;
                tree
            }
            None => toml::Table::new(),
        };
        layers::apply_environment(&defaults, &mut tree, env)?;
        toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| SettingsError::Invalid {
                origin,
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_example_settings_file_states_every_setting_at_its_default() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tocsin.toml");
        Settings::load(Some(&example), env(&[])).unwrap();
        let stated: toml::Table =
            toml::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
        assert_eq!(stated, toml::Table::try_from(Settings::default()).unwrap());
    }

    #[test]
    fn defaults_need_no_file() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.bus.backend, Backend::Embedded);
        assert_eq!(s.body_limit_bytes, 1024 * 1024);
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tocsin.toml");
        std::fs::write(&file, "data_dir = \"/var/lib/a\"\n[bus]\nbackend = \"rabbitmq\"\nprefix = \"p\"\n[[auth.clients]]\nname = \"ops\"\npassword = \"x\"\nscopes = [\"producer\"]\n").unwrap();
        let s = Settings::load(
            Some(&file),
            env(&[
                ("TOCSIN_DATA_DIR", "/tmp/b"),
                ("TOCSIN_BUS_URL", "amqp://h"),
                ("TOCSIN_ROUTER_PREFETCH", "7"),
                ("TOCSIN_AUTH_TOKEN_SECRET", "k"),
                ("TOCSIN_CONFIG_IMPORT", "/etc/routing.json"),
                ("TOCSIN_LOG", "debug"),
                ("TOCSIN_DELIVERY_RETRY_MAX_ATTEMPTS", "3"),
                ("TOCSIN_DELIVERY_RETRY_JITTER", "0.5"),
                ("TOCSIN_CHANNELS_CIRCUIT_COOLDOWN_MS", "1000"),
            ]),
        )
        .unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/tmp/b"));
        assert_eq!(
            (s.bus.backend, s.bus.url.as_str(), s.bus.prefix.as_str()),
            (Backend::Rabbitmq, "amqp://h", "p")
        );
        assert_eq!(s.router.prefetch, 7);
        assert_eq!(s.delivery.retry.max_attempts, 3);
        assert_eq!(s.delivery.retry.jitter, 0.5);
        assert_eq!(s.channels.circuit_cooldown_ms, 1000);
        assert_eq!(s.auth.token_secret.0, "k");
        assert_eq!(format!("{:?}", s.auth.token_secret), "<redacted>");
        assert_eq!(s.auth.clients[0].name, "ops");
        assert_eq!(s.config_import(), Some(Path::new("/etc/routing.json")));
    }

    #[test]
    fn bad_values_name_their_origin() {
        let err = Settings::load(None, env(&[("TOCSIN_ROUTER_PREFETCH", "many")])).unwrap_err();
        assert!(
            err.to_string().starts_with("TOCSIN_ROUTER_PREFETCH"),
            "{err}"
        );
        let err = Settings::load(None, env(&[("TOCSIN_BUS_BACKEND", "kafka")])).unwrap_err();
        assert!(err.to_string().contains("kafka"), "{err}");
    }

    #[test]
    fn oci_source_settings_come_from_the_file_and_the_environment() {
        let defaults = Settings::load(None, env(&[])).unwrap().sources.oci;
        let config = defaults.config(1000).unwrap();
        assert!(config.confirm.auto_confirm && config.credentials.is_none());
        assert_eq!(config.dedupe_window.as_secs(), 10_800);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tocsin.toml");
        std::fs::write(
            &file,
            "[sources.oci]\nconfirm_allow_hosts = [\"127.0.0.1\"]\nusername = \"oci\"\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&file),
            env(&[
                ("TOCSIN_SOURCES_OCI_AUTO_CONFIRM", "false"),
                ("TOCSIN_SOURCES_OCI_DEDUPE_WINDOW_SECONDS", "60"),
                ("TOCSIN_SOURCES_OCI_PASSWORD", "s3cret"),
            ]),
        )
        .unwrap();
        let config = s.sources.oci.config(1000).unwrap();
        assert!(!config.confirm.auto_confirm);
        assert_eq!(config.confirm.allow_hosts, ["127.0.0.1"]);
        assert_eq!(config.dedupe_window.as_secs(), 60);
        assert_eq!(config.credentials.unwrap().password, "s3cret");
        assert!(!format!("{:?}", s.sources.oci).contains("s3cret"));
        let half = Settings::load(Some(&file), env(&[])).unwrap().sources.oci;
        assert!(half
            .config(1000)
            .unwrap_err()
            .to_string()
            .contains("set together"));
    }

    #[test]
    fn metrics_need_credentials_unless_made_public() {
        assert!(!Settings::load(None, env(&[])).unwrap().metrics.public);
        let public = Settings::load(None, env(&[("TOCSIN_METRICS_PUBLIC", "true")])).unwrap();
        assert!(public.metrics.public);
    }

    #[test]
    fn a_misspelt_variable_is_refused_with_the_likely_one() {
        let err = Settings::load(None, env(&[("TOCSIN_BUS_URI", "amqp://h")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TOCSIN_BUS_URI: no such setting or variable; did you mean TOCSIN_BUS_URL?"
        );
        let err = Settings::load(None, env(&[("TOCSIN_NOTHING_LIKE_IT", "1")])).unwrap_err();
        assert!(
            err.to_string().contains("see examples/tocsin.toml"),
            "{err}"
        );
        let err = Settings::load(None, env(&[("TOCSIN_LOG_FROMAT", "json")])).unwrap_err();
        assert!(err.to_string().contains("TOCSIN_LOG_FORMAT?"), "{err}");
        let lists = Settings::load(
            None,
            env(&[
                (
                    "TOCSIN_SOURCES_OCI_CONFIRM_ALLOW_HOSTS",
                    "a.example, b.example",
                ),
                ("TOCSIN_CHANNELS_OUTBOUND_ALLOW", "10.0.0.0/8,hooks.corp"),
            ]),
        )
        .unwrap();
        assert_eq!(
            lists.sources.oci.confirm_allow_hosts,
            ["a.example", "b.example"]
        );
        assert_eq!(lists.channels.outbound_allow.len(), 2);
        let err = Settings::load(
            None,
            env(&[("TOCSIN_CHANNELS_OUTBOUND_ALLOW", "10.0.0.0/33")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`10.0.0.0/33`"), "{err}");
    }

    #[test]
    fn tocsins_own_variables_are_not_settings_and_pass() {
        let own = [
            ("TOCSIN_SETTINGS", "x"),
            ("TOCSIN_LOG_FORMAT", "json"),
            ("TOCSIN_URL", "http://h"),
            ("TOCSIN_USER", "u"),
            ("TOCSIN_PASSWORD", "p"),
            ("TOCSIN_TEST_AMQP_URI", "amqp://h"),
            ("OTHER_VARIABLE", "x"),
        ];
        Settings::load(None, env(&own)).unwrap();
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_with_the_likely_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tocsin.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\n[bus]\nuri = \"amqp://h\"\n",
        )
        .unwrap();
        let err = Settings::load(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("unknown setting `bus.uri`; did you mean `bus.url`?"),
            "{err}"
        );
        std::fs::write(
            &file,
            "listn = \"127.0.0.1:1\"\n[bus]\nuri = \"amqp://h\"\n",
        )
        .unwrap();
        let err = Settings::load(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown setting `listn`; did you mean `listen`?")
                && err.contains("unknown setting `bus.uri`; did you mean `bus.url`?"),
            "every unknown key is named: {err}"
        );
        std::fs::write(
            &file,
            "[[auth.clients]]\nname = \"a\"\npasword = \"b\"\nscopes = []\n",
        )
        .unwrap();
        let err = Settings::load(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `pasword`"), "{err}");
    }

    #[test]
    fn file_variables_give_a_value_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let secret = secret.display().to_string();
        let s = Settings::load(
            None,
            env(&[
                ("TOCSIN_AUTH_TOKEN_SECRET_FILE", &secret),
                ("TOCSIN_SOURCES_OCI_PASSWORD_FILE", &secret),
            ]),
        )
        .unwrap();
        assert_eq!(s.auth.token_secret.0, "s3cret");
        assert_eq!(s.sources.oci.password.0, "s3cret");
        let err = Settings::load(
            None,
            env(&[
                ("TOCSIN_AUTH_TOKEN_SECRET_FILE", &secret),
                ("TOCSIN_AUTH_TOKEN_SECRET", "k"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("TOCSIN_AUTH_TOKEN_SECRET and TOCSIN_AUTH_TOKEN_SECRET_FILE"),
            "{err}"
        );
        let err = Settings::load(
            None,
            env(&[("TOCSIN_AUTH_TOKEN_SECRET_FILE", "/nonexistent")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("TOCSIN_AUTH_TOKEN_SECRET_FILE: cannot read"),
            "{err}"
        );
    }
}
