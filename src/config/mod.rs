//! The configuration: its schema ([`schema`], every key with its default)
//! and loading it: file or embedded default, environment overrides, syntax
//! errors with line and column, then semantic validation of the whole tree.
//!
//! Entry point: [`load`]. Every failure is a [`ConfigError`] whose message is
//! fit to print as is.

pub mod schema;

pub use schema::*;

use anyhow::Context;
use std::fmt;
use std::path::Path;

/// Where the configuration came from, and the configuration.
pub struct Loaded {
    pub source: String,
    /// The file, when one was read (workers load the same one).
    pub path: Option<std::path::PathBuf>,
    pub config: Config,
}

/// A configuration that cannot be used.
#[derive(Debug)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{}: {}", self.source, p)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The bearer token named by `[admin] token_file`, trimmed; an empty file
/// is an error (it would make every request look authorised to nobody).
pub fn admin_token(cfg: &Config) -> anyhow::Result<Option<String>> {
    let Some(f) = &cfg.admin.token_file else {
        return Ok(None);
    };
    let t =
        std::fs::read_to_string(f).with_context(|| format!("admin.token_file {}", f.display()))?;
    let t = t.trim();
    if t.is_empty() {
        anyhow::bail!("admin.token_file {} is empty", f.display());
    }
    Ok(Some(t.to_string()))
}

/// The default file looked for when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/postern.toml";

/// Loads `path`, or `./config/postern.toml`, or the embedded default.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(Path::new(DEFAULT_PATH).to_path_buf()).filter(|p| p.exists()),
    };
    let text = match &path {
        None => String::new(),
        Some(p) => std::fs::read_to_string(p).map_err(|e| ConfigError {
            source: p.display().to_string(),
            problems: vec![format!("cannot read: {e}")],
        })?,
    };
    load_text(path, &text)
}

/// Loads configuration `text` that was read from `path` (`None`: the
/// embedded default), with environment overrides, and validates it.
pub fn load_text(path: Option<std::path::PathBuf>, text: &str) -> Result<Loaded, ConfigError> {
    let file = path.clone();
    let mut source = match &path {
        None => "<embedded default>".to_string(),
        Some(p) => p.display().to_string(),
    };
    let overrides = env_overrides(std::env::vars());
    if !overrides.is_empty() {
        let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
        source = format!("{source} + environment ({})", names.join(", "));
    }
    let mut config = parse_with(text, &overrides).map_err(|problem| ConfigError {
        source: source.clone(),
        problems: vec![format!("{problem:#}")],
    })?;
    if config.server.hostname.is_empty() {
        config.server.hostname = system_hostname();
    }
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(ConfigError { source, problems });
    }
    Ok(Loaded {
        source,
        path: file,
        config,
    })
}

/// Prefix of environment variables that override configuration keys:
/// `POSTERN__SERVER__HOSTNAME=mx.example.com` sets `[server] hostname`.
pub const ENV_PREFIX: &str = "POSTERN__";

/// The overriding variables among `vars`, sorted by name.
pub fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut v: Vec<_> = vars
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.len() > ENV_PREFIX.len())
        .collect();
    v.sort();
    v
}

/// Parses TOML text with environment overrides applied. A value is read as
/// a TOML value when it is one (`100`, `true`, `["0.0.0.0:25"]`), else as a
/// string.
pub fn parse_with(text: &str, overrides: &[(String, String)]) -> anyhow::Result<Config> {
    use serde::Deserialize;
    if overrides.is_empty() {
        return parse(text);
    }
    let base: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!(located(text, &e)))?;
    let mut table = base.clone();
    for (name, raw) in overrides {
        apply_override(&mut table, name, raw)?;
    }
    Config::deserialize(toml::Value::Table(table)).map_err(|e| {
        // Name the variable at fault: the first that fails on its own.
        let culprit = overrides.iter().find(|(name, raw)| {
            let mut t = base.clone();
            apply_override(&mut t, name, raw).is_err()
                || Config::deserialize(toml::Value::Table(t)).is_err()
        });
        match culprit {
            Some((name, _)) => anyhow::anyhow!("{name}: {}", e.message().trim()),
            None => anyhow::anyhow!("after environment overrides: {}", e.message().trim()),
        }
    })
}

/// Sets the key `name` (`POSTERN__SECTION__KEY`) names to `raw`.
fn apply_override(table: &mut toml::Table, name: &str, raw: &str) -> anyhow::Result<()> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = path.split_last().context("empty override name")?;
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        t = entry
            .as_table_mut()
            .with_context(|| format!("{name}: {p} is not a section"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// Parses TOML text; errors say `line L, column C: message`.
pub fn parse(text: &str) -> anyhow::Result<Config> {
    toml::from_str::<Config>(text).map_err(|e| anyhow::anyhow!(located(text, &e)))
}

/// A TOML error as `line L, column C: message`.
fn located(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, col)
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_line_and_column() {
        let e = parse("[server]\nmax_recipients = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2, column 18:"), "{e}");
        let e = parse("[queue]\nmax_age = \"5 fortnights\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("duration"), "{e}");
        let e = parse("[srever]\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("unknown field"), "{e}");
    }

    #[test]
    fn environment_overrides_keys() {
        let vars = [
            ("POSTERN__SERVER__HOSTNAME", "mx.example.test"),
            ("POSTERN__SERVER__MAX_RECIPIENTS", "7"),
            (
                "POSTERN__RELAY__ACCEPTED_DOMAINS",
                "[\"a.test\", \"b.test\"]",
            ),
            (
                "POSTERN__ROUTE",
                "[{domain = \"*\", hosts = [\"127.0.0.1:26\"]}]",
            ),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let o = env_overrides(vars.into_iter());
        assert_eq!(o.len(), 4);
        let c = parse_with("[server]\nmax_recipients = 100\n", &o).unwrap();
        assert_eq!(c.server.hostname, "mx.example.test");
        assert_eq!(c.server.max_recipients, 7);
        assert_eq!(c.relay.accepted_domains, ["a.test", "b.test"]);
        assert_eq!(c.routes[0].hosts, ["127.0.0.1:26"]);
        let bad = [(
            "POSTERN__SERVER__MAX_RECIPIENTS".to_string(),
            "many".to_string(),
        )];
        let e = parse_with("", &bad).unwrap_err().to_string();
        assert!(e.starts_with("POSTERN__SERVER__MAX_RECIPIENTS: "), "{e}");
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../../config/postern.toml");
        let c = parse(text).expect("config/postern.toml parses");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }
}
