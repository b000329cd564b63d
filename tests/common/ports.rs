//! Loopback ports for the multi-rank tests. A port taken from the kernel
//! (`bind(0)`) comes from the ephemeral range (32768–60999 here), and once
//! it is released any outgoing connection of another test may be given it
//! as its local port before rank 0 listens: "Address already in use"
//! (seen in CI). These come from 20000–31999, below that range, spread by
//! process id and handed out once each within a process, and are checked
//! free before use.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 20_000;
const SPAN: u32 = 12_000;

/// A loopback port nothing listens on now, unlikely to be taken meanwhile.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(97);
    for _ in 0..SPAN {
        let port = (FIRST + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}
