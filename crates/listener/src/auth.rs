//! SMTP AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN, offered only on
//! encrypted sessions, against a users file of Argon2 password hashes.
//!
//! [`UserDb::load`] reads `user:$argon2id$...` lines (`#` comments; the
//! file is re-read when it changes, and a reload that fails keeps the old
//! users and is logged). [`UserDb::verify`] checks a password off the async
//! runtime (Argon2 is deliberately slow). [`AuthLimiter`] counts failures per
//! client IP and per user in ten-minute windows; past the limit, attempts are
//! refused before any password is checked. [`hash_password`] makes a users
//! file entry. Failures are [`AuthError`]s that keep their cause. The SASL
//! decoding helpers are pure and tested below.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use std::collections::HashMap;
use std::error::Error;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const WINDOW: Duration = Duration::from_secs(600);

/// Why the users file cannot be used, or a password not hashed. The
/// message names this layer; the cause is the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file could not be read.
    #[error("{}", .path.display())]
    Read {
        /// The users file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `user:hash`.
    #[error("{}:{}: expected user:hash", .path.display(), .line)]
    Syntax {
        /// The users file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
    },
    /// A line's hash is not a password hash (PHC string format).
    #[error("{}:{}: not a password hash", .path.display(), .line)]
    NotAHash {
        /// The users file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
        /// What the hash parser said.
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// Hashing a new password failed.
    #[error("cannot hash the password")]
    Hash(#[source] Box<dyn Error + Send + Sync>),
}

/// The argon2 crate's error. It implements `std::error::Error` only with a
/// crate feature we do not enable, so it is wrapped to serve as a source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Argon2Error(argon2::password_hash::Error);

/// Users and their password hashes, following the file.
#[derive(Debug)]
pub struct UserDb {
    /// The users file, re-read when its modification time changes.
    path: PathBuf,
    /// The users (name → PHC hash string) and the file's modification time
    /// when they were read; a mutex because verifications run on blocking
    /// threads and any of them may reload.
    state: Mutex<(HashMap<String, String>, Option<SystemTime>)>,
}

fn read_users(path: &Path) -> Result<HashMap<String, String>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line.split_once(':').ok_or_else(|| AuthError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
        })?;
        PasswordHash::new(hash).map_err(|e| AuthError::NotAHash {
            path: path.to_path_buf(),
            line: i + 1,
            source: Box::new(Argon2Error(e)),
        })?;
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

impl UserDb {
    /// Reads the users file at `path`; it is re-read when it changes.
    pub fn load(path: &Path) -> Result<UserDb, AuthError> {
        let users = read_users(path)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(UserDb {
            path: path.to_path_buf(),
            state: Mutex::new((users, mtime)),
        })
    }

    fn hash_of(&self, user: &str) -> Option<String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime != st.1 {
            match read_users(&self.path) {
                Ok(u) => *st = (u, mtime),
                Err(e) => tracing::error!(
                    error = %crate::error_chain(&e),
                    "users file reload failed; keeping the old one"
                ),
            }
        }
        st.0.get(user).cloned()
    }

    /// True when `pass` is `user`'s password.
    pub(crate) async fn verify(self: &Arc<Self>, user: String, pass: String) -> bool {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let Some(hash) = db.hash_of(&user) else {
                return false;
            };
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            argon2::Argon2::default()
                .verify_password(pass.as_bytes(), &parsed)
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

/// An Argon2id hash of `password` for the users file.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let failed = |e: argon2::password_hash::Error| AuthError::Hash(Box::new(Argon2Error(e)));
    let bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&bytes).map_err(failed)?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(failed)
}

/// Failed attempts per client and per user. Built with
/// [`AuthLimiter::new`] (no `Default`: a limit of 0 would refuse every AUTH).
#[derive(Debug)]
pub struct AuthLimiter {
    /// Failures within the window after which a client or user is refused.
    max_failures: u32,
    /// `ip:<addr>` and `user:<name>` → (window start, failures in it); a
    /// mutex because every session of every listener shares the table.
    table: Mutex<HashMap<String, (Instant, u32)>>,
}

impl AuthLimiter {
    /// A limiter refusing a client or user after `max_failures` failures in
    /// ten minutes; shared by the sessions that hold it.
    pub fn new(max_failures: u32) -> Arc<AuthLimiter> {
        Arc::new(AuthLimiter {
            max_failures,
            table: Mutex::new(HashMap::new()),
        })
    }

    fn count(&self, key: &str, now: Instant) -> u32 {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match t.get(key) {
            Some((start, n)) if now.duration_since(*start) < WINDOW => *n,
            _ => 0,
        }
    }

    /// True when the client or the user has failed too often lately.
    pub(crate) fn blocked(&self, ip: IpAddr, user: Option<&str>, now: Instant) -> bool {
        self.count(&format!("ip:{ip}"), now) >= self.max_failures
            || user.is_some_and(|u| self.count(&format!("user:{u}"), now) >= self.max_failures)
    }

    /// Counts a failed attempt by `user` from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, user: &str, now: Instant) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() > 10_000 {
            t.retain(|_, (s, _)| now.duration_since(*s) < WINDOW);
        }
        for key in [format!("ip:{ip}"), format!("user:{user}")] {
            let e = t.entry(key).or_insert((now, 0));
            if now.duration_since(e.0) >= WINDOW {
                *e = (now, 0);
            }
            e.1 += 1;
        }
    }
}

/// Decodes base64 SASL data (`=` alone means empty).
pub(crate) fn b64(s: &str) -> Option<Vec<u8>> {
    if s == "=" {
        return Some(Vec::new());
    }
    postern_core::base64::base64_decode(s.as_bytes())
}

/// PLAIN: `authzid NUL authcid NUL password` → (user, password).
pub(crate) fn parse_plain(data: &[u8]) -> Option<(String, String)> {
    let mut parts = data.split(|b| *b == 0);
    let authz = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    // We do not act for others: an authzid must be empty or the user.
    if !authz.is_empty() && authz != user.as_bytes() {
        return None;
    }
    Some((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_plain() {
        assert_eq!(b64("AHVzZXIAcGFzcw=="), Some(b"\0user\0pass".to_vec()));
        assert_eq!(
            parse_plain(b"\0user\0pass"),
            Some(("user".into(), "pass".into()))
        );
        assert_eq!(
            parse_plain(b"user\0user\0pass"),
            Some(("user".into(), "pass".into()))
        );
        assert_eq!(parse_plain(b"boss\0user\0pass"), None);
        assert_eq!(parse_plain(b"\0\0pass"), None);
        assert_eq!(parse_plain(b"nonul"), None);
        assert!(b64("*bad*").is_none());
    }

    #[test]
    fn limiter() {
        let l = AuthLimiter::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        assert!(!l.blocked(ip, Some("u"), now));
        l.failed(ip, "u", now);
        l.failed(ip, "u", now);
        assert!(l.blocked(ip, None, now));
        assert!(l.blocked("192.0.2.9".parse().unwrap(), Some("u"), now));
        assert!(!l.blocked(ip, None, now + WINDOW));
    }

    #[tokio::test]
    async fn users_file_and_verify() {
        let dir = std::env::temp_dir().join(format!("postern-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("users");
        std::fs::write(
            &f,
            format!("# users\nalice:{}\n", hash_password("s3cret").unwrap()),
        )
        .unwrap();
        let db = Arc::new(UserDb::load(&f).unwrap());
        assert!(db.verify("alice".into(), "s3cret".into()).await);
        assert!(!db.verify("alice".into(), "wrong".into()).await);
        assert!(!db.verify("bob".into(), "s3cret".into()).await);
        std::fs::write(&f, "bad line\n").unwrap();
        assert!(UserDb::load(&f).is_err());
    }
}
