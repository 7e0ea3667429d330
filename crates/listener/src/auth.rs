//! SMTP AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN, offered only on
//! encrypted sessions, against a users file of Argon2 password hashes.
//!
//! [`UserDb::load`] reads `user:$argon2id$...` lines (`#` comments; the
//! file is re-read when it changes, and a reload that fails keeps the old
//! users and is logged). [`UserDb::verify`] checks a password off the async
//! runtime (Argon2 is deliberately slow, 19 MiB a run); an unknown user's
//! password is checked against a dummy hash of the same cost, so the time
//! taken does not tell which users exist. [`AuthLimiter`] counts failures per
//! client (IPv6 by /64) and per user in ten-minute windows; past the limit,
//! attempts are refused before any password is checked. An attempt is
//! counted as a failure from the moment it is checked until its verdict is
//! in ([`Attempt`]), so attempts sent in parallel cannot all pass the check.
//! The limiter also caps the Argon2 runs in progress ([`VerifyPermit`]).
//! [`hash_password`] makes a users file entry. Failures are [`AuthError`]s
//! that keep their cause. The SASL decoding helpers are pure and tested
//! below.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use std::collections::HashMap;
use std::error::Error;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

    /// The hash a password offered for `user` is checked against, and
    /// whether the user exists: an unknown user's password is checked
    /// against [`dummy_hash`], so it costs as much as a wrong password.
    fn hash_for(&self, user: &str) -> (String, bool) {
        match self.hash_of(user) {
            Some(hash) => (hash, true),
            None => (dummy_hash(), false),
        }
    }

    /// True when `pass` is `user`'s password. `permit` is one of the
    /// concurrent verifications allowed; it is held until the Argon2 run
    /// ends, even when the session has gone by then.
    pub(crate) async fn verify(
        self: &Arc<Self>,
        user: String,
        pass: String,
        permit: VerifyPermit,
    ) -> bool {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let (hash, known) = db.hash_for(&user);
            let matched = PasswordHash::new(&hash).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(pass.as_bytes(), &parsed)
                    .is_ok()
            });
            matched && known
        })
        .await
        .unwrap_or(false)
    }
}

/// A hash no password matches (its output is all zeros), at the cost of
/// the hashes [`hash_password`] writes (Argon2id with the default
/// parameters): what an unknown user's password is checked against.
fn dummy_hash() -> String {
    use argon2::Params;
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        Params::DEFAULT_M_COST,
        Params::DEFAULT_T_COST,
        Params::DEFAULT_P_COST,
        // 16 and 32 zero octets in unpadded base64.
        "A".repeat(22),
        "A".repeat(43),
    )
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

/// What the limiter counts for one client or one user.
#[derive(Debug, Clone, Copy)]
struct Count {
    /// Start of the current ten-minute window.
    start: Instant,
    /// Failures recorded in that window.
    failures: u32,
    /// Attempts checked and not yet settled: they count as failures until
    /// their verdict is in, so attempts sent in parallel cannot all pass
    /// the check while the first ones are still being verified.
    pending: u32,
}

impl Count {
    fn new(now: Instant) -> Count {
        Count {
            start: now,
            failures: 0,
            pending: 0,
        }
    }

    /// Failures in the window at `now`, plus attempts in flight.
    fn load(&self, now: Instant) -> u32 {
        let failures = if now.duration_since(self.start) < WINDOW {
            self.failures
        } else {
            0
        };
        failures.saturating_add(self.pending)
    }
}

/// Failed attempts per client and per user, and the password
/// verifications in progress. Built with [`AuthLimiter::new`] (no
/// `Default`: a limit of 0 would refuse every AUTH).
#[derive(Debug)]
pub struct AuthLimiter {
    /// Failures within the window after which a client or user is refused.
    max_failures: u32,
    /// `ip:<client>` and `user:<name>` → their [`Count`]; a mutex because
    /// every session of every listener shares the table.
    table: Mutex<HashMap<String, Count>>,
    /// Argon2 runs in progress (each holds a [`VerifyPermit`]), against the
    /// listener's `max_auth_verifies`: each run takes 19 MiB, so hundreds at
    /// once could exhaust memory.
    verifying: AtomicUsize,
}

/// An AUTH attempt being verified, counted as a failure of its client and
/// its user until it is settled: [`Attempt::failed`] records the failure;
/// dropped otherwise (the password matched, or the session ended first), it
/// simply stops counting.
#[derive(Debug)]
pub struct Attempt {
    /// The table the attempt is counted in.
    limiter: Arc<AuthLimiter>,
    /// The client's and the user's keys in it.
    keys: [String; 2],
    /// Set by [`Attempt::failed`]: record a failure at this time on drop.
    failed_at: Option<Instant>,
}

impl Attempt {
    /// The password did not match: the failure is recorded.
    pub fn failed(mut self, now: Instant) {
        self.failed_at = Some(now);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.limiter.settle(&self.keys, self.failed_at);
    }
}

/// One of the password verifications allowed at once; the place is freed
/// when the permit is dropped.
#[derive(Debug)]
pub struct VerifyPermit {
    /// Whose count of verifications in progress the permit is part of.
    limiter: Arc<AuthLimiter>,
}

impl Drop for VerifyPermit {
    fn drop(&mut self) {
        self.limiter.verifying.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AuthLimiter {
    /// A limiter refusing a client or user after `max_failures` failures in
    /// ten minutes; shared by the sessions that hold it.
    pub fn new(max_failures: u32) -> Arc<AuthLimiter> {
        Arc::new(AuthLimiter {
            max_failures,
            table: Mutex::new(HashMap::new()),
            verifying: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Count>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table keys of a client (IPv6 by its /64, as the per-IP limits
    /// count it) and of a user.
    fn keys(ip: IpAddr, user: &str) -> [String; 2] {
        [
            format!("ip:{}", crate::limits::client_key(ip)),
            format!("user:{user}"),
        ]
    }

    /// Starts an attempt by `user` from `ip` at `now`: `None` when the client
    /// or the user has failed too often lately (attempts still being
    /// verified count as failures), else the [`Attempt`], which counts until
    /// it is settled. Checking and counting happen under one lock.
    pub(crate) fn begin(self: &Arc<Self>, ip: IpAddr, user: &str, now: Instant) -> Option<Attempt> {
        let keys = Self::keys(ip, user);
        let mut t = self.lock();
        let load = |k: &String| t.get(k).map_or(0, |c| c.load(now));
        if keys.iter().any(|k| load(k) >= self.max_failures) {
            return None;
        }
        if t.len() > 10_000 {
            t.retain(|_, c| c.pending > 0 || now.duration_since(c.start) < WINDOW);
        }
        for k in &keys {
            let c = t.entry(k.clone()).or_insert_with(|| Count::new(now));
            c.pending = c.pending.saturating_add(1);
        }
        drop(t);
        Some(Attempt {
            limiter: self.clone(),
            keys,
            failed_at: None,
        })
    }

    /// Ends an attempt under `keys`, recording a failure at `failed_at`.
    fn settle(&self, keys: &[String; 2], failed_at: Option<Instant>) {
        let mut t = self.lock();
        for k in keys {
            let c = t
                .entry(k.clone())
                .or_insert_with(|| Count::new(failed_at.unwrap_or_else(Instant::now)));
            c.pending = c.pending.saturating_sub(1);
            if let Some(now) = failed_at {
                if now.duration_since(c.start) >= WINDOW {
                    c.start = now;
                    c.failures = 0;
                }
                c.failures = c.failures.saturating_add(1);
            }
        }
    }

    /// One of at most `max` concurrent password verifications, or `None`
    /// when that many are running.
    pub(crate) fn try_verify(self: &Arc<Self>, max: usize) -> Option<VerifyPermit> {
        self.verifying
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                if n < max {
                    n.checked_add(1)
                } else {
                    None
                }
            })
            .ok()
            .map(|_| VerifyPermit {
                limiter: self.clone(),
            })
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
        l.begin(ip, "u", now).expect("not blocked yet").failed(now);
        l.begin(ip, "u", now).expect("not blocked yet").failed(now);
        assert!(l.begin(ip, "other", now).is_none(), "the client is blocked");
        assert!(
            l.begin("192.0.2.9".parse().unwrap(), "u", now).is_none(),
            "the user is blocked"
        );
        assert!(l.begin(ip, "other", now + WINDOW).is_some(), "a new window");
    }

    // Finding "AUTH: the failure limit is checked before the slow verify and
    // recorded after it": attempts in flight count, so parallel attempts
    // cannot pass the limit; a success or an abandoned attempt gives its
    // place back.
    #[test]
    fn attempts_in_flight_count_against_the_limit() {
        let l = AuthLimiter::new(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let parallel: Vec<Attempt> = (0..10).filter_map(|_| l.begin(ip, "u", now)).collect();
        assert_eq!(parallel.len(), 3, "only as many as the limit start");
        drop(parallel);
        let ok = l.begin(ip, "u", now).expect("places given back");
        drop(ok);
        let a = l.begin(ip, "u", now).unwrap();
        let b = l.begin(ip, "u", now).unwrap();
        a.failed(now);
        b.failed(now);
        let c = l.begin(ip, "u", now).expect("two failures, one place left");
        assert!(
            l.begin(ip, "u", now).is_none(),
            "two failures and one in flight"
        );
        c.failed(now);
        assert!(l.begin(ip, "u", now).is_none());
    }

    #[test]
    fn clients_are_keyed_by_their_64() {
        let l = AuthLimiter::new(1);
        let now = Instant::now();
        l.begin("2001:db8::1".parse().unwrap(), "u", now)
            .unwrap()
            .failed(now);
        assert!(l.begin("2001:db8::2".parse().unwrap(), "v", now).is_none());
        assert!(l
            .begin("2001:db8:0:1::2".parse().unwrap(), "v", now)
            .is_some());
    }

    // Finding "hundreds of concurrent verifies at 19 MiB each": the
    // verifications in progress are capped.
    #[test]
    fn concurrent_verifications_are_capped() {
        let l = AuthLimiter::new(5);
        let first = l.try_verify(2).unwrap();
        let second = l.try_verify(2).unwrap();
        assert!(l.try_verify(2).is_none(), "over the cap");
        drop(first);
        let third = l.try_verify(2).expect("a place was freed");
        drop((second, third));
        assert_eq!(l.verifying.load(Ordering::Acquire), 0);
    }

    // Finding "unknown users skip Argon2 (a timing oracle for user names)":
    // an unknown user is checked against a dummy hash of the same cost.
    #[test]
    fn unknown_users_cost_a_full_verification() {
        let dummy = dummy_hash();
        let parsed = PasswordHash::new(&dummy).expect("the dummy hash parses");
        let real = hash_password("x").unwrap();
        let real = PasswordHash::new(&real).unwrap();
        assert_eq!(
            argon2::Params::try_from(&parsed).unwrap(),
            argon2::Params::try_from(&real).unwrap(),
            "the cost of a hash_password hash"
        );
        assert_eq!(parsed.algorithm, real.algorithm);
        assert_eq!(parsed.version, real.version);
        assert!(
            argon2::Argon2::default()
                .verify_password(b"", &parsed)
                .is_err(),
            "no password matches"
        );
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
        let limiter = AuthLimiter::new(5);
        let permit = || limiter.try_verify(1).expect("one at a time");
        assert!(db.verify("alice".into(), "s3cret".into(), permit()).await);
        assert!(!db.verify("alice".into(), "wrong".into(), permit()).await);
        assert!(!db.verify("bob".into(), "s3cret".into(), permit()).await);
        assert_eq!(db.hash_for("bob"), (dummy_hash(), false));
        // The unknown user takes about as long as a wrong password (before:
        // a table lookup, thousands of times faster). Fastest of three each,
        // with a wide margin for a loaded machine.
        let mut known = Duration::MAX;
        let mut unknown = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            assert!(!db.verify("alice".into(), "wrong".into(), permit()).await);
            known = known.min(t.elapsed());
            let t = Instant::now();
            assert!(!db.verify("bob".into(), "wrong".into(), permit()).await);
            unknown = unknown.min(t.elapsed());
        }
        assert!(
            unknown * 10 >= known,
            "unknown user {unknown:?}, known user {known:?}"
        );
        std::fs::write(&f, "bad line\n").unwrap();
        assert!(UserDb::load(&f).is_err());
    }
}
