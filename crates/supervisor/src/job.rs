//! Windows Job Objects: the containment Unix gets from rlimits and
//! `PR_SET_PDEATHSIG`.
//!
//! A [`Job`] is created with [`JobLimits`]: `kill_on_close` (every process
//! in the job dies when the last handle to the job closes, so no gateway or
//! worker outlives its supervisor or holds the queue), a per-process
//! committed-memory limit (`JOB_OBJECT_LIMIT_PROCESS_MEMORY`, the RLIMIT_AS
//! of Windows: an allocation past it fails) and a per-process user-mode CPU
//! time limit (`JOB_OBJECT_LIMIT_PROCESS_TIME`, RLIMIT_CPU: the process is
//! terminated past it). [`Job::assign`] puts a child in it; a process may
//! also put itself in a job of its own ([`Job::assign_current`]: the content
//! worker does, as it sets its own rlimits on Unix). Jobs nest (Windows 8
//! and later): a worker of a gateway in the supervisor's job is in both.
//!
//! [`limit_fields`] is the pure part (which flags and values a set of
//! limits becomes), tested on every platform; [`Job::limits`] reads back
//! what the system actually keeps, so a platform that ignores a limit
//! (Wine) can be told apart from one that enforces it.

use std::time::Duration;

/// What a job enforces on each of its processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobLimits {
    /// Kill every process of the job when the job's last handle closes.
    pub kill_on_close: bool,
    /// Committed memory per process, in bytes (0: none).
    pub process_memory: u64,
    /// User-mode CPU time per process (`None`: none).
    pub process_time: Option<Duration>,
}

/// `JOB_OBJECT_LIMIT_PROCESS_TIME`.
pub const LIMIT_PROCESS_TIME: u32 = 0x0000_0002;
/// `JOB_OBJECT_LIMIT_PROCESS_MEMORY`.
pub const LIMIT_PROCESS_MEMORY: u32 = 0x0000_0100;
/// `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`.
pub const LIMIT_KILL_ON_JOB_CLOSE: u32 = 0x0000_2000;

/// The `LimitFlags`, `ProcessMemoryLimit` and `PerProcessUserTimeLimit`
/// (100-nanosecond units) of `limits`.
pub fn limit_fields(limits: &JobLimits) -> (u32, usize, i64) {
    let mut flags = 0;
    if limits.kill_on_close {
        flags |= LIMIT_KILL_ON_JOB_CLOSE;
    }
    let memory = usize::try_from(limits.process_memory).unwrap_or(usize::MAX);
    if memory > 0 {
        flags |= LIMIT_PROCESS_MEMORY;
    }
    let mut time = 0i64;
    if let Some(t) = limits.process_time {
        flags |= LIMIT_PROCESS_TIME;
        time = i64::try_from(t.as_nanos() / 100).unwrap_or(i64::MAX).max(1);
    }
    (flags, memory, time)
}

/// The limits that `LimitFlags`, `ProcessMemoryLimit` and
/// `PerProcessUserTimeLimit` say (the inverse of [`limit_fields`]).
pub fn limits_of(flags: u32, memory: usize, time: i64) -> JobLimits {
    JobLimits {
        kill_on_close: flags & LIMIT_KILL_ON_JOB_CLOSE != 0,
        process_memory: if flags & LIMIT_PROCESS_MEMORY != 0 {
            memory as u64
        } else {
            0
        },
        process_time: (flags & LIMIT_PROCESS_TIME != 0)
            .then(|| Duration::from_nanos(u64::try_from(time).unwrap_or(0).saturating_mul(100))),
    }
}

#[cfg(windows)]
pub use imp::Job;

#[cfg(windows)]
mod imp {
    use super::*;
    use std::io;
    use std::os::windows::io::{AsRawHandle, BorrowedHandle};
    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        QueryInformationJobObject, SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    };
    use windows_sys::Win32::System::Threading::GetCurrentProcess;

    /// A job object; closing it (drop) kills its processes when it was
    /// made with `kill_on_close`.
    #[derive(Debug)]
    pub struct Job(HANDLE);

    // SAFETY: a job handle may be used and closed from any thread.
    unsafe impl Send for Job {}
    // SAFETY: every call on the handle is thread-safe in Windows.
    unsafe impl Sync for Job {}

    impl Job {
        /// A new unnamed job enforcing `limits`.
        pub fn new(limits: &JobLimits) -> io::Result<Job> {
            // SAFETY: no attributes, no name: an unnamed job object.
            let handle = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
            if handle.is_null() {
                return Err(io::Error::last_os_error());
            }
            let job = Job(handle);
            job.set(limits)?;
            Ok(job)
        }

        /// Replaces the job's limits (the CPU limit of a worker is renewed
        /// before every message).
        pub fn set(&self, limits: &JobLimits) -> io::Result<()> {
            let (flags, memory, time) = limit_fields(limits);
            // SAFETY: an all-zero JOBOBJECT_EXTENDED_LIMIT_INFORMATION is
            // valid ("no limits"); the fields set are plain integers.
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
            info.BasicLimitInformation.LimitFlags = flags;
            info.BasicLimitInformation.PerProcessUserTimeLimit = time;
            info.ProcessMemoryLimit = memory;
            // SAFETY: the pointer and size describe `info`, which lives
            // across the call.
            let ok = unsafe {
                SetInformationJobObject(
                    self.0,
                    JobObjectExtendedLimitInformation,
                    (&info as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        /// The limits the system keeps for this job (a platform that does
        /// not enforce a limit may not keep it either).
        pub fn limits(&self) -> io::Result<JobLimits> {
            // SAFETY: zeroed plain-data struct, filled by the call.
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
            let mut len = 0u32;
            // SAFETY: the pointer and size describe `info`.
            let ok = unsafe {
                QueryInformationJobObject(
                    self.0,
                    JobObjectExtendedLimitInformation,
                    (&mut info as *mut JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                    &mut len,
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            let b = &info.BasicLimitInformation;
            Ok(limits_of(
                b.LimitFlags,
                info.ProcessMemoryLimit,
                b.PerProcessUserTimeLimit,
            ))
        }

        /// Puts the process `process` (a handle with
        /// PROCESS_SET_QUOTA | PROCESS_TERMINATE access, as a child's is) in
        /// the job.
        pub fn assign(&self, process: BorrowedHandle<'_>) -> io::Result<()> {
            // SAFETY: both handles are valid for the duration of the call.
            if unsafe { AssignProcessToJobObject(self.0, process.as_raw_handle() as HANDLE) } == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        /// Puts the calling process in the job.
        pub fn assign_current(&self) -> io::Result<()> {
            // SAFETY: the pseudo-handle of the current process is valid for
            // the process's whole life.
            self.assign(unsafe { BorrowedHandle::borrow_raw(GetCurrentProcess() as _) })
        }
    }

    impl Drop for Job {
        fn drop(&mut self) {
            // SAFETY: the handle is ours and closed once.
            unsafe { CloseHandle(self.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_the_job_fields_and_back() {
        let cases = [
            (JobLimits::default(), (0, 0, 0)),
            (
                JobLimits {
                    kill_on_close: true,
                    process_memory: 256 << 20,
                    process_time: Some(Duration::from_secs(3)),
                },
                (
                    LIMIT_KILL_ON_JOB_CLOSE | LIMIT_PROCESS_MEMORY | LIMIT_PROCESS_TIME,
                    256 << 20,
                    30_000_000,
                ),
            ),
            (
                JobLimits {
                    kill_on_close: true,
                    ..Default::default()
                },
                (LIMIT_KILL_ON_JOB_CLOSE, 0, 0),
            ),
        ];
        for (limits, want) in cases {
            assert_eq!(limit_fields(&limits), want, "{limits:?}");
            let (f, m, t) = want;
            assert_eq!(limits_of(f, m, t), limits, "round trip");
        }
        // A zero CPU limit would end the process at once: at least 100 ns.
        let tiny = JobLimits {
            process_time: Some(Duration::ZERO),
            ..Default::default()
        };
        assert_eq!(limit_fields(&tiny).2, 1);
    }
}
