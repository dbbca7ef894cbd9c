//! How the settings file and the `TOCSIN_*` variables are laid over the defaults, strictly:
//! every key of the file and every `TOCSIN_*` variable must name a setting (or be one of
//! Tocsin's own variables), so that a typo stops the start with the name it most likely meant
//! instead of leaving a default silently in force.
//!
//! The defaults, serialized, are the schema: their keys are the settings, each setting's
//! variable is `TOCSIN_` + its path in upper case joined by `_`, and the default's TOML type
//! says how to read the variable's text. (So a setting needs a default that serializes: an
//! `Option` left `None` would be no setting at all.) Any variable may instead be given as
//! `…_FILE`, naming a file whose contents are the value (secrets from Docker or Kubernetes
//! secret files).

use super::SettingsError;
use std::collections::BTreeMap;

/// Variables that are Tocsin's but not settings: the command line's, the `tocsin config`
/// client's, and the tests' and tools' (which reach `serve` through the tests' environment).
const OWN_VARIABLES: [&str; 11] = [
    "TOCSIN_SETTINGS",
    "TOCSIN_LOG",
    "TOCSIN_LOG_FORMAT",
    "TOCSIN_URL",
    "TOCSIN_USER",
    "TOCSIN_PASSWORD",
    "TOCSIN_PROMTOOL",
    "TOCSIN_SCHEMATHESIS",
    "TOCSIN_UPDATE_OPENAPI",
    // tests/sap-client/conformance.mjs
    "TOCSIN_AUTH",
    "TOCSIN_EVENT_TYPE",
];
const TEST_VARIABLES: &str = "TOCSIN_TEST_";
const FILE_SUFFIX: &str = "_FILE";

/// Settings that have no default to serialize, so the schema would not know them: the client
/// list (its entries are checked by their own type).
const UNSERIALIZED_SETTINGS: [&str; 1] = ["auth.clients"];

/// One setting: its dotted path, and its default's value (which gives the type).
struct Setting<'a> {
    path: Vec<&'a str>,
    default: &'a toml::Value,
}

impl Setting<'_> {
    fn dotted(&self) -> String {
        self.path.join(".")
    }

    fn variable(&self) -> String {
        format!("TOCSIN_{}", self.path.join("_").to_ascii_uppercase())
    }

    /// The variable's text as a value of the default's type.
    fn parse(&self, raw: &str) -> Result<toml::Value, String> {
        match self.default {
            toml::Value::Integer(_) => raw
                .parse()
                .map(toml::Value::Integer)
                .map_err(|_| format!("`{raw}` is not an integer")),
            toml::Value::Float(_) => raw
                .parse()
                .map(toml::Value::Float)
                .map_err(|_| format!("`{raw}` is not a number")),
            toml::Value::Boolean(_) => raw
                .parse()
                .map(toml::Value::Boolean)
                .map_err(|_| format!("`{raw}` is not true or false")),
            // A list of strings, comma-separated: `TOCSIN_CHANNELS_OUTBOUND_ALLOW=10.0.0.0/8,a.b`.
            toml::Value::Array(_) => Ok(toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| toml::Value::String(item.to_owned()))
                    .collect(),
            )),
            _ => Ok(toml::Value::String(raw.to_owned())),
        }
    }
}

/// Every setting under `table`, depth first.
fn settings<'a>(table: &'a toml::Table, parent: &[&'a str], into: &mut Vec<Setting<'a>>) {
    for (key, default) in table {
        let mut path = parent.to_vec();
        path.push(key.as_str());
        match default {
            toml::Value::Table(section) => settings(section, &path, into),
            _ => into.push(Setting { path, default }),
        }
    }
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo of it.
fn likely<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let (distance, best) = candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(name, candidate), candidate))
        .min()?;
    (distance <= (name.len() / 3).max(2)).then_some(best)
}

fn did_you_mean(suggestion: Option<String>) -> String {
    suggestion.map_or_else(
        || "see examples/tocsin.toml for every setting".to_owned(),
        |s| format!("did you mean {s}?"),
    )
}

/// Refuses a settings file (read into `given`) with keys that name no setting, naming each
/// and the setting it likely means.
pub fn check_file_keys(
    defaults: &toml::Table,
    given: &toml::Table,
    origin: &str,
) -> Result<(), SettingsError> {
    let mut known = Vec::new();
    settings(defaults, &[], &mut known);
    let known: Vec<String> = known
        .iter()
        .map(Setting::dotted)
        .chain(UNSERIALIZED_SETTINGS.map(String::from))
        .collect();
    let mut unknown = Vec::new();
    unknown_keys(defaults, given, "", &mut unknown);
    if unknown.is_empty() {
        return Ok(());
    }
    let described: Vec<String> = unknown
        .iter()
        .map(|key| {
            let likely = likely(key, known.iter().map(String::as_str));
            format!(
                "unknown setting `{key}`; {}",
                did_you_mean(likely.map(|s| format!("`{s}`")))
            )
        })
        .collect();
    Err(SettingsError::Invalid {
        origin: origin.to_owned(),
        message: described.join("; "),
    })
}

fn unknown_keys(defaults: &toml::Table, given: &toml::Table, prefix: &str, into: &mut Vec<String>) {
    for (key, value) in given {
        let path = format!("{prefix}{key}");
        match (defaults.get(key), value) {
            (Some(toml::Value::Table(section)), toml::Value::Table(inner)) => {
                unknown_keys(section, inner, &format!("{path}."), into)
            }
            (Some(_), _) => {}
            (None, _) if UNSERIALIZED_SETTINGS.contains(&path.as_str()) => {}
            (None, _) => into.push(path),
        }
    }
}

/// Lays the `TOCSIN_*` variables of `env` over `tree`. A variable that is neither a setting,
/// nor a setting's `_FILE` form, nor one of Tocsin's own, is an error naming the likely one.
pub fn apply_environment(
    defaults: &toml::Table,
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), SettingsError> {
    let mut known = Vec::new();
    settings(defaults, &[], &mut known);
    let by_variable: BTreeMap<String, &Setting> = known.iter().map(|s| (s.variable(), s)).collect();
    let env: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with("TOCSIN_"))
        .collect();
    for (name, raw) in &env {
        if OWN_VARIABLES.contains(&name.as_str()) || name.starts_with(TEST_VARIABLES) {
            continue;
        }
        let invalid = |message: String| SettingsError::Invalid {
            origin: name.clone(),
            message,
        };
        let (setting, value) = if let Some(setting) = by_variable.get(name) {
            (setting, raw.clone())
        } else if let Some(setting) = name
            .strip_suffix(FILE_SUFFIX)
            .and_then(|plain| by_variable.get(plain))
        {
            let plain = setting.variable();
            if env.contains_key(&plain) {
                return Err(invalid(format!(
                    "both {plain} and {name} are set: set one of them"
                )));
            }
            (setting, read_value_file(raw).map_err(invalid)?)
        } else {
            let candidates = by_variable.keys().map(String::as_str).chain(OWN_VARIABLES);
            return Err(invalid(format!(
                "no such setting or variable; {}",
                did_you_mean(likely(name, candidates).map(str::to_owned))
            )));
        };
        let value = setting.parse(&value).map_err(invalid)?;
        insert(tree, &setting.path, value);
    }
    Ok(())
}

/// A `_FILE` variable's value: the file's contents without one trailing newline.
fn read_value_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

fn insert(tree: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, sections) = path.split_last().expect("a setting has a path");
    let mut table = tree;
    for section in sections {
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(inner) = entry else {
            // The file gave a value where a section belongs: deserialization will say so.
            return;
        };
        table = inner;
    }
    table.insert(last.to_string(), value);
}
