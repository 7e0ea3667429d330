//! [`Queue`]: the durable message store and its state transitions.
//!
//! Trees: `messages` (id → [`Record`]), `bodies` (id → framed body) and one
//! index tree per state: `due` (`due ++ id`, for Ready and Deferred), `leases`
//! (`lease end ++ id`, for Leased), `held`, `quarantine`; `corrupt` keeps raw
//! records that failed to decode. Records are the truth and the indexes are
//! derived: every transition is one sled transaction that rewrites the record
//! and moves its index entry ([`Queue::update`]), and [`Queue::open`] rebuilds
//! all indexes from the records, turning every leased message due again.
//!
//! Durability: [`Queue::enqueue`] returns only after a (group-committed)
//! flush. Other transitions rely on sled's periodic flush: losing one on a
//! crash means a message is delivered again (at-least-once), never lost.

use crate::commit::Committer;
use crate::keys::{due_key, due_upper, split_due_key};
use crate::record::{self, QuarantineInfo, Record, State};
use crate::QueueError;
use postern_core::{Envelope, QueueId};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;

/// How to open the queue.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub path: PathBuf,
    /// sled page cache in bytes.
    pub cache_bytes: u64,
}

/// What [`Queue::open`] found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Messages in the queue after recovery.
    pub messages: usize,
    /// Leased messages made due again.
    pub released_leases: usize,
    /// Records that failed to decode and were moved to quarantine.
    pub corrupt: usize,
}

/// Message counts by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateCounts {
    pub ready_or_deferred: usize,
    pub leased: usize,
    pub held: usize,
    pub quarantine: usize,
}

/// The queue. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    messages: sled::Tree,
    bodies: sled::Tree,
    due: sled::Tree,
    leases: sled::Tree,
    held: sled::Tree,
    quarantine: sled::Tree,
    corrupt: sled::Tree,
    /// Group commit for enqueue.
    committer: Committer,
    /// Wakes the scheduler when something becomes due.
    wake: Notify,
}

type Trees<'a> = &'a (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

/// The index entry a record in a given state has.
enum Index {
    Due([u8; 20]),
    Lease([u8; 20]),
    Held,
    Quarantine,
}

fn index_of(r: &Record) -> Index {
    let id = &r.envelope.id;
    match r.state {
        State::Ready | State::Deferred => Index::Due(due_key(r.due_ms, id)),
        State::Leased => Index::Lease(due_key(r.lease_until_ms, id)),
        State::Held => Index::Held,
        State::Quarantine => Index::Quarantine,
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<QueueError>>;

fn set_index(t: Trees<'_>, r: &Record, present: bool) -> TxResult<()> {
    let (_, _, due, leases, held, quarantine) = t;
    let id = r.envelope.id.0;
    let (tree, key): (&TransactionalTree, Vec<u8>) = match index_of(r) {
        Index::Due(k) => (due, k.to_vec()),
        Index::Lease(k) => (leases, k.to_vec()),
        Index::Held => (held, id.to_vec()),
        Index::Quarantine => (quarantine, id.to_vec()),
    };
    if present {
        tree.insert(key, &[][..])?;
    } else {
        tree.remove(key)?;
    }
    Ok(())
}

fn unwrap_tx<T>(r: Result<T, TransactionError<QueueError>>) -> Result<T, QueueError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => QueueError::Storage(e.to_string()),
    })
}

impl Queue {
    /// Opens (or creates) the queue and recovers it. See [`Recovery`].
    pub fn open(opts: &QueueOptions) -> Result<(Queue, Recovery), QueueError> {
        let db = sled::Config::new()
            .path(&opts.path)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(Some(200))
            .open()?;
        let tree = |n: &str| db.open_tree(n);
        let inner = Inner {
            messages: tree("messages")?,
            bodies: tree("bodies")?,
            due: tree("due")?,
            leases: tree("leases")?,
            held: tree("held")?,
            quarantine: tree("quarantine")?,
            corrupt: tree("corrupt")?,
            committer: Committer::start(db.clone()),
            wake: Notify::new(),
            db,
        };
        let q = Queue {
            inner: Arc::new(inner),
        };
        let rec = q.recover()?;
        Ok((q, rec))
    }

    /// Rebuilds every index from the records; see the module docs.
    fn recover(&self) -> Result<Recovery, QueueError> {
        let i = &self.inner;
        for t in [&i.due, &i.leases, &i.held, &i.quarantine] {
            t.clear()?;
        }
        let now = postern_core::now_ms();
        let mut rec = Recovery::default();
        for item in i.messages.iter() {
            let (k, raw) = item?;
            let mut r = match record::decode(&raw) {
                Ok(r) if r.envelope.id.0[..] == k[..] => r,
                Ok(_) => {
                    self.set_corrupt(&k, &raw)?;
                    rec.corrupt += 1;
                    continue;
                }
                Err(reason) => {
                    tracing::error!(key = ?k, %reason, "queue record failed to decode; quarantined");
                    self.set_corrupt(&k, &raw)?;
                    rec.corrupt += 1;
                    continue;
                }
            };
            if r.state == State::Leased {
                r.state = if r.attempts == 0 {
                    State::Ready
                } else {
                    State::Deferred
                };
                r.due_ms = now;
                i.messages.insert(&k, record::encode(&r))?;
                rec.released_leases += 1;
            }
            match index_of(&r) {
                Index::Due(key) => i.due.insert(key, &[][..])?,
                Index::Lease(key) => i.leases.insert(key, &[][..])?,
                Index::Held => i.held.insert(&k, &[][..])?,
                Index::Quarantine => i.quarantine.insert(&k, &[][..])?,
            };
            rec.messages += 1;
        }
        i.db.flush()?;
        Ok(rec)
    }

    fn set_corrupt(&self, k: &[u8], raw: &[u8]) -> Result<(), QueueError> {
        self.inner.corrupt.insert(k, raw)?;
        self.inner.messages.remove(k)?;
        Ok(())
    }

    /// Stores a new message durably; returns once it is on disk.
    pub async fn enqueue(&self, envelope: Envelope, body: &[u8]) -> Result<(), QueueError> {
        let id = envelope.id;
        let r = Record::new(envelope, postern_core::now_ms());
        let raw = record::encode(&r);
        let framed = record::frame(body);
        let i = &self.inner;
        unwrap_tx(self.trees().transaction(|t| {
            t.0.insert(&id.0[..], raw.as_slice())?;
            t.1.insert(&id.0[..], framed.as_slice())?;
            set_index(t, &r, true)
        }))?;
        i.committer.flush().await.map_err(QueueError::Flush)?;
        i.wake.notify_one();
        Ok(())
    }

    fn trees(
        &self,
    ) -> (
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
    ) {
        let i = &self.inner;
        (
            &i.messages,
            &i.bodies,
            &i.due,
            &i.leases,
            &i.held,
            &i.quarantine,
        )
    }

    /// Reads, changes and rewrites one record atomically, moving its index
    /// entry to match its new state. `f` may run more than once (sled retries
    /// on conflict), so it must only change the record.
    pub fn update(
        &self,
        id: QueueId,
        f: &dyn Fn(&mut Record) -> Result<(), QueueError>,
    ) -> Result<Record, QueueError> {
        let r =
            unwrap_tx(self.trees().transaction(|t| {
                let raw = t.0.get(id.0)?.ok_or(ConflictableTransactionError::Abort(
                    QueueError::NotFound(id),
                ))?;
                let old = record::decode(&raw).map_err(|reason| {
                    ConflictableTransactionError::Abort(QueueError::Corrupt {
                        id: id.to_string(),
                        reason,
                    })
                })?;
                let mut new = old.clone();
                f(&mut new).map_err(ConflictableTransactionError::Abort)?;
                set_index(t, &old, false)?;
                set_index(t, &new, true)?;
                t.0.insert(&id.0[..], record::encode(&new))?;
                Ok(new)
            }))?;
        if matches!(r.state, State::Ready | State::Deferred) {
            self.inner.wake.notify_one();
        }
        Ok(r)
    }

    /// Removes a message entirely (delivered, bounced or deleted).
    pub fn remove(&self, id: QueueId) -> Result<(), QueueError> {
        unwrap_tx(self.trees().transaction(|t| {
            if let Some(raw) = t.0.remove(&id.0[..])? {
                if let Ok(old) = record::decode(&raw) {
                    set_index(t, &old, false)?;
                }
            }
            t.1.remove(&id.0[..])?;
            Ok(())
        }))?;
        self.inner.corrupt.remove(id.0)?;
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
        let mut out = Vec::new();
        let keys: Vec<_> = self
            .inner
            .due
            .range(..=due_upper(now_ms))
            .keys()
            .take(max)
            .collect::<Result<_, _>>()?;
        for k in keys {
            let Some((_, id)) = split_due_key(&k) else {
                self.inner.due.remove(&k)?;
                continue;
            };
            let claimed = self.update(id, &|r| match r.state {
                State::Ready | State::Deferred => {
                    r.state = State::Leased;
                    r.lease_until_ms = now_ms + lease_ms;
                    Ok(())
                }
                state => Err(QueueError::WrongState {
                    id,
                    state,
                    action: "lease",
                }),
            });
            match claimed {
                Ok(r) => out.push(r),
                // Raced with an admin action or a stale index entry: skip.
                Err(QueueError::WrongState { .. }) | Err(QueueError::NotFound(_)) => {
                    self.inner.due.remove(&k)?;
                }
                Err(QueueError::Corrupt { id, reason }) => {
                    tracing::error!(%id, %reason, "corrupt record in the due index; quarantined");
                    self.inner.due.remove(&k)?;
                    if let Some(raw) = self.inner.messages.get(&k[8..])? {
                        self.set_corrupt(&k[8..], &raw)?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Leased messages whose lease has run out by `now_ms` become due now.
    pub fn expire_leases(&self, now_ms: u64) -> Result<usize, QueueError> {
        let keys: Vec<_> = self
            .inner
            .leases
            .range(..=due_upper(now_ms))
            .keys()
            .collect::<Result<_, _>>()?;
        let mut n = 0;
        for k in keys {
            if let Some((_, id)) = split_due_key(&k) {
                let res = self.update(id, &|r| {
                    r.state = if r.attempts == 0 {
                        State::Ready
                    } else {
                        State::Deferred
                    };
                    r.due_ms = now_ms;
                    Ok(())
                });
                if res.is_ok() {
                    n += 1;
                }
            }
            self.inner.leases.remove(&k)?;
        }
        Ok(n)
    }

    /// The message body, checksum verified.
    pub fn body(&self, id: QueueId) -> Result<Vec<u8>, QueueError> {
        let raw = self
            .inner
            .bodies
            .get(id.0)?
            .ok_or(QueueError::NotFound(id))?;
        record::unframe(&raw)
            .map(|b| b.to_vec())
            .map_err(|reason| QueueError::Corrupt {
                id: id.to_string(),
                reason,
            })
    }

    /// One record.
    pub fn get(&self, id: QueueId) -> Result<Record, QueueError> {
        let raw = self
            .inner
            .messages
            .get(id.0)?
            .ok_or(QueueError::NotFound(id))?;
        record::decode(&raw).map_err(|reason| QueueError::Corrupt {
            id: id.to_string(),
            reason,
        })
    }

    /// Every decodable record (optionally in one state), in id order.
    pub fn list(&self, state: Option<State>) -> Result<Vec<Record>, QueueError> {
        let mut out = Vec::new();
        for item in self.inner.messages.iter() {
            let (_, raw) = item?;
            if let Ok(r) = record::decode(&raw) {
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
            let (k, raw) = item?;
            let key: String = k.iter().map(|b| format!("{b:02x}")).collect();
            let reason = record::decode(&raw)
                .err()
                .unwrap_or_else(|| "id mismatch".into());
            out.push((key, reason));
        }
        Ok(out)
    }

    /// Counts by state, from the index trees.
    pub fn counts(&self) -> StateCounts {
        let i = &self.inner;
        StateCounts {
            ready_or_deferred: i.due.len(),
            leased: i.leases.len(),
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
