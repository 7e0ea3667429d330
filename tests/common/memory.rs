//! Resident memory of a process tree, read from `/proc` (Linux).
//!
//! Also compiled into `benches/tls_load.rs`.

/// The summed `VmRSS` (KiB) of every process in process group `pgid`: the
/// supervisor leads its own group, so this is the gateway and its workers
/// too. 0 when nothing can be read.
pub fn rss_tree_kib(pgid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_group(*pid) == Some(pgid))
        .filter_map(vm_rss_kib)
        .sum()
}

/// The process group of `pid`: the third field after the command name in
/// `/proc/<pid>/stat` (the name is in parentheses and may hold spaces).
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = &stat[stat.rfind(')')? + 1..];
    fields.split_whitespace().nth(2)?.parse().ok()
}

/// `VmRSS` of `pid` in KiB (kernel threads and zombies have none).
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
