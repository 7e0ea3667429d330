//! [`Queue`]: the durable message store and its state transitions.
//!
//! Trees: `messages` (id → [`Record`]), `bodies` (id → where the body is:
//! a body segment, see `segments`) and one index tree per waiting state:
//! `due` (`due ++ id`, for Ready and Deferred), `held`, `quarantine`;
//! `corrupt` keeps raw records that failed to decode; `meta` holds the
//! clean-close snapshot.
//! Leases live in memory: a lease never outlives its process, so there is
//! nothing to persist, and a leased message's record still says when it was
//! due. Records are the truth and indexes are derived: [`Queue::open`]
//! rebuilds every index from the records (so every message leased by a dead
//! process is due again) and sweeps bodies whose record never landed.
//! That is why the hot path needs no multi-tree transaction: writes go body,
//! then record, then index, and a crash between them leaves something
//! recovery repairs. One mutex orders state transitions within the process.
//!
//! Opening: a queue closed cleanly ([`Queue::close`]) left a snapshot of its
//! counters ([`Shape`]) and of its segments' live bodies, and indexes that
//! agree with the records; the open takes the snapshot (removing it
//! durably first, so a crash after it is recovered in full) and is ready in
//! O(1). Otherwise the open walks every record, as above.
//!
//! Durability: [`Queue::enqueue`] returns only after a (group-committed)
//! flush. Other transitions rely on sled's periodic flush: losing one on a
//! crash means a message is delivered again (at-least-once), never lost.

use crate::commit::Committer;
use crate::error::{QueueError, SledResult, StorageError};
use crate::keys::{due_key, due_upper, split_due_key};
use crate::record::{self, Corruption, Found, QuarantineInfo, Record, State};
use crate::segments::{self, Live, Segments};
use crate::spool::Spool;
use crate::tally::Shape;
use postern_core::{Envelope, QueueId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Body segments are sealed at this size unless [`QueueOptions`] says
/// otherwise: small enough that a drained segment gives its space back
/// soon, large enough that a million messages need a few hundred files.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// The `meta` key of the clean-close snapshot.
const CLEAN_KEY: &[u8] = b"clean";

/// How to open the queue.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Directory of the database (created if missing).
    pub path: PathBuf,
    /// sled page cache in bytes.
    pub cache_bytes: u64,
    /// Size at which a body segment is sealed ([`DEFAULT_SEGMENT_SIZE`]).
    pub segment_size: u64,
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
    /// Whether every record was read: the queue was not closed cleanly
    /// (or is new). A clean close leaves a snapshot and the open is O(1).
    pub walked: bool,
    /// After a walk, bodies in segments that no record refers to (being
    /// received at a crash and never acknowledged, or records the store
    /// lost to damage), saved in `<queue>/lost/<id>.eml` before their
    /// segment could be deleted.
    pub saved_bodies: usize,
    /// Damaged stretches of segment files, by file and offset.
    pub damaged: Vec<String>,
    /// Segment files that records point into but that are missing or
    /// shorter than the bodies in them (those messages are quarantined
    /// when delivery reads them).
    pub missing: Vec<String>,
}

/// What a clean close leaves for the next open.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    shape: Shape,
    /// (segment, live bodies, live bytes).
    live: Vec<(u32, u64, u64)>,
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
    /// The clean-close snapshot, while the queue is closed.
    meta: sled::Tree,
    /// Other durable state kept beside the queue (MTA-STS policies, TLS
    /// report counts): key → framed bytes.
    state: sled::Tree,
    /// Leases and counters. Also the transition lock: every state change
    /// holds it, so index, record and counters agree.
    guarded: Mutex<Guarded>,
    /// Group commit for enqueue.
    committer: Committer,
    /// Body files of versions before segments (read and removed only).
    spool: Spool,
    /// Body segments.
    segments: Arc<Segments>,
    /// Wakes the scheduler when something becomes due.
    wake: Notify,
    /// [`Queue::close`] has written its snapshot: a later transition
    /// must take it back.
    closed: AtomicBool,
    /// When (ms) a write last failed for want of space; 0: not since the
    /// last clear.
    no_space_ms: AtomicU64,
}

/// Segment files that live bodies are in but that are missing, or shorter
/// than the furthest body in them, named with the number of bodies.
fn missing_segments(
    dir: &std::path::Path,
    bodies: &sled::Tree,
    live: &HashMap<u32, crate::segments::Live>,
) -> Vec<String> {
    let mut short = Vec::new();
    let mut ends: HashMap<u32, u64> = HashMap::new();
    let mut check = |seg: u32, end: u64| {
        let e = ends.entry(seg).or_default();
        *e = (*e).max(end);
    };
    // Only when a file looks wrong is the bodies tree walked for ends.
    let suspicious: Vec<u32> = live
        .keys()
        .copied()
        .filter(|seg| {
            let len = std::fs::metadata(dir.join(format!("{seg:08}.seg"))).map(|m| m.len());
            len.map_or(true, |l| l < live[seg].bytes)
        })
        .collect();
    if suspicious.is_empty() {
        return short;
    }
    for (_, v) in bodies.iter().flatten() {
        if let Ok(record::StoredBody::Segment(at)) = record::unframe_body(&v) {
            if suspicious.contains(&at.seg) {
                check(at.seg, at.off + at.len);
            }
        }
    }
    for seg in suspicious {
        let path = dir.join(format!("{seg:08}.seg"));
        let have = std::fs::metadata(&path).map(|m| m.len()).ok();
        let n = live[&seg].bodies;
        match have {
            None => short.push(format!(
                "{} is missing ({n} message bodies)",
                path.display()
            )),
            Some(l) if l < ends.get(&seg).copied().unwrap_or(0) => short.push(format!(
                "{} is {l} bytes, shorter than its {n} message bodies need",
                path.display()
            )),
            Some(_) => {}
        }
    }
    short
}

/// The key [`Queue::probe`] writes in `meta`.
const PROBE_KEY: &[u8] = b"probe";

/// What the transition lock guards.
#[derive(Default)]
struct Guarded {
    /// Leased messages and when each lease ends (ms).
    leases: HashMap<QueueId, u64>,
    /// Messages by live state, minute and domain.
    shape: Shape,
}

impl Guarded {
    /// The live state of `r` (Leased while leased).
    fn live(&self, r: &Record) -> State {
        if self.leases.contains_key(&r.envelope.id) {
            State::Leased
        } else {
            r.state
        }
    }
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

/// The trees recovery works on, before the queue exists.
struct Trees {
    messages: sled::Tree,
    bodies: sled::Tree,
    due: sled::Tree,
    held: sled::Tree,
    quarantine: sled::Tree,
    corrupt: sled::Tree,
}

impl Trees {
    /// Makes sure `r` has its index entry: a lookup, and a write only when
    /// it is missing (a message leased when the process died, or a
    /// transition cut short).
    fn ensure_index(&self, r: &Record) -> Result<(), QueueError> {
        let t = match r.state {
            State::Ready | State::Deferred => &self.due,
            State::Held => &self.held,
            State::Quarantine => &self.quarantine,
            State::Leased => return Ok(()),
        };
        let k = Inner::index_key(r);
        if !t.contains_key(&k).storage()? {
            t.insert(k, &[][..]).storage()?;
        }
        Ok(())
    }

    /// The full walk: completes the indexes and rebuilds the counters from
    /// the records (so every message leased by a dead process is due again),
    /// sweeps bodies whose record never landed, and counts each segment's
    /// live bodies. See the module docs.
    fn rebuild(&self, spool: &Spool) -> Result<(Recovery, Shape, HashMap<u32, Live>), QueueError> {
        // Indexes are completed, not cleared and rebuilt: a million
        // lookups cost a fraction of a million writes. An entry left stale
        // by a transition cut short is dropped when it comes due
        // (`claim_due` checks it against the record).
        let now = postern_core::now_ms();
        let mut rec = Recovery {
            walked: true,
            ..Recovery::default()
        };
        let mut shape = Shape::default();
        for item in self.messages.iter() {
            let (k, raw) = item.storage()?;
            let mut r = match record::decode(&raw) {
                Ok(r) if r.envelope.id.0[..] == k[..] => r,
                other => {
                    let reason = other.err().unwrap_or_else(|| Found::KeyMismatch.into());
                    tracing::error!(key = ?k, %reason, "queue record failed to decode; quarantined");
                    self.corrupt.insert(&k, raw).storage()?;
                    self.messages.remove(&k).storage()?;
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
                self.messages.insert(&k, record::encode(&r)).storage()?;
            }
            self.ensure_index(&r)?;
            shape.apply(&r, r.state, true);
            rec.messages += 1;
        }
        let mut live: HashMap<u32, Live> = HashMap::new();
        for item in self.bodies.iter() {
            let (k, raw) = item.storage()?;
            if !self.messages.contains_key(&k).storage()?
                && !self.corrupt.contains_key(&k).storage()?
            {
                self.bodies.remove(&k).storage()?;
                rec.orphans += 1;
                continue;
            }
            if let Ok(record::StoredBody::Segment(at)) = record::unframe_body(&raw) {
                let l = live.entry(at.seg).or_default();
                l.bodies += 1;
                l.bytes += segments::BODY_HEADER + at.len;
            }
        }
        for id in spool.ids()? {
            if !self.bodies.contains_key(id.0).storage()? {
                spool.remove(id);
                rec.orphans += 1;
            }
        }
        Ok((rec, shape, live))
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
        let trees = Trees {
            messages: tree("messages")?,
            bodies: tree("bodies")?,
            due: tree("due")?,
            held: tree("held")?,
            quarantine: tree("quarantine")?,
            corrupt: tree("corrupt")?,
        };
        let meta = tree("meta")?;
        let spool = Spool::open(&opts.path.join("spool"))?;
        // The snapshot is good for this one open: gone (durably) before
        // anything changes, so a crash from here on is recovered in full.
        let snapshot = match meta.remove(CLEAN_KEY).storage()? {
            Some(raw) => {
                db.flush().storage()?;
                record::unframe(&raw)
                    .ok()
                    .and_then(|p| serde_json::from_slice::<Snapshot>(p).ok())
            }
            None => None,
        };
        let (mut rec, mut shape, live) = match snapshot {
            Some(s) => {
                let live = s
                    .live
                    .iter()
                    .map(|&(seg, bodies, bytes)| (seg, Live { bodies, bytes }))
                    .collect();
                let messages = s
                    .shape
                    .states
                    .values()
                    .map(|st| st.messages.values().sum::<u64>())
                    .sum::<u64>();
                let rec = Recovery {
                    messages: messages as usize,
                    ..Recovery::default()
                };
                (rec, s.shape, live)
            }
            None => trees.rebuild(&spool)?,
        };
        shape.corrupt = trees.corrupt.len() as u64;
        let bodies_dir = opts.path.join("bodies");
        if rec.walked {
            // Before any segment may be deleted as holding nothing: save
            // what no record refers to. Never lose mail to a lost record.
            let bodies = &trees.bodies;
            let mut referenced = |id: &QueueId| bodies.contains_key(id.0).unwrap_or(true);
            let s = crate::salvage::salvage(&bodies_dir, &opts.path.join("lost"), &mut referenced)?;
            rec.saved_bodies = s.saved;
            rec.damaged = s.damaged;
        }
        rec.missing = missing_segments(&bodies_dir, &trees.bodies, &live);
        let (segments, removed) = Segments::open(&bodies_dir, opts.segment_size, live)?;
        rec.orphans += removed;
        let segments = Arc::new(segments);
        db.flush().storage()?;
        let inner = Inner {
            messages: trees.messages,
            bodies: trees.bodies,
            due: trees.due,
            held: trees.held,
            quarantine: trees.quarantine,
            corrupt: trees.corrupt,
            suspects: tree("suspects")?,
            state: tree("state")?,
            meta,
            guarded: Mutex::new(Guarded {
                leases: HashMap::new(),
                shape,
            }),
            committer: Committer::start(db.clone(), &opts.path.join("db"), segments.clone()),
            spool,
            segments,
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            no_space_ms: AtomicU64::new(0),
        };
        let q = Queue {
            inner: Arc::new(inner),
        };
        Ok((q, rec))
    }

    fn lock(&self) -> MutexGuard<'_, Guarded> {
        let g = self.inner.guarded.lock().unwrap_or_else(|p| p.into_inner());
        // A load first: the swap (a write to a shared line) only in the
        // rare case that a close happened; every transition takes this lock.
        if self.inner.closed.load(Ordering::Acquire)
            && self.inner.closed.swap(false, Ordering::AcqRel)
        {
            // A transition after close: the snapshot no longer holds.
            // Removed before the transition's own writes, so no flush can
            // make the transition durable without this.
            if let Err(e) = self.inner.meta.remove(CLEAN_KEY) {
                tracing::error!(error = %e, "cannot withdraw the clean-close snapshot");
            }
        }
        g
    }

    /// Closes cleanly: leased messages go back to their index, then the
    /// counters and the segments' live bodies are stored with a final
    /// flush, so the next open need not walk the queue. Call it last; a
    /// transition after it withdraws the snapshot (and costs the next open
    /// a walk, nothing else).
    pub async fn close(&self) -> Result<(), QueueError> {
        {
            let mut g = self.lock();
            let i = &self.inner;
            let leased: Vec<QueueId> = g.leases.keys().copied().collect();
            for id in leased {
                g.leases.remove(&id);
                match i.read(id) {
                    Ok(r) => {
                        i.set_index(&r, true)?;
                        g.shape.moved(&r, State::Leased, &r, r.state);
                    }
                    Err(QueueError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let snap = Snapshot {
                shape: g.shape.clone(),
                live: i
                    .segments
                    .live()
                    .into_iter()
                    .map(|(seg, l)| (seg, l.bodies, l.bytes))
                    .collect(),
            };
            let raw = serde_json::to_vec(&snap)
                .map_err(|e| QueueError::Storage(StorageError::with_context("snapshot", e)))?;
            i.meta.insert(CLEAN_KEY, record::frame(&raw)).storage()?;
            i.closed.store(true, Ordering::Release);
        }
        self.flush().await
    }

    /// Stores a new message durably; returns once it is on disk.
    pub async fn enqueue(&self, envelope: Envelope, body: &[u8]) -> Result<(), QueueError> {
        let r = Record::new(envelope, postern_core::now_ms());
        self.store_new(r, body).await
    }

    /// Stores a message taken over from a peer gateway: due now, with the
    /// attempts it already had (its envelope keeps its arrival time), so
    /// the retry schedule and `max_age` continue.
    pub async fn enqueue_transferred(
        &self,
        envelope: Envelope,
        body: &[u8],
        attempts: u32,
    ) -> Result<(), QueueError> {
        let mut r = Record::new(envelope, postern_core::now_ms());
        r.attempts = attempts;
        if attempts > 0 {
            r.state = State::Deferred;
        }
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
        let stored = self.store_new_inner(r, body).await;
        if let Err(e) = &stored {
            if e.is_no_space() {
                let now = postern_core::now_ms().max(1);
                self.inner.no_space_ms.store(now, Ordering::Relaxed);
            }
        }
        stored
    }

    /// When (ms since the epoch) a new message last failed to be stored
    /// for want of space, unless [`Queue::clear_no_space`] was called
    /// since: back pressure refuses new mail meanwhile.
    pub fn no_space_since(&self) -> Option<u64> {
        Some(self.inner.no_space_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Writes and removes a probe record, flushed like a message: `Ok` when
    /// the store takes writes again. sled keeps the first I/O error of its
    /// log and fails every later operation with it, space or not: such a
    /// store answers `Err` here for good and must be reopened (the gateway
    /// restarts for that).
    pub async fn probe(&self) -> Result<(), QueueError> {
        let i = &self.inner;
        i.meta.insert(PROBE_KEY, &[][..]).storage()?;
        i.meta.remove(PROBE_KEY).storage()?;
        i.committer.flush().await.map_err(QueueError::Flush)
    }

    /// Forgets the last want of space (the caller saw space return).
    pub fn clear_no_space(&self) {
        self.inner.no_space_ms.store(0, Ordering::Relaxed);
    }

    async fn store_new_inner(&self, r: Record, body: &[u8]) -> Result<(), QueueError> {
        let id = r.envelope.id;
        let i = &self.inner;
        // Appended under the segment lock; durable with the next group
        // commit, which syncs segments before it flushes records.
        let at = i.segments.append(id, body)?;
        {
            let mut g = self.lock();
            let written = i
                .bodies
                .insert(id.0, record::frame_segment(at))
                .and_then(|_| i.messages.insert(id.0, record::encode(&r)))
                .storage();
            if let Err(e) = written {
                // Nothing points at the appended bytes: give them back.
                let _ = i.bodies.remove(id.0);
                i.segments.release(at);
                return Err(e);
            }
            g.shape.apply(&r, r.state, true);
        }
        if let Err(e) = i.committer.flush().await {
            // Not durable, so the client hears 4xx and will send it again:
            // take it back, or it would be delivered twice. (A crash right
            // here leaves a record that recovery delivers: at least once.)
            let _ = self.remove(id);
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
        if matches!(r.state, State::Ready | State::Deferred) {
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

    /// The bytes stored under `key` in the state tree (MTA-STS policies,
    /// TLS report counts); a damaged value reads as absent.
    pub fn state_get(&self, key: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(raw) = self.inner.state.get(key.as_bytes()).storage()? else {
            return Ok(None);
        };
        Ok(record::unframe(&raw).ok().map(|p| p.to_vec()))
    }

    /// Stores `value` under `key` in the state tree (framed with a CRC).
    pub fn state_put(&self, key: &str, value: &[u8]) -> Result<(), QueueError> {
        self.inner
            .state
            .insert(key.as_bytes(), record::frame(value))
            .storage()?;
        Ok(())
    }

    /// Removes `key` from the state tree.
    pub fn state_remove(&self, key: &str) -> Result<(), QueueError> {
        self.inner.state.remove(key.as_bytes()).storage()?;
        Ok(())
    }

    /// The keys of the state tree that start with `prefix`.
    pub fn state_keys(&self, prefix: &str) -> Result<Vec<String>, QueueError> {
        self.inner
            .state
            .scan_prefix(prefix.as_bytes())
            .keys()
            .map(|k| k.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect::<Result<Vec<_>, _>>()
            .storage()
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
        let mut g = self.lock();
        let i = &self.inner;
        let mut old = i.read(id)?;
        if g.leases.contains_key(&id) {
            old.state = State::Leased;
        }
        let mut new = old.clone();
        f(&mut new)?;
        if old.state == State::Leased && new.state != State::Leased {
            g.leases.remove(&id);
        }
        i.set_index(&old, false)?;
        i.set_index(&new, true)?;
        i.messages.insert(id.0, record::encode(&new)).storage()?;
        g.shape.moved(&old, old.state, &new, new.state);
        drop(g);
        if matches!(new.state, State::Ready | State::Deferred) {
            i.wake.notify_one();
        }
        Ok(new)
    }

    /// Removes a message entirely (delivered, bounced or deleted).
    pub fn remove(&self, id: QueueId) -> Result<(), QueueError> {
        let mut g = self.lock();
        let i = &self.inner;
        if let Ok(old) = i.read(id) {
            let live = g.live(&old);
            i.set_index(&old, false)?;
            g.shape.apply(&old, live, false);
        }
        g.leases.remove(&id);
        i.messages.remove(id.0).storage()?;
        if i.corrupt.remove(id.0).storage()?.is_some() {
            g.shape.corrupt = g.shape.corrupt.saturating_sub(1);
        }
        let body = i.bodies.remove(id.0).storage()?;
        drop(g);
        match body.as_deref().map(record::unframe_body) {
            // Deleted after the flush that makes this removal durable.
            Some(Ok(record::StoredBody::Segment(at))) => i.segments.release(at),
            Some(Ok(record::StoredBody::External { .. })) => i.spool.remove(id),
            _ => {}
        }
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
        let mut g = self.lock();
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
            if g.leases.contains_key(&id) {
                continue; // a second index entry of a message being delivered
            }
            match i.read(id) {
                // Stale: the record is due at another time (its own entry
                // says when), or is not waiting at all.
                Ok(r) if k[..] != due_key(r.due_ms, &id)[..] => {}
                Ok(mut r) if matches!(r.state, State::Ready | State::Deferred) => {
                    let until = now_ms.saturating_add(lease_ms);
                    g.leases.insert(id, until);
                    g.shape.moved(&r, r.state, &r, State::Leased);
                    r.state = State::Leased;
                    r.lease_until_ms = until;
                    out.push(r);
                }
                Ok(_) | Err(QueueError::NotFound(_)) => {} // stale index entry
                Err(QueueError::Corrupt { id, reason }) => {
                    tracing::error!(%id, %reason, "corrupt record in the due index; quarantined");
                    if let Some(raw) = i.messages.remove(&k[8..]).storage()? {
                        i.corrupt.insert(&k[8..], raw).storage()?;
                        g.shape.corrupt += 1;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Leased messages whose lease has run out by `now_ms` become due now.
    pub fn expire_leases(&self, now_ms: u64) -> Result<usize, QueueError> {
        let mut g = self.lock();
        let expired: Vec<QueueId> = g
            .leases
            .iter()
            .filter(|(_, until)| **until <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            g.leases.remove(id);
            // Indexed under the record's own due time, the key every later
            // transition removes (a key of its own would be left behind and
            // skip the next retry's backoff).
            match self.inner.read(*id) {
                Ok(r) => {
                    self.inner.set_index(&r, true)?;
                    g.shape.moved(&r, State::Leased, &r, r.state);
                }
                Err(QueueError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired.len())
    }

    /// The message body, checksum verified (wherever it is stored).
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
            record::StoredBody::Segment(at) => i.segments.read(at).map_err(|e| {
                corrupt(match e {
                    segments::ReadError::Io(e) => Found::SegmentFile(at.seg, e).into(),
                    segments::ReadError::Mismatch => Found::SegmentMismatch(at.seg).into(),
                })
            }),
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
        let g = self.lock();
        let mut r = self.inner.read(id)?;
        if let Some(until) = g.leases.get(&id) {
            r.state = State::Leased;
            r.lease_until_ms = *until;
        }
        Ok(r)
    }

    /// Every decodable record (optionally in one state), in id order.
    pub fn list(&self, state: Option<State>) -> Result<Vec<Record>, QueueError> {
        let (page, _) = self.page(None, usize::MAX, &|r| state.is_none_or(|s| s == r.state))?;
        Ok(page)
    }

    /// Up to `limit` decodable records that `keep` accepts, in id order,
    /// starting after `after` (a cursor: the last id of the previous page).
    /// The second value is the cursor of the next page, `None` at the end.
    /// Records carry their live state (Leased while being delivered).
    pub fn page(
        &self,
        after: Option<QueueId>,
        limit: usize,
        keep: &dyn Fn(&Record) -> bool,
    ) -> Result<(Vec<Record>, Option<QueueId>), QueueError> {
        let leased: HashMap<QueueId, u64> = self.lock().leases.clone();
        let mut out = Vec::new();
        let range = match after {
            Some(id) => self.inner.messages.range((
                std::ops::Bound::Excluded(id.0.to_vec()),
                std::ops::Bound::Unbounded,
            )),
            None => self.inner.messages.iter(),
        };
        for item in range {
            let (_, raw) = item.storage()?;
            let Ok(mut r) = record::decode(&raw) else {
                continue;
            };
            if let Some(until) = leased.get(&r.envelope.id) {
                r.state = State::Leased;
                r.lease_until_ms = *until;
            }
            if keep(&r) {
                if out.len() == limit {
                    let next = out.last().map(|r: &Record| r.envelope.id);
                    return Ok((out, next));
                }
                out.push(r);
            }
        }
        Ok((out, None))
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

    /// Counts by state, from the counters (no walk).
    pub fn counts(&self) -> StateCounts {
        let g = self.lock();
        let n = |s| g.shape.count(s) as usize;
        StateCounts {
            ready_or_deferred: n(State::Ready) + n(State::Deferred),
            leased: n(State::Leased),
            held: n(State::Held),
            quarantine: n(State::Quarantine) + g.shape.corrupt as usize,
        }
    }

    /// The counters: messages by live state, minute of receipt and
    /// recipient domain (see [`Shape`]).
    pub fn shape(&self) -> Shape {
        self.lock().shape.clone()
    }

    /// Disk use of the body segments: (files, bytes of live bodies).
    pub fn segment_usage(&self) -> (usize, u64) {
        let live = self.inner.segments.live();
        (live.len(), live.values().map(|l| l.bytes).sum())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        record::test_envelope(postern_core::now_ms(), &["c@d.test"])
    }

    fn opts(dir: &tempfile::TempDir) -> QueueOptions {
        QueueOptions {
            path: dir.path().join("q"),
            cache_bytes: 8 << 20,
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }

    #[tokio::test]
    async fn a_stale_due_entry_is_dropped_not_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts(&dir);
        let (q, _) = Queue::open(&opts).unwrap();
        let e = env();
        let id = e.id;
        q.enqueue(e, b"x").await.unwrap();
        let later = postern_core::now_ms() + 3_600_000;
        q.update(id, &|r| {
            r.state = State::Deferred;
            r.due_ms = later;
            Ok(())
        })
        .unwrap();
        // What a transition cut short by a crash can leave: an entry for
        // an earlier due time than the record's.
        q.inner.due.insert(due_key(1, &id), &[][..]).unwrap();
        let now = postern_core::now_ms();
        assert!(q.claim_due(now, 10, 1000).unwrap().is_empty());
        assert!(!q.inner.due.contains_key(due_key(1, &id)).unwrap());
        assert_eq!(q.claim_due(later, 10, 1000).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bodies_of_the_layout_before_segments_are_read_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts(&dir);
        let (small, large) = (env(), env());
        let big = vec![b'b'; 100_000];
        {
            // Written the way an older version wrote them: the small body in
            // sled, the large one in a spool file.
            let (q, _) = Queue::open(&opts).unwrap();
            let i = &q.inner;
            i.spool.write_durable(large.id, &big).unwrap();
            i.bodies
                .insert(small.id.0, record::frame_inline(b"inline"))
                .unwrap();
            i.bodies
                .insert(large.id.0, record::frame_external(&big))
                .unwrap();
            for e in [&small, &large] {
                let r = Record::new(e.clone(), 0);
                i.messages.insert(e.id.0, record::encode(&r)).unwrap();
            }
            q.flush().await.unwrap();
        }
        let (q, rec) = Queue::open(&opts).unwrap();
        assert_eq!((rec.messages, rec.orphans), (2, 0));
        assert_eq!(q.body(small.id).unwrap(), b"inline");
        assert_eq!(q.body(large.id).unwrap(), big);
        assert_eq!(
            q.claim_due(postern_core::now_ms(), 10, 1000).unwrap().len(),
            2
        );
        q.remove(large.id).unwrap();
        q.remove(small.id).unwrap();
        assert!(q.inner.spool.ids().unwrap().is_empty());
        assert_eq!(q.counts(), StateCounts::default());
    }
}
