//! How a process ended, in words an administrator can act on: a Unix
//! signal by number and name, a Windows exception status by code and name
//! as Windows names it (`0xC0000005` access violation, ...), else the exit
//! status.

use std::process::ExitStatus;

/// "exited with status 1", "killed by signal 6 (SIGABRT)", "ended with
/// 0xC0000005 (access violation)", ...
pub fn describe(status: &ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig} ({})", signal_name(sig));
        }
    }
    match status.code() {
        Some(c) => describe_code(c),
        None => "ended without a status".to_string(),
    }
}

/// An exit code in words: a Windows NTSTATUS error or warning (the code a
/// process dies with when an exception ends it) by hexadecimal code and
/// name, any other code as a status.
pub fn describe_code(code: i32) -> String {
    let status = code as u32;
    match windows_status_name(status) {
        Some(name) => format!("ended with 0x{status:08X} ({name})"),
        None if status >= 0xC000_0000 => format!("ended with 0x{status:08X} (exception)"),
        None => format!("exited with status {code}"),
    }
}

/// The names of the NTSTATUS codes a crashing process ends with on
/// Windows.
pub fn windows_status_name(status: u32) -> Option<&'static str> {
    Some(match status {
        0xC000_0005 => "access violation",
        0xC000_00FD => "stack overflow",
        0xC000_0409 => "fail-fast/abort",
        0xC000_0017 => "out of memory",
        0xC000_001D => "illegal instruction",
        0xC000_0094 => "integer divide by zero",
        0xC000_0096 => "privileged instruction",
        0xC000_0374 => "heap corruption",
        0xC000_0135 => "DLL not found",
        0xC000_0139 => "entry point not found",
        0xC000_013A => "terminated by Ctrl-C",
        0xC000_0142 => "DLL initialization failed",
        0xC000_0044 => "quota exceeded",
        0xC000_070A => "thread not in process",
        0x4001_0004 => "terminated by a debugger",
        _ => return None,
    })
}

/// A short, bounded label for how a process died, from the words of
/// [`describe`] (and the hang and deadline texts of the supervisors): for
/// metrics. `0xC0000409 fail-fast/abort`, `SIGABRT`, `hang`, `exit 70`,
/// `other`.
pub fn cause_label(reason: &str) -> String {
    if reason.contains("passed its deadline") || reason.contains("overran") {
        return "hang".into();
    }
    if let Some(i) = reason.find("0x") {
        let hex = reason[i + 2..].chars().take(8).collect::<String>();
        if let Ok(code) = u32::from_str_radix(&hex, 16) {
            return match windows_status_name(code) {
                Some(name) => format!("0x{code:08X} {name}"),
                None => format!("0x{code:08X}"),
            };
        }
    }
    if let Some(n) = number_after(reason, "killed by signal ") {
        return match i32::try_from(n).map(signal_name) {
            Ok("signal") | Err(_) => format!("signal {n}"),
            Ok(name) => name.to_string(),
        };
    }
    if let Some(n) = number_after(reason, "exited with status ").filter(|n| *n < 256) {
        return format!("exit {n}");
    }
    "other".into()
}

/// The decimal number right after the first `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Names of the signals a crashing worker dies of.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_deaths_are_named_as_windows_names_them() {
        let cases = [
            (
                0xC000_0005u32 as i32,
                "ended with 0xC0000005 (access violation)",
            ),
            (
                0xC000_00FDu32 as i32,
                "ended with 0xC00000FD (stack overflow)",
            ),
            (
                0xC000_0409u32 as i32,
                "ended with 0xC0000409 (fail-fast/abort)",
            ),
            (
                0xC000_0017u32 as i32,
                "ended with 0xC0000017 (out of memory)",
            ),
            (0xC000_0999u32 as i32, "ended with 0xC0000999 (exception)"),
            (1, "exited with status 1"),
            (70, "exited with status 70"),
            (-1, "ended with 0xFFFFFFFF (exception)"),
        ];
        for (code, want) in cases {
            assert_eq!(describe_code(code), want, "{code:#x}");
        }
    }

    #[test]
    fn cause_labels_are_short_and_bounded() {
        let cases = [
            (
                "ended with 0xC0000005 (access violation)",
                "0xC0000005 access violation",
            ),
            (
                "worker ended with 0xC0000409 (fail-fast/abort) (died)",
                "0xC0000409 fail-fast/abort",
            ),
            ("ended with 0xC0001234 (exception)", "0xC0001234"),
            ("killed by signal 6 (SIGABRT)", "SIGABRT"),
            ("killed by signal 31 (signal)", "signal 31"),
            (
                "hang: d:1 passed its deadline; killed by signal 9 (SIGKILL)",
                "hang",
            ),
            ("worker overran the 2s deadline and was killed", "hang"),
            ("exited with status 70", "exit 70"),
            ("exited with status 4000", "other"),
            ("gateway died", "other"),
        ];
        for (reason, want) in cases {
            assert_eq!(cause_label(reason), want, "{reason}");
        }
    }
}
