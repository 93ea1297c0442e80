//! What the sidecar asks of the operating system: systemd's notify protocol and the open-files
//! limit. Both are no-ops where they do not apply (no `NOTIFY_SOCKET`, limit already high).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one `sd_notify` message (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`) to
/// `$NOTIFY_SOCKET`. Returns false when not run under systemd's notify protocol.
pub fn notify(message: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: '@' stands for the leading NUL byte.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
    } else {
        socket.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = &sent {
        tracing::warn!(error = %e, message, "cannot notify systemd");
    }
    sent.is_ok()
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises;
/// `None` when systemd asked for no watchdog (or asked another process).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Raises the soft open-files limit to the hard limit (each gateway link is a socket) and
/// returns the soft limit now in force.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// Limits glibc's malloc to one arena unless `MALLOC_ARENA_MAX` says otherwise. With an arena
/// per worker thread, what a storm frees (10,000 webhook calls, journal lines, reasons) stays
/// spread in partly used pages across the arenas: with 10,000 tenants all logged out the sidecar
/// measured 66 MiB resident, and 62 MiB with one arena, at no measurable CPU cost (two workers
/// rarely allocate at the same instant; see `benches/fleet.rs`). Call it before the runtime
/// starts its threads.
///
/// It also pins glibc's mmap threshold. By default glibc raises the threshold to the size of the
/// largest block freed: after a gateway's 1 MiB frames, every later 1 MiB buffer came from the
/// heap and stayed resident once freed (45 MiB after the flood instead of 22). Pinned, a buffer
/// over [`MMAP_THRESHOLD`] is its own mapping and goes back to the system when freed.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tuning parameter of the allocator; no other thread runs yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    }
}

/// Allocations at least this large are mapped on their own and unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Opens `path` for reading, refusing anything that is not a regular file (symlinks to one are
/// followed: mounted secrets are often links).
///
/// Config, secret, tenants and CA files are read this way: opening a FIFO put in their place
/// would wait for ever for a writer (`check` hung, and a reload blocked the signal loop, SIGTERM
/// included), and a device or socket never ends. O_NONBLOCK makes the open return at once; a
/// regular file ignores the flag.
pub(crate) fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or device cannot be read as one): use a regular file",
        ));
    }
    Ok(file)
}

/// File descriptors the process needs besides one per gateway link: the admin listener, backend
/// connections (up to `max_in_flight`), state files, logs, the runtime's own.
pub const NOFILE_OVERHEAD: u64 = 64;

/// The soft open-files limit in force now.
pub(crate) fn nofile_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// Descriptors the process holds besides links, backend and gateway HTTP connections and admin
/// connections: stdio, the runtime's epoll and wakers, the signal pipe, the admin listener, the
/// state directory's files, a DNS lookup or two. Measured at 12 to 16 with no tenant; twice that
/// for margin.
pub(crate) const NOFILE_BASE: u64 = 32;

/// How many admin connections may be open at once so that they can never take a descriptor the
/// gateway links or the backend calls need (SPEC 5 rev 12): what the open-files `limit` leaves
/// after `links`, the webhook client's `max_in_flight` connections, the `state_url` fetches and
/// [`NOFILE_BASE`], at most `max`. At least one, so `/livez` still answers on a machine whose
/// limit is already too low for its links (which `run` warns about at start).
pub(crate) fn admin_connection_budget(
    limit: u64,
    links: u64,
    max_in_flight: u64,
    max: usize,
) -> usize {
    let reserved = links
        .saturating_add(max_in_flight)
        .saturating_add(crate::link::STATE_FETCH_CONCURRENCY as u64)
        .saturating_add(NOFILE_BASE);
    let left = limit.saturating_sub(reserved);
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .clamp(1, max.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        // The test sets the variable only for this process and only while it runs; other tests
        // do not read NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1"));
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!notify("READY=1"), "no NOTIFY_SOCKET, nothing sent");
    }

    #[test]
    fn admin_connections_get_only_what_the_links_and_the_backend_leave() {
        // 1024 descriptors, 100 links, 16 backend calls, 16 state fetches, 32 for the process.
        assert_eq!(admin_connection_budget(1024, 100, 16, 64), 64);
        assert_eq!(admin_connection_budget(200, 100, 16, 64), 36);
        assert_eq!(admin_connection_budget(164, 100, 16, 64), 1);
        assert_eq!(admin_connection_budget(100, 100, 16, 64), 1);
        assert_eq!(admin_connection_budget(u64::MAX, u64::MAX, 16, 64), 1);
        assert_eq!(admin_connection_budget(u64::MAX, 0, 0, 64), 64);
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let soft = raise_nofile_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(soft, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
