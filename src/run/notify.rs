//! systemd readiness and watchdog (sd_notify protocol, no libsystemd):
//! datagrams to `$NOTIFY_SOCKET`. `postern run` sends `READY=1` once the
//! first gateway has started, `WATCHDOG=1` at half of `$WATCHDOG_USEC`
//! while it runs, and `STOPPING=1` on shutdown. Without the variable every
//! call does nothing, so the same binary runs anywhere.

fn send(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
                .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = abstract_name;
            return;
        }
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

pub fn ready() {
    send("READY=1");
}

pub fn stopping() {
    send("STOPPING=1");
}

/// Half the watchdog interval systemd asked for, if it asked.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // Half of it, and never zero (a zero interval would panic the ticker).
    (usec > 0).then(|| std::time::Duration::from_micros((usec / 2).max(1)))
}

pub fn watchdog() {
    send("WATCHDOG=1");
}
