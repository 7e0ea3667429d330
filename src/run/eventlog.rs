//! The Windows Application event log: what an administrator's monitoring
//! watches, by stable event ID (as it watched 4097/7031/7034 for the
//! Exchange IMS). Source `postern`, registered by `postern service install`
//! ([`register`]) and removed by `uninstall`.
//!
//! | ID | type | when |
//! |---|---|---|
//! | 1000 | information | the service started |
//! | 1001 | information | the service stopped |
//! | 1002 | information | the configuration was reloaded |
//! | 1003 | warning | a configuration reload was refused (the running one stays) |
//! | 1004 | error | the service failed (could not start or run) |
//! | 1010 | error | the gateway process died and was restarted (the cause: `0xC0000005 (access violation)`, a hang...) |
//! | 1020 | warning | a content worker died or overran its deadline (the cause) |
//! | 1030 | error | a message was quarantined (queue ID, stage, cause) |
//!
//! Each event carries one string, its whole text. On Unix these functions
//! do nothing: the same lines are in the log (journald) already.

/// The event IDs above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(windows), allow(dead_code))]
pub enum Event {
    Started = 1000,
    Stopped = 1001,
    Reloaded = 1002,
    ReloadRefused = 1003,
    Failed = 1004,
    GatewayRestarted = 1010,
    WorkerCrashed = 1020,
    Quarantined = 1030,
}

impl Event {
    /// The event type: 1 error, 2 warning, 4 information
    /// (`EVENTLOG_*_TYPE`).
    #[cfg_attr(not(windows), allow(dead_code))]
    pub fn kind(self) -> u16 {
        match self {
            Event::Started | Event::Stopped | Event::Reloaded => 4,
            Event::ReloadRefused | Event::WorkerCrashed => 2,
            Event::Failed | Event::GatewayRestarted | Event::Quarantined => 1,
        }
    }
}

/// The source name, also the registry key under
/// `HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application`.
#[cfg_attr(not(windows), allow(dead_code))]
pub const SOURCE: &str = "postern";

/// Writes `text` as event `event` (Windows); nothing elsewhere. A failure
/// to write is logged, never an error of the caller.
pub fn report(event: Event, text: &str) {
    #[cfg(windows)]
    imp::report(event, text);
    #[cfg(not(windows))]
    let _ = (event, text);
}

pub fn gateway_restarted(cause: &str, suspects: &[String]) {
    let text = match suspects.is_empty() {
        true => format!("postern: the gateway process died and was restarted: {cause}"),
        false => format!(
            "postern: the gateway process died and was restarted: {cause}; in flight: {}",
            suspects.join(" ")
        ),
    };
    report(Event::GatewayRestarted, &text);
}

pub fn reloaded(source: &str) {
    report(
        Event::Reloaded,
        &format!("postern: configuration reloaded from {source}"),
    );
}

pub fn reload_refused(why: &str) {
    report(
        Event::ReloadRefused,
        &format!("postern: configuration reload refused, the running configuration stays: {why}"),
    );
}

pub fn worker_crashed(cause: &str) {
    report(
        Event::WorkerCrashed,
        &format!("postern: a content worker was replaced: {cause}"),
    );
}

pub fn quarantined(id: &str, stage: &str, cause: &str) {
    report(
        Event::Quarantined,
        &format!("postern: message {id} quarantined at the {stage} stage: {cause}"),
    );
}

#[cfg(windows)]
mod imp {
    use super::{Event, SOURCE};
    use windows_sys::Win32::Foundation::ERROR_SUCCESS;
    use windows_sys::Win32::System::EventLog::{
        DeregisterEventSource, RegisterEventSourceW, ReportEventW,
    };
    use windows_sys::Win32::System::Registry::{
        RegCloseKey, RegCreateKeyExW, RegDeleteKeyW, RegSetValueExW, HKEY, HKEY_LOCAL_MACHINE,
        KEY_WRITE, REG_DWORD, REG_EXPAND_SZ, REG_OPTION_NON_VOLATILE,
    };

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain(std::iter::once(0)).collect()
    }

    const KEY: &str = "SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\postern";

    pub(super) fn report(event: Event, text: &str) {
        let source = wide(SOURCE);
        // SAFETY: a NUL-terminated source name on the local computer.
        let h = unsafe { RegisterEventSourceW(std::ptr::null(), source.as_ptr()) };
        if h.is_null() {
            tracing::debug!(error = %std::io::Error::last_os_error(), "event log unavailable");
            return;
        }
        let line = wide(text);
        let strings = [line.as_ptr()];
        // SAFETY: one NUL-terminated string, no user SID, no raw data.
        let ok = unsafe {
            ReportEventW(
                h,
                event.kind(),
                0,
                event as u32,
                std::ptr::null_mut(),
                1,
                0,
                strings.as_ptr(),
                std::ptr::null(),
            )
        };
        if ok == 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot write an event");
        }
        // SAFETY: the handle returned above, closed once.
        unsafe { DeregisterEventSource(h) };
    }

    /// Registers the event source: the Application log's key for
    /// `postern`, naming the executable as its message file and every
    /// event type as supported.
    pub fn register(exe: &std::path::Path) -> std::io::Result<()> {
        let key = wide(KEY);
        let mut hkey: HKEY = std::ptr::null_mut();
        // SAFETY: creating (or opening) a key under HKLM; `hkey` receives it.
        let r = unsafe {
            RegCreateKeyExW(
                HKEY_LOCAL_MACHINE,
                key.as_ptr(),
                0,
                std::ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_WRITE,
                std::ptr::null(),
                &mut hkey,
                std::ptr::null_mut(),
            )
        };
        if r != ERROR_SUCCESS {
            return Err(std::io::Error::from_raw_os_error(r as i32));
        }
        let file = wide(&exe.display().to_string());
        let types: u32 = 7;
        let name = wide("EventMessageFile");
        let tname = wide("TypesSupported");
        // SAFETY: values written from buffers that live across the calls,
        // with their sizes in bytes; the key is closed once.
        let (a, b) = unsafe {
            let a = RegSetValueExW(
                hkey,
                name.as_ptr(),
                0,
                REG_EXPAND_SZ,
                file.as_ptr().cast(),
                (file.len() * 2) as u32,
            );
            let b = RegSetValueExW(
                hkey,
                tname.as_ptr(),
                0,
                REG_DWORD,
                (&types as *const u32).cast(),
                4,
            );
            RegCloseKey(hkey);
            (a, b)
        };
        match (a, b) {
            (ERROR_SUCCESS, ERROR_SUCCESS) => Ok(()),
            (ERROR_SUCCESS, e) | (e, _) => Err(std::io::Error::from_raw_os_error(e as i32)),
        }
    }

    /// Removes the event source's key.
    pub fn unregister() -> std::io::Result<()> {
        let key = wide(KEY);
        // SAFETY: deleting a key with no subkeys under HKLM.
        let r = unsafe { RegDeleteKeyW(HKEY_LOCAL_MACHINE, key.as_ptr()) };
        if r != ERROR_SUCCESS {
            return Err(std::io::Error::from_raw_os_error(r as i32));
        }
        Ok(())
    }
}

#[cfg(windows)]
pub use imp::{register, unregister};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_and_types_are_stable() {
        let table = [
            (Event::Started, 1000, 4),
            (Event::Stopped, 1001, 4),
            (Event::Reloaded, 1002, 4),
            (Event::ReloadRefused, 1003, 2),
            (Event::Failed, 1004, 1),
            (Event::GatewayRestarted, 1010, 1),
            (Event::WorkerCrashed, 1020, 2),
            (Event::Quarantined, 1030, 1),
        ];
        for (e, id, kind) in table {
            assert_eq!((e as u32, e.kind()), (id, kind), "{e:?}");
        }
    }
}
