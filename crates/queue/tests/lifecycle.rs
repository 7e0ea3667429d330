//! Queue state transitions and crash recovery against a real sled database
//! in a temporary directory.

use postern_core::{Address, Envelope, QueueId, Recipient};
use postern_queue::{QuarantineInfo, Queue, QueueOptions, State};

fn env() -> Envelope {
    Envelope::new(
        Some(Address::parse("a@b.test").unwrap()),
        vec![Recipient::new(Address::parse("c@d.test").unwrap())],
        "127.0.0.1",
        "h",
        postern_core::now_ms(),
        5,
    )
}

fn opts(dir: &tempfile::TempDir) -> QueueOptions {
    QueueOptions {
        path: dir.path().join("q"),
        cache_bytes: 8 << 20,
        segment_size: postern_queue::DEFAULT_SEGMENT_SIZE,
    }
}

/// The body segment files of the queue in `dir`.
fn segment_files(dir: &tempfile::TempDir) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.path().join("q").join("bodies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn enqueue_claim_defer_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (q, rec) = Queue::open(&opts(&dir)).unwrap();
    assert_eq!(rec.messages, 0);
    let e = env();
    let id = e.id;
    q.enqueue(e, b"hello").await.unwrap();
    assert_eq!(q.body(id).unwrap(), b"hello");
    let now = postern_core::now_ms();
    let claimed = q.claim_due(now + 1, 10, 60_000).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].state, State::Leased);
    // Nothing else is due while it is leased.
    assert!(q.claim_due(now + 1, 10, 60_000).unwrap().is_empty());
    // Defer one minute: not due now, due later.
    q.update(id, &|r| {
        r.state = State::Deferred;
        r.attempts += 1;
        r.due_ms = now + 60_000;
        Ok(())
    })
    .unwrap();
    assert!(q.claim_due(now + 1, 10, 60_000).unwrap().is_empty());
    assert_eq!(q.next_due_ms(), Some(now + 60_000));
    assert_eq!(q.claim_due(now + 60_000, 10, 60_000).unwrap().len(), 1);
    q.remove(id).unwrap();
    assert!(q.get(id).is_err());
    assert_eq!(q.counts().ready_or_deferred + q.counts().leased, 0);
}

#[tokio::test]
async fn leases_are_void_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<QueueId> = {
        let (q, _) = Queue::open(&opts(&dir)).unwrap();
        let mut ids = vec![];
        for _ in 0..5 {
            let e = env();
            ids.push(e.id);
            q.enqueue(e, b"x").await.unwrap();
        }
        assert_eq!(
            q.claim_due(postern_core::now_ms() + 1, 3, 3_600_000)
                .unwrap()
                .len(),
            3
        );
        q.flush().await.unwrap();
        ids
    };
    let (q, rec) = Queue::open(&opts(&dir)).unwrap();
    assert_eq!(rec.messages, 5);
    let claimed = q.claim_due(postern_core::now_ms() + 1, 10, 1000).unwrap();
    assert_eq!(claimed.len(), 5);
    for r in claimed {
        assert!(ids.contains(&r.envelope.id));
    }
}

#[tokio::test]
async fn expired_leases_become_due() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(&opts(&dir)).unwrap();
    q.enqueue(env(), b"x").await.unwrap();
    let now = postern_core::now_ms() + 1;
    assert_eq!(q.claim_due(now, 10, 100).unwrap().len(), 1);
    assert_eq!(q.expire_leases(now + 50).unwrap(), 0);
    assert_eq!(q.expire_leases(now + 100).unwrap(), 1);
    assert_eq!(q.claim_due(now + 100, 10, 100).unwrap().len(), 1);
}

#[tokio::test]
async fn hold_release_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(&opts(&dir)).unwrap();
    let e = env();
    let id = e.id;
    q.enqueue(e, b"x").await.unwrap();
    q.hold(id).unwrap();
    assert!(q
        .claim_due(postern_core::now_ms() + 1, 10, 100)
        .unwrap()
        .is_empty());
    assert!(q.hold(id).is_err());
    q.release(id).unwrap();
    q.quarantine(
        id,
        QuarantineInfo {
            stage: "delivery".into(),
            reason: "panic: boom".into(),
            at_ms: 1,
        },
    )
    .unwrap();
    assert_eq!(q.counts().quarantine, 1);
    assert_eq!(q.list(Some(State::Quarantine)).unwrap().len(), 1);
    assert!(q
        .claim_due(postern_core::now_ms() + 1, 10, 100)
        .unwrap()
        .is_empty());
    let r = q.release(id).unwrap();
    assert_eq!(r.crashes, 0);
    assert!(r.quarantine.is_none());
    assert_eq!(
        q.claim_due(postern_core::now_ms() + 1, 10, 100)
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn retry_makes_a_deferred_message_due_now() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(&opts(&dir)).unwrap();
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
    let now = postern_core::now_ms() + 1;
    assert!(q.claim_due(now, 10, 100).unwrap().is_empty());
    assert!(q.retry(id).unwrap().due_ms <= now);
    assert_eq!(q.claim_due(now + 1, 10, 100).unwrap().len(), 1);
    // Leased (being delivered) and held messages are not retried.
    assert!(q.retry(id).is_err());
    let e2 = env();
    let id2 = e2.id;
    q.enqueue(e2, b"y").await.unwrap();
    q.hold(id2).unwrap();
    assert!(q.retry(id2).is_err());
}

#[tokio::test]
async fn corrupt_record_is_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let good = env();
    let good_id = good.id;
    {
        let (q, _) = Queue::open(&opts(&dir)).unwrap();
        q.enqueue(good, b"x").await.unwrap();
        q.flush().await.unwrap();
    }
    {
        // Write garbage straight into the messages tree, as a torn or
        // bit-flipped record would look.
        let db = sled::open(dir.path().join("q")).unwrap();
        let t = db.open_tree("messages").unwrap();
        t.insert([7u8; 12], &b"\x01garbage-garbage"[..]).unwrap();
        db.flush().unwrap();
    }
    let (q, rec) = Queue::open(&opts(&dir)).unwrap();
    assert_eq!(rec.corrupt, 1);
    assert_eq!(rec.messages, 1);
    assert_eq!(q.list_corrupt().unwrap().len(), 1);
    let due = q.claim_due(postern_core::now_ms() + 1, 10, 100).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].envelope.id, good_id);
}

#[tokio::test]
async fn bodies_live_in_segments_are_checked_and_stray_files_swept() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let e = env();
    let id = e.id;
    {
        let (q, _) = Queue::open(&opts(&dir)).unwrap();
        q.enqueue(e, &big).await.unwrap();
        assert_eq!(q.body(id).unwrap(), big);
    }
    let segs = segment_files(&dir);
    assert_eq!(segs.len(), 1);
    let raw = std::fs::read(&segs[0]).unwrap();
    let at = raw.windows(big.len()).position(|w| w == big).unwrap();
    // A stray spool file (old layout) without a record is swept at start.
    let stray = dir
        .path()
        .join("q")
        .join("spool")
        .join(QueueId::generate().to_string());
    std::fs::write(&stray, b"junk").unwrap();
    // A damaged body is reported as corrupt, not returned.
    let mut bad = raw.clone();
    bad[at + 1000] ^= 1;
    std::fs::write(&segs[0], &bad).unwrap();
    let (q, rec) = Queue::open(&opts(&dir)).unwrap();
    assert!(rec.walked, "dropped without close: the open walks");
    assert_eq!(rec.orphans, 1);
    assert!(!stray.exists());
    let err = q.body(id).unwrap_err();
    assert!(
        matches!(err, postern_queue::QueueError::Corrupt { .. }),
        "{err}"
    );
    q.remove(id).unwrap();
}

#[tokio::test]
async fn a_drained_queue_gives_its_segments_back() {
    let dir = tempfile::tempdir().unwrap();
    let small = QueueOptions {
        segment_size: 64 * 1024,
        ..opts(&dir)
    };
    let (q, _) = Queue::open(&small).unwrap();
    let body = vec![b'x'; 10_000];
    let mut ids = vec![];
    for _ in 0..40 {
        let e = env();
        ids.push(e.id);
        q.enqueue(e, &body).await.unwrap();
    }
    let before = segment_files(&dir).len();
    assert!(before >= 6, "{before} segments for 400 KB in 64 KiB ones");
    assert_eq!(q.segment_usage().0, before);
    for id in ids {
        assert_eq!(q.body(id).unwrap(), body);
        q.remove(id).unwrap();
    }
    // Emptied segments go after the next flush (the commit thread runs
    // one within a second when nothing else asks).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while segment_files(&dir).len() > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        segment_files(&dir).len(),
        1,
        "only the active segment stays"
    );
    drop(q);
    let (_q, _) = Queue::open(&small).unwrap();
    assert!(
        segment_files(&dir).is_empty(),
        "an empty queue keeps no segment"
    );
}

#[tokio::test]
async fn a_clean_close_opens_without_a_walk() {
    let dir = tempfile::tempdir().unwrap();
    let (held, leased) = {
        let (q, _) = Queue::open(&opts(&dir)).unwrap();
        let mut ids = vec![];
        for _ in 0..4 {
            let e = env();
            ids.push(e.id);
            q.enqueue(e, b"body").await.unwrap();
        }
        q.hold(ids[0]).unwrap();
        let claimed = q
            .claim_due(postern_core::now_ms() + 1, 1, 3_600_000)
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let c = q.counts();
        assert_eq!((c.ready_or_deferred, c.leased, c.held), (2, 1, 1));
        q.close().await.unwrap();
        (ids[0], claimed[0].envelope.id)
    };
    let (q, rec) = Queue::open(&opts(&dir)).unwrap();
    assert!(!rec.walked);
    assert_eq!(rec.messages, 4);
    let c = q.counts();
    // The lease ended with the process: that message is due again.
    assert_eq!((c.ready_or_deferred, c.leased, c.held), (3, 0, 1));
    let due = q.claim_due(postern_core::now_ms() + 1, 10, 1000).unwrap();
    assert_eq!(due.len(), 3);
    assert!(due.iter().any(|r| r.envelope.id == leased));
    assert!(due.iter().all(|r| r.envelope.id != held));
    assert_eq!(q.body(leased).unwrap(), b"body");
    // Dropped without close this time: the next open walks, and agrees.
    drop((q, due));
    let (q, rec) = Queue::open(&opts(&dir)).unwrap();
    assert!(rec.walked);
    let c = q.counts();
    assert_eq!((c.ready_or_deferred, c.leased, c.held), (3, 0, 1));
}

#[tokio::test]
async fn a_change_after_close_withdraws_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = Queue::open(&opts(&dir)).unwrap();
        let e = env();
        let id = e.id;
        q.enqueue(e, b"x").await.unwrap();
        q.close().await.unwrap();
        // A delivery that outlived the drain finishes after the close.
        q.remove(id).unwrap();
        q.flush().await.unwrap();
    }
    let (q, rec) = Queue::open(&opts(&dir)).unwrap();
    assert!(rec.walked);
    assert_eq!(rec.messages, 0);
    assert_eq!(q.counts().ready_or_deferred, 0);
}

#[tokio::test]
async fn pages_follow_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(&opts(&dir)).unwrap();
    for _ in 0..7 {
        q.enqueue(env(), b"x").await.unwrap();
    }
    let mut seen = vec![];
    let mut after = None;
    loop {
        let (page, next) = q.page(after, 3, &|_| true).unwrap();
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(|r| r.envelope.id));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let all: Vec<_> = q
        .list(None)
        .unwrap()
        .iter()
        .map(|r| r.envelope.id)
        .collect();
    assert_eq!(seen, all);
    assert_eq!(seen.len(), 7);
}
