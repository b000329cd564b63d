//! The watchdog of device collectives: NCCL waits forever for a rank that
//! never joins a collective, so a thread beside the training loop watches
//! every collective in flight and ends the process when one hangs.
//!
//! `NcclComm` registers each collective it queues (name, sequence number,
//! start time, and a probe of the event recorded after it); every `poll`
//! (~100 ms) the thread drops the completed ones and checks:
//! - the oldest still running for longer than `dist.timeout_s`,
//! - a probe that fails (a CUDA error in the collective),
//! - the communicator's asynchronous error (`ncclCommGetAsyncError`),
//!
//! and on the first of these calls the failure action once with a message
//! naming this rank, the collective, its sequence number and the peer
//! ranks, then stops. `NcclComm`'s action aborts the communicator, prints
//! the message and exits the process non-zero, so `ferrotron launch` (or
//! the cluster's launcher) stops every other rank. The action is injected
//! so tests can observe it without exiting.

use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the thread looks (a hang is caught within timeout + poll).
pub const POLL: Duration = Duration::from_millis(100);

/// Whether a collective's work is done (`Ok(false)`: still running; `Err`:
/// it failed on the device).
pub type Probe = Box<dyn Fn() -> Result<bool> + Send>;
/// The communicator's asynchronous error, if any (NCCL's text).
pub type AsyncError = Box<dyn FnMut() -> Option<String> + Send>;
/// What to do on a failure, given the message (once).
pub type OnFailure = Box<dyn FnOnce(String) + Send>;

struct Flight {
    name: String,
    seq: u64,
    started: Instant,
    done: Probe,
}

struct Shared {
    rank: usize,
    world: usize,
    timeout: Duration,
    flights: Mutex<Vec<Flight>>,
    stop: AtomicBool,
}

pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the thread for rank `rank` of `world`.
    pub fn start(rank: usize, world: usize, timeout: Duration, poll: Duration, mut async_error: AsyncError, on_failure: OnFailure) -> Watchdog {
        let shared = Arc::new(Shared { rank, world, timeout, flights: Mutex::new(Vec::new()), stop: AtomicBool::new(false) });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ferrotron-watchdog-{rank}"))
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(poll);
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Some(msg) = s.check(&mut async_error) {
                        on_failure(msg);
                        break;
                    }
                }
            })
            .expect("spawning the watchdog thread");
        Watchdog { shared, thread: Some(thread) }
    }

    /// Watches collective `name` number `seq`, started now, until `done`
    /// says it completed.
    pub fn register(&self, name: &str, seq: u64, done: Probe) {
        let f = Flight { name: name.to_string(), seq, started: Instant::now(), done };
        self.shared.flights.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    /// Collectives registered and not yet seen complete.
    pub fn in_flight(&self) -> usize {
        self.shared.flights.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// One look: the failure message, if any.
    fn check(&self, async_error: &mut AsyncError) -> Option<String> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        let mut failed = None;
        flights.retain(|f| match (f.done)() {
            Ok(done) => !done,
            Err(e) => {
                failed.get_or_insert_with(|| format!("{} failed on the GPU: {e:#}", self.describe(f)));
                false
            }
        });
        if let Some(why) = failed {
            return Some(why);
        }
        if let Some(e) = async_error() {
            let during = flights.first().map(|f| format!(" during {}", self.describe(f))).unwrap_or_default();
            return Some(format!("rank {}: NCCL reported an asynchronous error{during}: {e}; aborting the communicator", self.rank));
        }
        let late = flights.iter().find(|f| f.started.elapsed() > self.timeout)?;
        Some(format!(
            "{} did not complete within {:.1} s (dist.timeout_s): {} stuck, dead or out of step; aborting the communicator",
            self.describe(late),
            self.timeout.as_secs_f64(),
            self.peers()
        ))
    }

    /// "rank 1: collective all_gather #42".
    fn describe(&self, f: &Flight) -> String {
        format!("rank {}: collective {} #{}", self.rank, f.name, f.seq)
    }

    /// Who it waits for: NCCL does not say which peer is missing.
    fn peers(&self) -> String {
        let others: Vec<String> = (0..self.world).filter(|&r| r != self.rank).map(|r| r.to_string()).collect();
        match others.len() {
            0 => "this rank's own GPU work is".into(),
            1 => format!("its peer, rank {}, is", others[0]),
            _ => format!("one of its peers (ranks {}) is", others.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn watch(timeout_ms: u64, async_error: AsyncError) -> (Watchdog, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::start(1, 4, Duration::from_millis(timeout_ms), Duration::from_millis(10), async_error, Box::new(move |m| tx.send(m).unwrap()));
        (dog, rx)
    }

    /// A collective that never completes: the action runs once, after the
    /// timeout, naming rank, collective, sequence number and peers.
    #[test]
    fn a_collective_that_never_completes_is_aborted_with_its_name() {
        let (dog, rx) = watch(200, Box::new(|| None));
        let started = Instant::now();
        dog.register("reduce_scatter_sum", 7, Box::new(|| Ok(false)));
        let msg = rx.recv_timeout(Duration::from_secs(5)).expect("the watchdog fires");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2), "fired after {waited:?}");
        assert!(msg.contains("rank 1: collective reduce_scatter_sum #7 did not complete within 0.2 s"), "{msg}");
        assert!(msg.contains("ranks 0, 2, 3"), "{msg}");
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "fires once");
    }

    /// Completed collectives are forgotten and never fire.
    #[test]
    fn completed_collectives_do_not_fire() {
        let (dog, rx) = watch(50, Box::new(|| None));
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        dog.register("all_gather", 1, Box::new(move || Ok(d.load(Ordering::SeqCst))));
        done.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err());
        assert_eq!(dog.in_flight(), 0);
    }

    /// NCCL's asynchronous error and a failed probe end the run at once.
    #[test]
    fn async_and_device_errors_fire_at_once() {
        let (dog, rx) = watch(60_000, Box::new(|| Some("remote process exited".into())));
        dog.register("all_reduce_sum", 3, Box::new(|| Ok(false)));
        let msg = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(msg.contains("asynchronous error during rank 1: collective all_reduce_sum #3: remote process exited"), "{msg}");
        let (dog, rx) = watch(60_000, Box::new(|| None));
        dog.register("broadcast", 9, Box::new(|| Err(anyhow::anyhow!("CUDA_ERROR_ILLEGAL_ADDRESS"))));
        let msg = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(msg.contains("rank 1: collective broadcast #9 failed on the GPU: CUDA_ERROR_ILLEGAL_ADDRESS"), "{msg}");
    }
}
