//! Host memory the kernel says a new allocation can get without swapping
//! (`MemAvailable` in /proc/meminfo, Linux 3.14+).

/// `MemAvailable` in bytes, or `None` where /proc/meminfo has no such line
/// (not Linux, or a very old kernel).
pub fn mem_available() -> Option<u64> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// The `MemAvailable:  123456 kB` line of a /proc/meminfo text, in bytes.
pub fn parse_mem_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}
