//! This test process's memory, from /proc (Linux): the host-memory tests
//! of the offload (offload_host_memory, offload_ckpt) measure with it.
#![allow(dead_code)]

/// Resident bytes of this process now.
pub fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// Peak resident bytes of this process (VmHWM).
pub fn hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}
