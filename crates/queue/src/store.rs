//! [`Queue`]: the durable message store and its state transitions.
//!
//! Trees: `messages` (id → [`Record`]), `bodies` (id → framed body) and one
//! index tree per waiting state: `due` (`due ++ id`, for Ready and Deferred),
//! `held`, `quarantine`; `corrupt` keeps raw records that failed to decode.
//! Leases live in memory: a lease never outlives its process, so there is
//! nothing to persist, and a leased message's record still says when it was
//! due. Records are the truth and indexes are derived: [`Queue::open`]
//! rebuilds every index from the records (so every message leased by a dead
//! process is due again) and sweeps bodies whose record never landed.
//! That is why the hot path needs no multi-tree transaction: writes go body,
//! then record, then index, and a crash between them leaves something
//! recovery repairs. One mutex orders state transitions within the process.
//!
//! Durability: [`Queue::enqueue`] returns only after a (group-committed)
//! flush. Other transitions rely on sled's periodic flush: losing one on a
//! crash means a message is delivered again (at-least-once), never lost.

use crate::commit::Committer;
use crate::error::{QueueError, SledResult, StorageError};
use crate::keys::{due_key, due_upper, split_due_key};
use crate::record::{self, Corruption, Found, QuarantineInfo, Record, State};
use crate::spool::{Spool, INLINE_MAX};
use postern_core::{Envelope, QueueId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// How to open the queue.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Directory of the database (created if missing).
    pub path: PathBuf,
    /// sled page cache in bytes.
    pub cache_bytes: u64,
}

/// What [`Queue::open`] found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Messages in the queue after recovery.
    pub messages: usize,
    /// Records that failed to decode and were moved to quarantine.
    pub corrupt: usize,
    /// Bodies without a record (a crash before the record landed), removed.
    pub orphans: usize,
}

/// Message counts by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateCounts {
    /// Entries in the due index: messages waiting for a first attempt or a
    /// retry.
    pub ready_or_deferred: usize,
    /// Messages being delivered now.
    pub leased: usize,
    /// Messages stopped by an administrator.
    pub held: usize,
    /// Quarantined messages, and records that failed to decode.
    pub quarantine: usize,
}

/// The queue. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    /// The database, flushed at the end of recovery.
    db: sled::Db,
    /// id → framed [`Record`]: the truth.
    messages: sled::Tree,
    /// id → framed body (inline, or a reference to a spool file).
    bodies: sled::Tree,
    /// `due ++ id` → (): Ready and Deferred messages, in due order.
    due: sled::Tree,
    /// id → (): Held messages.
    held: sled::Tree,
    /// id → (): quarantined messages.
    quarantine: sled::Tree,
    /// id → raw bytes of a record that failed to decode.
    corrupt: sled::Tree,
    /// Content that crashed a stage before it was queued: content hash →
    /// framed (crash count, last reason).
    suspects: sled::Tree,
    /// Leased messages and when each lease ends (ms). Also the transition
    /// lock: every state change holds it, so index and record agree.
    leases: Mutex<HashMap<QueueId, u64>>,
    /// Group commit for enqueue.
    committer: Committer,
    /// Files for bodies too large to keep inline.
    spool: Spool,
    /// Wakes the scheduler when something becomes due.
    wake: Notify,
}

impl Inner {
    fn index_tree(&self, state: State) -> Option<&sled::Tree> {
        match state {
            State::Ready | State::Deferred => Some(&self.due),
            State::Held => Some(&self.held),
            State::Quarantine => Some(&self.quarantine),
            State::Leased => None,
        }
    }

    /// The key of `r`'s entry in its state's index tree.
    fn index_key(r: &Record) -> Vec<u8> {
        match r.state {
            State::Ready | State::Deferred => due_key(r.due_ms, &r.envelope.id).to_vec(),
            _ => r.envelope.id.0.to_vec(),
        }
    }

    fn set_index(&self, r: &Record, present: bool) -> Result<(), QueueError> {
        if let Some(t) = self.index_tree(r.state) {
            let k = Self::index_key(r);
            if present {
                t.insert(k, &[][..]).storage()?;
            } else {
                t.remove(k).storage()?;
            }
        }
        Ok(())
    }

    fn read(&self, id: QueueId) -> Result<Record, QueueError> {
        let raw = self
            .messages
            .get(id.0)
            .storage()?
            .ok_or(QueueError::NotFound(id))?;
        record::decode(&raw).map_err(|reason| QueueError::Corrupt {
            id: id.to_string(),
            reason,
        })
    }
}

impl Queue {
    /// Opens (or creates) the queue and recovers it. See [`Recovery`].
    pub fn open(opts: &QueueOptions) -> Result<(Queue, Recovery), QueueError> {
        let db = sled::Config::new()
            .path(&opts.path)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(Some(200))
            .open()
            .storage()?;
        let tree = |n: &str| db.open_tree(n).storage();
        let inner = Inner {
            messages: tree("messages")?,
            bodies: tree("bodies")?,
            due: tree("due")?,
            held: tree("held")?,
            quarantine: tree("quarantine")?,
            corrupt: tree("corrupt")?,
            suspects: tree("suspects")?,
            leases: Mutex::new(HashMap::new()),
            committer: Committer::start(db.clone(), &opts.path.join("db")),
            spool: Spool::open(&opts.path.join("spool"))?,
            wake: Notify::new(),
            db,
        };
        let q = Queue {
            inner: Arc::new(inner),
        };
        let rec = q.recover()?;
        Ok((q, rec))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<QueueId, u64>> {
        self.inner.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds every index from the records; see the module docs.
    fn recover(&self) -> Result<Recovery, QueueError> {
        let i = &self.inner;
        for t in [&i.due, &i.held, &i.quarantine] {
            t.clear().storage()?;
        }
        let now = postern_core::now_ms();
        let mut rec = Recovery::default();
        for item in i.messages.iter() {
            let (k, raw) = item.storage()?;
            let mut r = match record::decode(&raw) {
                Ok(r) if r.envelope.id.0[..] == k[..] => r,
                other => {
                    let reason = other.err().unwrap_or_else(|| Found::KeyMismatch.into());
                    tracing::error!(key = ?k, %reason, "queue record failed to decode; quarantined");
                    i.corrupt.insert(&k, raw).storage()?;
                    i.messages.remove(&k).storage()?;
                    rec.corrupt += 1;
                    continue;
                }
            };
            if r.state == State::Leased {
                // Not written by this version; kept for records that say so.
                r.state = if r.attempts == 0 {
                    State::Ready
                } else {
                    State::Deferred
                };
                r.due_ms = r.due_ms.min(now);
                i.messages.insert(&k, record::encode(&r)).storage()?;
            }
            i.set_index(&r, true)?;
            rec.messages += 1;
        }
        for item in i.bodies.iter() {
            let (k, _) = item.storage()?;
            if !i.messages.contains_key(&k).storage()? && !i.corrupt.contains_key(&k).storage()? {
                i.bodies.remove(&k).storage()?;
                rec.orphans += 1;
            }
        }
        for id in i.spool.ids()? {
            if !i.bodies.contains_key(id.0).storage()? {
                i.spool.remove(id);
                rec.orphans += 1;
            }
        }
        i.db.flush().storage()?;
        Ok(rec)
    }

    /// Stores a new message durably; returns once it is on disk.
    pub async fn enqueue(&self, envelope: Envelope, body: &[u8]) -> Result<(), QueueError> {
        let r = Record::new(envelope, postern_core::now_ms());
        self.store_new(r, body).await
    }

    /// Stores a new message durably in the held state (policy holds).
    pub async fn enqueue_held(&self, envelope: Envelope, body: &[u8]) -> Result<(), QueueError> {
        let mut r = Record::new(envelope, postern_core::now_ms());
        r.state = State::Held;
        self.store_new(r, body).await
    }

    /// Stores a new message straight into quarantine, durably.
    pub async fn enqueue_quarantined(
        &self,
        envelope: Envelope,
        body: &[u8],
        info: QuarantineInfo,
        crashes: u32,
    ) -> Result<(), QueueError> {
        let mut r = Record::new(envelope, postern_core::now_ms());
        r.state = State::Quarantine;
        r.quarantine = Some(info);
        r.crashes = crashes;
        self.store_new(r, body).await
    }

    async fn store_new(&self, r: Record, body: &[u8]) -> Result<(), QueueError> {
        let id = r.envelope.id;
        let i = &self.inner;
        let stored = if body.len() > INLINE_MAX {
            let q = self.clone();
            let owned = body.to_vec();
            tokio::task::spawn_blocking(move || q.inner.spool.write_durable(id, &owned))
                .await
                .map_err(|e| QueueError::Storage(StorageError::with_context("spool task", e)))??;
            record::frame_external(body)
        } else {
            record::frame_inline(body)
        };
        i.bodies.insert(id.0, stored).storage()?;
        i.messages.insert(id.0, record::encode(&r)).storage()?;
        if let Err(e) = i.committer.flush().await {
            // Not durable, so the client hears 4xx and will send it again:
            // take it back, or it would be delivered twice. (A crash right
            // here leaves a record that recovery delivers: at least once.)
            let _ = i.messages.remove(id.0);
            let _ = i.bodies.remove(id.0);
            i.spool.remove(id);
            return Err(QueueError::Flush(e));
        }
        // Only a durable message becomes visible to the scheduler (indexes
        // are derived from records; recovery rebuilds them).
        {
            // The record as it is now: an admin action may have changed it
            // (e.g. `retry`) while the flush ran.
            let _guard = self.lock();
            match i.read(id) {
                Ok(current) => i.set_index(&current, true)?,
                Err(QueueError::NotFound(_)) => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        if r.state == State::Ready {
            i.wake.notify_one();
        }
        Ok(())
    }

    /// Crashes charged to content with this hash, and the last reason.
    pub fn suspect(&self, hash: u64) -> Result<Option<(u32, String)>, QueueError> {
        let Some(raw) = self.inner.suspects.get(hash.to_be_bytes()).storage()? else {
            return Ok(None);
        };
        let p = record::unframe(&raw).map_err(|reason| QueueError::Corrupt {
            id: format!("suspect {hash:016x}"),
            reason,
        })?;
        if p.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        Ok(Some((n, String::from_utf8_lossy(&p[4..]).into_owned())))
    }

    /// Charges one more crash to content `hash`; returns the new count.
    pub fn charge_suspect(&self, hash: u64, reason: &str) -> Result<u32, QueueError> {
        let _guard = self.lock();
        let n = self.suspect(hash).ok().flatten().map_or(0, |(n, _)| n) + 1;
        let mut p = n.to_le_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        self.inner
            .suspects
            .insert(hash.to_be_bytes(), record::frame(&p))
            .storage()?;
        Ok(n)
    }

    /// Forgets a content hash (it went through, or was quarantined).
    pub fn clear_suspect(&self, hash: u64) -> Result<(), QueueError> {
        self.inner.suspects.remove(hash.to_be_bytes()).storage()?;
        Ok(())
    }

    /// Reads, changes and rewrites one record, moving its index entry to
    /// match its new state. A leased message stays leased unless `f` moves
    /// it to another state.
    pub fn update(
        &self,
        id: QueueId,
        f: &dyn Fn(&mut Record) -> Result<(), QueueError>,
    ) -> Result<Record, QueueError> {
        let mut leases = self.lock();
        let i = &self.inner;
        let mut old = i.read(id)?;
        if leases.contains_key(&id) {
            old.state = State::Leased;
        }
        let mut new = old.clone();
        f(&mut new)?;
        if old.state == State::Leased && new.state != State::Leased {
            leases.remove(&id);
        }
        i.set_index(&old, false)?;
        i.set_index(&new, true)?;
        i.messages.insert(id.0, record::encode(&new)).storage()?;
        drop(leases);
        if matches!(new.state, State::Ready | State::Deferred) {
            i.wake.notify_one();
        }
        Ok(new)
    }

    /// Removes a message entirely (delivered, bounced or deleted).
    pub fn remove(&self, id: QueueId) -> Result<(), QueueError> {
        let mut leases = self.lock();
        let i = &self.inner;
        leases.remove(&id);
        if let Ok(old) = i.read(id) {
            i.set_index(&old, false)?;
        }
        i.messages.remove(id.0).storage()?;
        i.corrupt.remove(id.0).storage()?;
        i.bodies.remove(id.0).storage()?;
        i.spool.remove(id);
        Ok(())
    }

    /// Leases up to `max` messages due at or before `now_ms` until
    /// `now_ms + lease_ms`, oldest due first.
    pub fn claim_due(
        &self,
        now_ms: u64,
        max: usize,
        lease_ms: u64,
    ) -> Result<Vec<Record>, QueueError> {
        let mut leases = self.lock();
        let i = &self.inner;
        let mut out = Vec::new();
        let keys: Vec<_> = i
            .due
            .range(..=due_upper(now_ms))
            .keys()
            .take(max)
            .collect::<Result<Vec<_>, sled::Error>>()
            .storage()?;
        for k in keys {
            i.due.remove(&k).storage()?;
            let Some((_, id)) = split_due_key(&k) else {
                continue;
            };
            if leases.contains_key(&id) {
                continue; // a second index entry of a message being delivered
            }
            match i.read(id) {
                Ok(mut r) if matches!(r.state, State::Ready | State::Deferred) => {
                    let until = now_ms.saturating_add(lease_ms);
                    leases.insert(id, until);
                    r.state = State::Leased;
                    r.lease_until_ms = until;
                    out.push(r);
                }
                Ok(_) | Err(QueueError::NotFound(_)) => {} // stale index entry
                Err(QueueError::Corrupt { id, reason }) => {
                    tracing::error!(%id, %reason, "corrupt record in the due index; quarantined");
                    if let Some(raw) = i.messages.remove(&k[8..]).storage()? {
                        i.corrupt.insert(&k[8..], raw).storage()?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Leased messages whose lease has run out by `now_ms` become due now.
    pub fn expire_leases(&self, now_ms: u64) -> Result<usize, QueueError> {
        let mut leases = self.lock();
        let expired: Vec<QueueId> = leases
            .iter()
            .filter(|(_, until)| **until <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            leases.remove(id);
            // Indexed under the record's own due time, the key every later
            // transition removes (a key of its own would be left behind and
            // skip the next retry's backoff).
            match self.inner.read(*id) {
                Ok(r) => self.inner.set_index(&r, true)?,
                Err(QueueError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired.len())
    }

    /// The message body, checksum verified (inline or spooled).
    pub fn body(&self, id: QueueId) -> Result<Vec<u8>, QueueError> {
        let i = &self.inner;
        let raw = i
            .bodies
            .get(id.0)
            .storage()?
            .ok_or(QueueError::NotFound(id))?;
        let corrupt = |reason: Corruption| QueueError::Corrupt {
            id: id.to_string(),
            reason,
        };
        match record::unframe_body(&raw).map_err(corrupt)? {
            record::StoredBody::Inline(b) => Ok(b.to_vec()),
            record::StoredBody::External { len, crc } => {
                let b = i
                    .spool
                    .read(id)
                    .map_err(|e| corrupt(Found::SpoolFile(e).into()))?;
                if b.len() as u64 != len || crc32fast::hash(&b) != crc {
                    return Err(corrupt(Found::SpoolMismatch.into()));
                }
                Ok(b)
            }
        }
    }

    /// One record, with its live state (Leased while being delivered).
    pub fn get(&self, id: QueueId) -> Result<Record, QueueError> {
        let leases = self.lock();
        let mut r = self.inner.read(id)?;
        if let Some(until) = leases.get(&id) {
            r.state = State::Leased;
            r.lease_until_ms = *until;
        }
        Ok(r)
    }

    /// Every decodable record (optionally in one state), in id order.
    pub fn list(&self, state: Option<State>) -> Result<Vec<Record>, QueueError> {
        let leased: HashMap<QueueId, u64> = self.lock().clone();
        let mut out = Vec::new();
        for item in self.inner.messages.iter() {
            let (_, raw) = item.storage()?;
            if let Ok(mut r) = record::decode(&raw) {
                if let Some(until) = leased.get(&r.envelope.id) {
                    r.state = State::Leased;
                    r.lease_until_ms = *until;
                }
                if state.is_none_or(|s| s == r.state) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Raw records that failed to decode: (key as hex, reason).
    pub fn list_corrupt(&self) -> Result<Vec<(String, String)>, QueueError> {
        let mut out = Vec::new();
        for item in self.inner.corrupt.iter() {
            let (k, raw) = item.storage()?;
            let key: String = k.iter().map(|b| format!("{b:02x}")).collect();
            let reason = match record::decode(&raw) {
                Err(e) => e.to_string(),
                Ok(_) => Found::KeyMismatch.to_string(),
            };
            out.push((key, reason));
        }
        Ok(out)
    }

    /// Counts by state, from the index trees.
    pub fn counts(&self) -> StateCounts {
        let i = &self.inner;
        StateCounts {
            ready_or_deferred: i.due.len(),
            leased: self.lock().len(),
            held: i.held.len(),
            quarantine: i.quarantine.len() + i.corrupt.len(),
        }
    }

    /// When the earliest due message is due, if any.
    pub fn next_due_ms(&self) -> Option<u64> {
        let (k, _) = self.inner.due.first().ok()??;
        split_due_key(&k).map(|(ms, _)| ms)
    }

    /// Resolves when something may have become due.
    pub async fn wait_for_work(&self) {
        self.inner.wake.notified().await
    }

    /// Moves a message to quarantine with the reason.
    pub fn quarantine(&self, id: QueueId, info: QuarantineInfo) -> Result<Record, QueueError> {
        self.update(id, &|r| {
            r.state = State::Quarantine;
            r.quarantine = Some(info.clone());
            Ok(())
        })
    }

    /// Makes a held or quarantined message due now, crash counter reset.
    pub fn release(&self, id: QueueId) -> Result<Record, QueueError> {
        self.update(id, &|r| match r.state {
            State::Held | State::Quarantine => {
                r.state = if r.attempts == 0 {
                    State::Ready
                } else {
                    State::Deferred
                };
                r.due_ms = postern_core::now_ms();
                r.crashes = 0;
                r.quarantine = None;
                Ok(())
            }
            state => Err(QueueError::WrongState {
                id,
                state,
                action: "release",
            }),
        })
    }

    /// Makes a waiting (ready or deferred) message due now: "deliver now".
    pub fn retry(&self, id: QueueId) -> Result<Record, QueueError> {
        self.update(id, &|r| match r.state {
            State::Ready | State::Deferred => {
                r.due_ms = postern_core::now_ms();
                Ok(())
            }
            state => Err(QueueError::WrongState {
                id,
                state,
                action: "retry",
            }),
        })
    }

    /// Stops a waiting message until it is released.
    pub fn hold(&self, id: QueueId) -> Result<Record, QueueError> {
        self.update(id, &|r| match r.state {
            State::Ready | State::Deferred => {
                r.state = State::Held;
                Ok(())
            }
            state => Err(QueueError::WrongState {
                id,
                state,
                action: "hold",
            }),
        })
    }

    /// Flushes everything to disk (shutdown, tests).
    pub async fn flush(&self) -> Result<(), QueueError> {
        self.inner
            .committer
            .flush()
            .await
            .map_err(QueueError::Flush)
    }
}
