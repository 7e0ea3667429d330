//! Fault injection for tests: make one chosen stage crash in a chosen way
//! for one chosen message.
//!
//! Compiled in only with the `fault-injection` cargo feature (off by default,
//! never in release artefacts), and even then active only while the file
//! named by `POSTERN_FAULTS_FILE` exists (without that variable:
//! `postern-faults-on` in the working directory, for a Windows service,
//! which gets no environment from a test), so a test can switch faults off
//! before releasing a quarantined message. A message selects its fault with
//! a header: `X-Postern-Fault: <stage>=<kind>`, stage one of receive,
//! content, delivery, queue; kind one of panic, abort, stack (overflow),
//! hang, oom (allocate without bound).

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// In the gateway, after DATA and before content processing.
    Receive,
    /// Inside content processing (a worker process, or the gateway when
    /// `workers.processes = 0`).
    Content,
    /// In the gateway's delivery task.
    Delivery,
    /// In the gateway, reading a message back from the queue for delivery.
    Queue,
    /// In the gateway, writing a message to the queue at the end of DATA
    /// (only `stall`: the write waits for ever, as on a hung disk).
    Store,
}

impl Stage {
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub fn name(self) -> &'static str {
        match self {
            Stage::Receive => "receive",
            Stage::Content => "content",
            Stage::Delivery => "delivery",
            Stage::Queue => "queue",
            Stage::Store => "store",
        }
    }
}

/// Triggers the fault `msg` asks for at `stage`, if faults are on.
#[cfg(feature = "fault-injection")]
pub fn check(stage: Stage, msg: &[u8]) {
    let flag = std::env::var("POSTERN_FAULTS_FILE").unwrap_or_else(|_| "postern-faults-on".into());
    if !std::path::Path::new(&flag).exists() {
        return;
    }
    let Some(v) = postern_convert::Message::parse(msg).header("X-Postern-Fault") else {
        return;
    };
    for item in v.split(',') {
        if let Some((s, kind)) = item.trim().split_once('=') {
            if s.trim() == stage.name() {
                trigger(stage, kind.trim());
            }
        }
    }
}

/// Without the feature: nothing, and no cost.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn check(_stage: Stage, _msg: &[u8]) {}

/// Waits for ever when `msg` asks for `<stage>=stall` and faults are on:
/// an await that never ends, as storage that hangs (the runtime's threads
/// stay free, unlike `hang`).
#[cfg(feature = "fault-injection")]
pub async fn stall(stage: Stage, msg: &[u8]) {
    let flag = std::env::var("POSTERN_FAULTS_FILE").unwrap_or_else(|_| "postern-faults-on".into());
    if !std::path::Path::new(&flag).exists() {
        return;
    }
    let asked = postern_convert::Message::parse(msg)
        .header("X-Postern-Fault")
        .is_some_and(|v| {
            v.split(',')
                .any(|i| i.trim() == format!("{}=stall", stage.name()))
        });
    if asked {
        tracing::warn!(stage = stage.name(), "injecting a stall");
        std::future::pending::<()>().await;
    }
}

/// Without the feature: nothing, and no cost.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn stall(_stage: Stage, _msg: &[u8]) {}

#[cfg(feature = "fault-injection")]
fn trigger(stage: Stage, kind: &str) {
    tracing::warn!(stage = stage.name(), kind, "injecting fault");
    match kind {
        "panic" => panic!("injected fault: {} panic", stage.name()),
        "abort" => std::process::abort(),
        "stack" => {
            std::hint::black_box(recurse(0));
        }
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 64 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        _ => {}
    }
}

#[cfg(feature = "fault-injection")]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let frame = [n as u8; 4096];
    std::hint::black_box(&frame);
    recurse(n + 1) + u64::from(frame[0])
}
