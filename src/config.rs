//! Loading the configuration: file or embedded default, syntax errors with
//! line and column, then semantic validation of the whole tree.
//!
//! Entry point: [`load`]. Every failure is a [`ConfigError`] whose message is
//! fit to print as is.

use postern_core::config::Config;
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

/// The default file looked for when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/postern.toml";

/// Loads `path`, or `./config/postern.toml`, or the embedded default.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(Path::new(DEFAULT_PATH).to_path_buf()).filter(|p| p.exists()),
    };
    let file = path.clone();
    let (source, mut config) = match path {
        None => ("<embedded default>".to_string(), Config::default()),
        Some(p) => {
            let source = p.display().to_string();
            let text = std::fs::read_to_string(&p).map_err(|e| ConfigError {
                source: source.clone(),
                problems: vec![format!("cannot read: {e}")],
            })?;
            let config = parse(&text).map_err(|problem| ConfigError {
                source: source.clone(),
                problems: vec![problem],
            })?;
            (source, config)
        }
    };
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

/// Parses TOML text; errors say `line L, column C: message`.
pub fn parse(text: &str) -> Result<Config, String> {
    toml::from_str::<Config>(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        match e.span() {
            Some(span) => {
                let (line, col) = line_col(text, span.start);
                format!("line {line}, column {col}: {msg}")
            }
            None => msg,
        }
    })
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
        let e = parse("[server]\nmax_recipients = \"lots\"\n").unwrap_err();
        assert!(e.starts_with("line 2, column 18:"), "{e}");
        let e = parse("[queue]\nmax_age = \"5 fortnights\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("duration"), "{e}");
        let e = parse("[srever]\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("unknown field"), "{e}");
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../config/postern.toml");
        let c = parse(text).expect("config/postern.toml parses");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }
}
