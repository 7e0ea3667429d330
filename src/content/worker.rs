//! `postern worker`: a content worker process.
//!
//! Reads request frames (meta and message) on stdin and answers each with a
//! verdict frame on stdout, until stdin closes. Before any work it limits its
//! own address space (RLIMIT_AS, so unbounded allocation ends in an abort,
//! not a machine out of memory), and before each message it sets its CPU
//! limit to what it has used plus the message deadline (RLIMIT_CPU: a
//! runaway loop gets SIGXCPU even if the gateway's wall-clock deadline
//! somehow does not fire). A panic is reported as a crash verdict, then the
//! worker exits, since its state can no longer be trusted. DNS for the
//! authentication checks runs on a single-threaded runtime of its own.

use crate::content::conversion::Conversion;
use crate::content::processor::{decode_request, encode, run_content, Verdict};
use futures_util::FutureExt;
use postern_supervisor::pool::{read_frame, write_frame};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Largest request accepted (the listener's own limit is far lower).
const MAX_FRAME: u64 = 1 << 31;

pub fn main(config: Option<PathBuf>, memory: u64, deadline: Duration) -> ExitCode {
    limit_memory(memory);
    // One line per panic: a symbolised backtrace can take longer than the
    // message deadline, and the verdict carries the message anyway.
    std::panic::set_hook(Box::new(|info| eprintln!("postern worker: {info}")));
    let conv = match crate::config::load(config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|l| Conversion::from_config(&l.config))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern worker: {}", crate::error_text(&e));
            return ExitCode::from(78);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postern worker: runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let auth = match conv.inbound.is_some() {
        true => rt.block_on(async { conv.authenticator() }).ok(),
        false => None,
    };
    let mut input = std::io::stdin().lock();
    // Buffered, flushed once per frame (stdout alone is line-buffered and
    // would split binary frames at every newline).
    let mut output = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let req = match read_frame(&mut input, MAX_FRAME) {
            Ok(Some(m)) => m,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("postern worker: bad request: {e}");
                return ExitCode::from(2);
            }
        };
        limit_cpu(deadline);
        let (verdict, poisoned) = match decode_request(&req) {
            None => (Verdict::Crash("malformed request".into()), false),
            Some((meta, msg)) => {
                // Parsed once here; every stage of the work takes the view.
                let view = postern_convert::Message::parse(msg);
                let run = run_content(&view, &meta, &conv, auth.as_ref());
                match rt.block_on(AssertUnwindSafe(run).catch_unwind()) {
                    Ok(v) => (v, false),
                    Err(p) => (
                        Verdict::Crash(format!(
                            "panic: {}",
                            postern_supervisor::panic_message(&*p)
                        )),
                        true,
                    ),
                }
            }
        };
        if write_frame(&mut output, &encode(&verdict)).is_err() || poisoned {
            return ExitCode::from(70);
        }
    }
}

#[cfg(unix)]
fn limit_memory(bytes: u64) {
    if bytes == 0 {
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
        eprintln!("postern worker: cannot set memory limit");
    }
}

#[cfg(unix)]
fn limit_cpu(deadline: Duration) {
    // SAFETY: getrusage fills the struct; setrlimit reads ours.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return;
        }
        let used = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as u64 + 1;
        let soft = used + deadline.as_secs().max(1);
        let lim = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: (soft + 5) as libc::rlim_t,
        };
        libc::setrlimit(libc::RLIMIT_CPU, &lim);
    }
}

/// Windows: the worker's own Job Object (inside the gateway's: jobs nest)
/// and the limits set on it (kept here, so renewing the CPU-time limit per
/// message costs one call, not a read-back and a write).
#[cfg(windows)]
#[allow(clippy::type_complexity)]
static JOB: std::sync::OnceLock<
    Option<(
        postern_supervisor::job::Job,
        postern_supervisor::job::JobLimits,
    )>,
> = std::sync::OnceLock::new();

/// Windows: `JOB_OBJECT_LIMIT_PROCESS_MEMORY` on a job of this process's
/// own, as RLIMIT_AS on Unix (an allocation past it fails and the worker
/// aborts: only its message is charged).
#[cfg(windows)]
fn limit_memory(bytes: u64) {
    use postern_supervisor::job::{Job, JobLimits};
    let limits = JobLimits {
        kill_on_close: false,
        process_memory: bytes,
        process_time: None,
    };
    let job = match Job::new(&limits).and_then(|j| j.assign_current().map(|()| j)) {
        Ok(j) => Some((j, limits)),
        Err(e) => {
            eprintln!("postern worker: cannot set memory limit (job object): {e}");
            None
        }
    };
    let _ = JOB.set(job);
}

/// Windows: the CPU time this worker may use before the next message ends,
/// as RLIMIT_CPU on Unix (`JOB_OBJECT_LIMIT_PROCESS_TIME`: past it the
/// system ends the worker).
#[cfg(windows)]
fn limit_cpu(deadline: Duration) {
    use postern_supervisor::job::JobLimits;
    let Some(Some((job, limits))) = JOB.get() else {
        return;
    };
    let used = process_cpu_time().unwrap_or_default();
    let _ = job.set(&JobLimits {
        process_time: Some(used + deadline.max(Duration::from_secs(1)) + Duration::from_secs(1)),
        ..*limits
    });
}

/// The user-mode CPU time this process has used.
#[cfg(windows)]
fn process_cpu_time() -> Option<Duration> {
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessTimes};
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut c, mut e, mut k, mut u) = (zero, zero, zero, zero);
    // SAFETY: the pseudo-handle of this process; four out-structs.
    if unsafe { GetProcessTimes(GetCurrentProcess(), &mut c, &mut e, &mut k, &mut u) } == 0 {
        return None;
    }
    let ticks = (u64::from(u.dwHighDateTime) << 32) | u64::from(u.dwLowDateTime);
    Some(Duration::from_nanos(ticks.saturating_mul(100)))
}

#[cfg(not(any(unix, windows)))]
fn limit_memory(_bytes: u64) {}

#[cfg(not(any(unix, windows)))]
fn limit_cpu(_deadline: Duration) {}
