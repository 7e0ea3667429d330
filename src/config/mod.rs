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

/// File in the queue directory holding the admin token the gateway
/// generated because `admin.token_file` is not set.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// How the admin endpoint admits requests, resolved from `[admin]` when the
/// gateway starts (no `Debug`: it holds the token).
#[derive(Clone)]
pub struct AdminAccess {
    /// The bearer token (`Authorization: Bearer <token>`).
    pub token: String,
    /// The token came from `admin.token_file`: it guards every endpoint but
    /// the health ones, and the Host header is not checked (clients may name
    /// the endpoint by a pod IP, a Service or a tunnel; a page in a browser
    /// cannot send the token). Otherwise the token was generated and guards
    /// the mutating requests only, and the Host must be the endpoint's own.
    pub configured: bool,
    /// `admin.max_connections`: connections open at once.
    pub max_connections: usize,
    /// `admin.header_timeout`: time to send a request's headers.
    pub header_timeout: std::time::Duration,
}

/// What guards the gateway's admin endpoint: the token named by
/// `admin.token_file`, else the one in `<queue path>/admin.token`, generated
/// (32 random bytes, hex, mode 0600) and logged once when it does not exist
/// yet; an existing file is kept. The queue directory must exist. An empty
/// token file is an error (it would make every request look authorised to
/// nobody), except a generated one, which is generated again (a crash right
/// after creating it).
pub fn admin_token(cfg: &Config) -> anyhow::Result<AdminAccess> {
    let (token, configured) = match configured_admin_token(cfg)? {
        Some(t) => (t, true),
        None => (generated_admin_token(&cfg.queue.path)?, false),
    };
    Ok(AdminAccess {
        token,
        configured,
        max_connections: cfg.admin.max_connections,
        header_timeout: cfg.admin.header_timeout.0,
    })
}

/// The token a client of the admin endpoint (the CLI) sends: the one named
/// by `admin.token_file`, else `<queue path>/admin.token` when it exists and
/// can be read (without it, reads still work on loopback and the endpoint
/// answers "bearer token required" to the rest).
pub fn admin_client_token(cfg: &Config) -> anyhow::Result<Option<String>> {
    if let Some(t) = configured_admin_token(cfg)? {
        return Ok(Some(t));
    }
    let path = cfg.queue.path.join(ADMIN_TOKEN_FILE);
    Ok(std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// The token in `admin.token_file`, trimmed; `None` when it is not set.
fn configured_admin_token(cfg: &Config) -> anyhow::Result<Option<String>> {
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

/// Reads `<queue_dir>/admin.token`, creating it first when it does not
/// exist (create_new: a file that is there is never replaced by a new
/// token, only an empty one is).
fn generated_admin_token(queue_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    let path = queue_dir.join(ADMIN_TOKEN_FILE);
    for _ in 0..2 {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        match opts.open(&path) {
            Ok(mut f) => {
                let token = new_admin_token();
                f.write_all(format!("{token}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("writing the admin token to {}", path.display()))?;
                tracing::warn!(
                    file = %path.display(),
                    "admin.token_file is not set: generated an admin token; POST and DELETE \
                     on the admin endpoint need it as Authorization: Bearer (postern queue \
                     reads it from this file)"
                );
                return Ok(token);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let t = std::fs::read_to_string(&path)
                    .with_context(|| format!("admin token {}", path.display()))?;
                if !t.trim().is_empty() {
                    return Ok(t.trim().to_string());
                }
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing the empty {}", path.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", path.display()));
            }
        }
    }
    anyhow::bail!("admin token {} stays empty", path.display())
}

/// 32 random bytes (the thread generator, a CSPRNG), as 64 hex digits.
fn new_admin_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    fn admin_token_is_generated_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.queue.path = dir.path().to_path_buf();
        assert_eq!(admin_client_token(&cfg).unwrap(), None);
        let first = admin_token(&cfg).unwrap();
        assert!(!first.configured);
        assert_eq!(first.token.len(), 64);
        assert!(first.token.bytes().all(|b| b.is_ascii_hexdigit()));
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The next start keeps it; the CLI reads the same one.
        assert_eq!(admin_token(&cfg).unwrap().token, first.token);
        assert_eq!(admin_client_token(&cfg).unwrap(), Some(first.token.clone()));
        // An empty file (a crash right after creating it) is replaced.
        std::fs::write(&path, "").unwrap();
        let again = admin_token(&cfg).unwrap().token;
        assert_eq!(again.len(), 64);
        assert_ne!(again, first.token);
        // A configured token_file wins and guards everything.
        let f = dir.path().join("configured");
        std::fs::write(&f, " s3cret\n").unwrap();
        cfg.admin.token_file = Some(f);
        let c = admin_token(&cfg).unwrap();
        assert!(c.configured);
        assert_eq!(c.token, "s3cret");
        assert_eq!(admin_client_token(&cfg).unwrap().as_deref(), Some("s3cret"));
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../../config/postern.toml");
        let c = parse(text).expect("config/postern.toml parses");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }
}
