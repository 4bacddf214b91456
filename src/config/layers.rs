//! Where configuration comes from, laid over each other in this order:
//!
//! 1. the built-in defaults (every section is `#[serde(default)]`);
//! 2. a TOML file: `--config PATH` (which must exist), else `./config.toml`
//!    when there is one; a key it leaves out keeps its default, and a key
//!    herald does not know is an error naming the key's path;
//! 3. environment variables shaped `HERALD_<SECTION>__<KEY>` (a nested
//!    section joins with `__` again). Other `HERALD_*` variables belong to
//!    deploy scripts and test harnesses: they are ignored, and reported so
//!    the caller can warn. A variable of the right shape that names no key is
//!    an error naming the variable.
//!
//! Environment values are taken as strings, verbatim: the `config` crate
//! converts them where a field wants a number, so an all-digit secret or
//! token stays the text it was. A list key (e.g. `HERALD_ADMIN__TOKENS`) is
//! split on commas; an empty value is an empty list.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use config::{Config, File, FileFormat};
use serde_json::Value;

use super::{ConfigError, Settings};

/// The prefix of herald's environment variables.
const ENV_PREFIX: &str = "HERALD_";
/// Joins sections and keys in a variable's name.
const ENV_SEPARATOR: &str = "__";
/// The file used when no `--config` is given, if it exists.
const DEFAULT_FILE: &str = "config.toml";

/// One layer that contributed to the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Defaults,
    File(PathBuf),
    /// The names (never the values) of the variables that were applied.
    Environment(Vec<String>),
}

/// A configuration as laid together, before or after validation.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub sources: Vec<Source>,
    /// `HERALD_*` variables that are not configuration (ignored).
    pub ignored: Vec<String>,
}

impl Loaded {
    /// The sources as one log field: `defaults,file:config.toml,env:HERALD_A__B+…`.
    pub fn sources_field(&self) -> String {
        let names: Vec<String> = self
            .sources
            .iter()
            .map(|source| match source {
                Source::Defaults => "defaults".to_owned(),
                Source::File(path) => format!("file:{}", path.display()),
                Source::Environment(vars) => format!("env:{}", vars.join("+")),
            })
            .collect();
        names.join(",")
    }
}

impl Settings {
    /// Lays the file and the process environment over the defaults, and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
        let loaded = Self::layer_process_env(file)?;
        loaded.settings.validate()?;
        Ok(loaded)
    }

    /// Lays the file and the process environment over the defaults, without
    /// validating.
    pub fn layer_process_env(file: Option<&Path>) -> Result<Loaded, ConfigError> {
        Self::layer(file, process_env()?)
    }

    /// Lays the file and `env` over the defaults, without validating.
    pub fn layer(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let known = known_keys();
        let mut sources = vec![Source::Defaults];
        let mut builder = Config::builder();
        if let Some(path) = chosen_file(file) {
            check_file_keys(&path, &known)?;
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
            sources.push(Source::File(path));
        }
        let (overrides, ignored) = environment_overrides(env, &known)?;
        if !overrides.is_empty() {
            sources.push(Source::Environment(
                overrides.iter().map(|o| o.variable.clone()).collect(),
            ));
        }
        for Override { key, value, .. } in overrides {
            builder = match value {
                EnvValue::Text(text) => builder.set_override(key, text)?,
                EnvValue::List(items) => builder.set_override(key, items)?,
            };
        }
        let settings = builder.build()?.try_deserialize()?;
        Ok(Loaded {
            settings,
            sources,
            ignored,
        })
    }

    /// The settings with every secret replaced by `"<redacted>"` (an unset
    /// one stays empty, so it shows as unset), for printing.
    pub fn redacted(&self) -> Self {
        const REDACTED: &str = "<redacted>";
        let mut copy = self.clone();
        for token in &mut copy.admin.tokens {
            *token = REDACTED.to_owned();
        }
        if !copy.auth.secret.is_empty() {
            copy.auth.secret = REDACTED.to_owned();
        }
        copy
    }
}

/// Every key herald knows (`section.key`, nested sections joined with `.`),
/// with its built-in default.
pub fn known_keys() -> BTreeMap<String, Value> {
    let defaults = serde_json::to_value(Settings::default()).unwrap_or(Value::Null);
    let mut keys = BTreeMap::new();
    collect_leaves(&defaults, "", &mut keys);
    keys
}

fn collect_leaves(value: &Value, path: &str, keys: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                collect_leaves(field, &child, keys);
            }
        }
        leaf => {
            keys.insert(path.to_owned(), leaf.clone());
        }
    }
}

fn chosen_file(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_owned()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|path| path.is_file()),
    }
}

/// Every key a TOML file sets (`section.key`), with its value.
pub fn keys_in_file(path: &Path) -> Result<BTreeMap<String, Value>, ConfigError> {
    let fail = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|err| fail(err.to_string()))?;
    // The message and line only: toml's full report quotes the line, which
    // may hold a secret.
    let table: toml::Table = toml::from_str(&text).map_err(|err| {
        let line = err.span().map_or(0, |span| {
            text.get(..span.start)
                .map_or(0, |before| before.lines().count().max(1))
        });
        fail(format!("line {line}: {}", err.message().trim_end()))
    })?;
    let json = serde_json::to_value(table).map_err(|err| fail(err.to_string()))?;
    let mut keys = BTreeMap::new();
    collect_leaves(&json, "", &mut keys);
    Ok(keys)
}

/// Whether a value from a file has the type its key needs.
type ValueCheck = fn(&Value) -> bool;

/// Keys whose values are secrets, and what each must be: their values must
/// never reach an error message (the `config` crate quotes a value of the
/// wrong type).
const SECRET_KEYS: [(&str, &str, ValueCheck); 2] = [
    ("admin.tokens", "a list of strings", |v| {
        v.as_array()
            .is_some_and(|items| items.iter().all(Value::is_string))
    }),
    ("auth.secret", "a string", Value::is_string),
];

/// Refuses a file that cannot be read, names a key herald does not know (a
/// typo must not pass silently as "left at its default"), or gives a secret
/// a value of the wrong type.
fn check_file_keys(path: &Path, known: &BTreeMap<String, Value>) -> Result<(), ConfigError> {
    let in_file = keys_in_file(path)?;
    if let Some(key) = in_file.keys().find(|key| !known.contains_key(*key)) {
        return Err(ConfigError::UnknownKey {
            key: key.clone(),
            path: path.display().to_string(),
        });
    }
    for (key, wanted, fits) in SECRET_KEYS {
        if in_file.get(key).is_some_and(|value| !fits(value)) {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                message: format!("{key} must be {wanted}"),
            });
        }
    }
    Ok(())
}

/// One environment variable that sets a key.
struct Override {
    variable: String,
    key: String,
    value: EnvValue,
}

enum EnvValue {
    Text(String),
    List(Vec<String>),
}

/// Sorts `HERALD_*` variables into overrides and ignored names; other
/// variables are none of herald's business.
fn environment_overrides(
    env: impl IntoIterator<Item = (String, String)>,
    known: &BTreeMap<String, Value>,
) -> Result<(Vec<Override>, Vec<String>), ConfigError> {
    let mut overrides = Vec::new();
    let mut ignored = Vec::new();
    for (variable, value) in env {
        let Some(rest) = variable.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<&str> = rest.split(ENV_SEPARATOR).collect();
        if parts.len() < 2 || parts.iter().any(|part| part.is_empty()) {
            ignored.push(variable);
            continue;
        }
        let key = parts.join(".").to_lowercase();
        let value = match known.get(&key) {
            Some(Value::Array(_)) if value.is_empty() => EnvValue::List(Vec::new()),
            Some(Value::Array(_)) => EnvValue::List(value.split(',').map(str::to_owned).collect()),
            Some(_) => EnvValue::Text(value),
            None => return Err(ConfigError::UnknownVariable { variable, key }),
        };
        overrides.push(Override {
            variable,
            key,
            value,
        });
    }
    overrides.sort_by(|a, b| a.variable.cmp(&b.variable));
    ignored.sort();
    Ok((overrides, ignored))
}

/// The process's `HERALD_*` variables (others pass through untouched; a
/// `HERALD_*` value that is not UTF-8 cannot be configuration or ignored
/// safely, so it is an error naming the variable).
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)) else {
            continue;
        };
        let value = value
            .into_string()
            .map_err(|_| ConfigError::Invalid(format!("{name} is not valid UTF-8")))?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn layer(file: Option<&Path>, vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        Settings::layer(file, env(vars))
    }

    fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_partial_file_overrides_only_what_it_names() {
        let (_dir, path) = file_with("[admin]\ntokens = [\"a-token-of-sixteen\"]\n");
        let loaded = layer(Some(&path), &[]).unwrap();
        let defaults = Settings::default();
        assert_eq!(loaded.settings.admin.tokens, ["a-token-of-sixteen"]);
        assert_eq!(loaded.settings.server.bind, defaults.server.bind);
        assert_eq!(loaded.settings.session.ttl, defaults.session.ttl);
        assert_eq!(loaded.sources, [Source::Defaults, Source::File(path)]);
    }

    #[test]
    fn an_unknown_key_in_a_file_is_an_error_naming_its_path() {
        let (_dir, path) = file_with("[session]\nttll = \"5m\"\n");
        let err = layer(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("session.ttll"), "{err}");
        let (_dir, path) = file_with("[sesion]\nttl = \"5m\"\n");
        let err = layer(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("sesion.ttl"), "{err}");
    }

    #[test]
    fn a_file_error_never_quotes_a_secret() {
        for text in [
            "[admin]\ntokens = \"secret-token-0123456789\"\n",
            "[auth]\nsecret = [\"secret-token-0123456789\"]\n",
            "[auth]\nsecret = \"secret-token-0123456789\n",
        ] {
            let (_dir, path) = file_with(text);
            let err = layer(Some(&path), &[]).unwrap_err().to_string();
            assert!(!err.contains("secret-token"), "{err}");
        }
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error_naming_it() {
        let err = layer(Some(Path::new("/nonexistent/herald.toml")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/herald.toml"), "{err}");
    }

    #[test]
    fn only_section_key_variables_are_configuration_others_are_ignored() {
        let loaded = layer(
            None,
            &[
                ("HERALD_URL", "http://x"),
                ("HERALD_LOG", "debug"),
                ("HERALD_SESSION__TTL", "10m"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(loaded.ignored, ["HERALD_LOG", "HERALD_URL"]);
        assert_eq!(loaded.settings.session.ttl.as_secs(), 600);
        assert!(
            loaded
                .sources
                .contains(&Source::Environment(vec!["HERALD_SESSION__TTL".into()]))
        );
    }

    #[test]
    fn a_variable_of_the_right_shape_naming_no_key_is_an_error_naming_it() {
        for variable in [
            "HERALD_NOPE__KEY",
            "HERALD_SERVER__NOPE",
            "HERALD_SERVER__BIND__X",
        ] {
            let err = layer(None, &[(variable, "1")]).unwrap_err().to_string();
            assert!(err.contains(variable), "{err}");
        }
    }

    #[test]
    fn secrets_and_lists_from_the_environment_are_taken_verbatim() {
        let loaded = layer(
            None,
            &[
                (
                    "HERALD_ADMIN__TOKENS",
                    "12345678901234567890,0000000000000000",
                ),
                ("HERALD_AUTH__SECRET", "00000000000000000000000000000000001"),
                ("HERALD_SERVER__WORKERS", "3"),
            ],
        )
        .unwrap();
        let settings = loaded.settings;
        assert_eq!(
            settings.admin.tokens,
            ["12345678901234567890", "0000000000000000"]
        );
        assert_eq!(settings.auth.secret, "00000000000000000000000000000000001");
        assert_eq!(settings.server.workers, 3);

        let (_dir, path) = file_with("[cors]\nallowed_origins = [\"https://a.example\"]\n");
        let loaded = layer(Some(&path), &[("HERALD_CORS__ALLOWED_ORIGINS", "")]).unwrap();
        assert!(loaded.settings.cors.allowed_origins.is_empty());
    }

    #[test]
    fn redaction_hides_every_secret_and_shows_unset_ones_as_unset() {
        let mut settings = Settings::default();
        settings.admin.tokens = vec!["secret-admin-token-1".into()];
        let shown = toml::to_string(&settings.redacted()).unwrap();
        assert!(!shown.contains("secret-admin-token-1"), "{shown}");
        assert!(shown.contains("tokens = [\"<redacted>\"]"), "{shown}");
        assert!(shown.contains("secret = \"\""), "{shown}");
    }
}
