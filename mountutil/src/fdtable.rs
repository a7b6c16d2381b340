//! The process's file descriptor table, grown once, before the process has threads.
//!
//! The kernel doubles a process's descriptor table when a new descriptor does not fit, and
//! while the table is shared by several threads each doubling waits for an RCU grace period
//! (`expand_files` calls `synchronize_rcu`): about 10 ms on the test machine. An apply holds
//! up to 512 directories open, two applies at once twice that, so a fresh daemon's first
//! pull waited for the table to double five times (~50 ms off-CPU in a 0.25 s pull of a
//! small image). Grown to its working size at start the table never grows again (it never
//! shrinks).

use std::os::fd::AsFd;

use rustix::process::{Resource, getrlimit};

/// Grows the table to hold `slots` descriptors (as many as the soft limit allows, if that is
/// lower). Call it before starting threads. Best effort: a table left small still works, a
/// little slower.
pub fn grow(slots: u64) {
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let Ok(highest) = i32::try_from(slots.min(limit).saturating_sub(1)) else {
        return;
    };
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return;
    };
    // The lowest free descriptor at or above `highest`: the table grows to hold it. It is
    // closed at once.
    let _ = rustix::io::fcntl_dupfd_cloexec(null.as_fd(), highest);
}

#[cfg(test)]
mod tests {
    /// The table's size, from `FDSize` in /proc/self/status.
    fn table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    #[test]
    fn the_table_is_grown_to_the_slots_asked_for() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let want = 8192.min(limit);
        assert!(table_size() < want, "already {} slots", table_size());
        super::grow(want);
        assert!(table_size() >= want, "{} slots", table_size());
    }
}
