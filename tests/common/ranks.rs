//! Ranks as threads: `ranks(world, f)` runs `f(rank, comm)` on `world`
//! threads that meet over loopback TCP, results in rank order. Include
//! beside `ports.rs` (`mod ports; mod ranks;`).
//!
//! When rank 0 cannot listen on the port [`free_port`] found free (taken in
//! between: seen 3 times in ~10 full runs of the suite, never in one test
//! binary alone, holder not identified), the ranks meet again on another
//! port; any other rendezvous failure fails the test.
#![allow(dead_code)]

use super::ports::free_port;
use ferrotron::dist::{TcpComm, WorldInfo};
use std::time::Duration;

pub fn ranks<T: Send>(world: usize, f: impl Fn(usize, TcpComm) -> T + Sync) -> Vec<T> {
    for attempt in 1..=3 {
        match ranks_on(free_port(), world, &f) {
            Ok(out) => return out,
            Err(e) if attempt < 3 && e.contains("cannot listen") => eprintln!("rendezvous attempt {attempt}: {e}; again on another port"),
            Err(e) => panic!("rendezvous: {e}"),
        }
    }
    unreachable!()
}

/// One try of [`ranks`] at `port`: the first rank's rendezvous error, if any.
fn ranks_on<T: Send>(port: u16, world: usize, f: &(impl Fn(usize, TcpComm) -> T + Sync)) -> Result<Vec<T>, String> {
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..world)
            .map(|r| {
                sc.spawn(move || {
                    let info = WorldInfo { rank: r, world, local_rank: r, local_world: world, master_port: port, ..WorldInfo::single() };
                    // 10 s: the threads meet in milliseconds; a rank left
                    // waiting for a rank 0 that could not listen gives up.
                    TcpComm::connect(&info, Duration::from_secs(10)).map(|comm| f(r, comm)).map_err(|e| format!("{e:#}"))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
    })
}
