//! `ferrotron launch`: start one process per GPU on this node, torchrun
//! style, and keep them together.
//!
//! Each child is this same executable running `<command> [args…]` with
//! torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//! GROUP_RANK, MASTER_ADDR, MASTER_PORT), NCCL_NVLS_ENABLE=0 unless the
//! caller set it, and FERROTRON_RANK_QUIET=1 on every rank but 0 (no
//! progress output there; see [`super::QUIET_ENV`]).
//!
//! Output: every line a child prints gets a `[rank N] ` prefix. Exception:
//! when our stderr is a terminal, rank 0 writes its stderr straight to it,
//! unprefixed, so its progress bar can draw (a bar through a pipe turns
//! into plain log lines).
//!
//! Lifetime: Ctrl-C / SIGTERM are forwarded to the children (each runs in
//! its own process group, so the terminal's Ctrl-C reaches them once,
//! through us); the first rank to exit non-zero stops the others (SIGTERM,
//! then SIGKILL after [`GRACE`]) and we fail naming it; children get
//! SIGTERM if we die (PR_SET_PDEATHSIG). Restarts (`--max-restarts`, issue
//! 17) belong in [`supervise`]: re-spawn all ranks with a new port.
//!
//! Hangs: a rank stuck inside a collective is caught by the collective's
//! own timeout (TCP) or the NCCL watchdog; a rank stuck elsewhere is caught
//! here: each rank links its heartbeat (train/heartbeat.rs) into a folder
//! we name in `FERROTRON_HEARTBEAT_DIR`, and a living rank whose heartbeat
//! is older than its `timeout_s` (`dist.timeout_s`) stops the run, named.

use super::rendezvous::DEFAULT_PORT;
use crate::train::heartbeat;
use super::QUIET_ENV;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long stopped ranks get to exit after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct LaunchArgs {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    /// Default: 127.0.0.1 on one node; required on several.
    pub master_addr: Option<String>,
    /// Default: a free port on one node, 29500 on several.
    pub master_port: Option<u16>,
    /// The ferrotron subcommand and its arguments, e.g. `train --set …`.
    pub command: Vec<String>,
    /// When a rank fails, stop all and start them all again, up to this
    /// many times (one node only); the trainer continues from the newest
    /// complete checkpoint.
    pub max_restarts: u32,
}

/// Set on every rank to the number of restarts so far (0 on the first
/// attempt): `train` continues its run folder when it is above 0.
pub const RESTART_ENV: &str = "FERROTRON_RESTART";

/// The resolved world of this node's children.
struct Plan {
    first_rank: usize,
    world: usize,
    local_world: usize,
    node_rank: usize,
    addr: String,
    port: u16,
}

pub fn launch(args: &LaunchArgs) -> Result<()> {
    if args.max_restarts > 0 && args.nnodes > 1 {
        bail!("--max-restarts works on one node (--nnodes 1): restarting needs every node's ranks stopped and started together; use your cluster's restart policy (e.g. SLURM --requeue) across nodes");
    }
    install_signal_handlers();
    let exe = std::env::current_exe().context("finding this executable to start the ranks")?;
    let mut attempt = 0;
    loop {
        // A new rendezvous port each attempt: the old one may linger.
        let plan = plan(args)?;
        let signals = SIGNALS.load(Ordering::SeqCst);
        let outcome = run_once(&exe, args, &plan, attempt);
        let interrupted = SIGNALS.load(Ordering::SeqCst) != signals;
        match outcome {
            Err(e) if !interrupted && attempt < args.max_restarts => {
                attempt += 1;
                eprintln!("error: {e:#}\nrestart {attempt} of {}: starting every rank again (they continue from the newest complete checkpoint)", args.max_restarts);
            }
            other => return other,
        }
    }
}

/// Starts every rank of this node once and supervises them to the end.
fn run_once(exe: &std::path::Path, args: &LaunchArgs, plan: &Plan, attempt: u32) -> Result<()> {
    let beats = HeartbeatDir::new(attempt)?;
    let mut ranks = Vec::new();
    for local in 0..plan.local_world {
        let rank = plan.first_rank + local;
        match spawn(exe, &args.command, plan, local, attempt, &beats.0) {
            Ok(r) => ranks.push(r),
            Err(e) => {
                stop(&mut ranks, libc::SIGTERM);
                return Err(e.context(format!("starting rank {rank}")));
            }
        }
    }
    let outcome = supervise(&mut ranks, &beats.0);
    for r in ranks.iter_mut() {
        r.join_output();
    }
    outcome
}

fn plan(args: &LaunchArgs) -> Result<Plan> {
    if args.nproc_per_node == 0 || args.nnodes == 0 {
        bail!("--nproc-per-node and --nnodes must be at least 1");
    }
    if args.node_rank >= args.nnodes {
        bail!("--node-rank {} is not below --nnodes {}", args.node_rank, args.nnodes);
    }
    if args.command.is_empty() {
        bail!("no command to launch: e.g. `ferrotron launch --nproc-per-node 2 train --config c.toml`");
    }
    let addr = match (&args.master_addr, args.nnodes) {
        (Some(a), _) => a.clone(),
        (None, 1) => "127.0.0.1".into(),
        (None, _) => bail!("--master-addr is needed with several nodes: the host name or address of node 0, the same on every node"),
    };
    let port = match (args.master_port, args.nnodes) {
        (Some(p), _) => p,
        (None, 1) => free_port()?,
        (None, _) => DEFAULT_PORT,
    };
    Ok(Plan {
        first_rank: args.node_rank * args.nproc_per_node,
        world: args.nnodes * args.nproc_per_node,
        local_world: args.nproc_per_node,
        node_rank: args.node_rank,
        addr,
        port,
    })
}

/// A port free right now (the OS picks; rank 0 binds it moments later).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port for the rendezvous")?;
    Ok(l.local_addr()?.port())
}

// ---- children ----

struct Rank {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
    output: Vec<JoinHandle<()>>,
}

impl Rank {
    fn join_output(&mut self) {
        for h in self.output.drain(..) {
            let _ = h.join();
        }
    }
}

fn spawn(exe: &std::path::Path, command: &[String], plan: &Plan, local: usize, attempt: u32, beats: &Path) -> Result<Rank> {
    let rank = plan.first_rank + local;
    let mut cmd = Command::new(exe);
    cmd.args(command)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", plan.world.to_string())
        .env("LOCAL_RANK", local.to_string())
        .env("LOCAL_WORLD_SIZE", plan.local_world.to_string())
        .env("GROUP_RANK", plan.node_rank.to_string())
        .env("MASTER_ADDR", &plan.addr)
        .env("MASTER_PORT", plan.port.to_string())
        .env(RESTART_ENV, attempt.to_string())
        .env(heartbeat::DIR_ENV, beats)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Our own group: the terminal's Ctrl-C reaches the child once, through us.
        .process_group(0);
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        cmd.env("NCCL_NVLS_ENABLE", "0");
    }
    if rank == 0 {
        cmd.env_remove(QUIET_ENV);
    } else {
        cmd.env(QUIET_ENV, "1");
    }
    let bar_on_terminal = rank == 0 && std::io::stderr().is_terminal();
    cmd.stderr(if bar_on_terminal { Stdio::inherit() } else { Stdio::piped() });
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to send
    // SIGTERM to this child if the launcher dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning {}", exe.display()))?;
    let mut output = Vec::new();
    if let Some(out) = child.stdout.take() {
        output.push(forward(out, rank, false));
    }
    if let Some(err) = child.stderr.take() {
        output.push(forward(err, rank, true));
    }
    Ok(Rank { rank, child, status: None, output })
}

/// Copy a child's stream to ours line by line, each line prefixed.
fn forward(stream: impl Read + Send + 'static, rank: usize, to_stderr: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut line = Vec::new();
        let prefix = format!("[rank {rank}] ");
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            // One write per line so lines of different ranks never interleave.
            let mut buf = prefix.as_bytes().to_vec();
            buf.extend_from_slice(&line);
            let _ = if to_stderr { std::io::stderr().lock().write_all(&buf) } else { std::io::stdout().lock().write_all(&buf) };
        }
    })
}

// ---- supervision ----

/// Wait for every rank; on the first failure, a hung rank or a signal,
/// stop the rest.
fn supervise(ranks: &mut [Rank], beats: &Path) -> Result<()> {
    let mut failure: Option<String> = None;
    let mut seen_signals = 0;
    loop {
        let (signals, sig) = (SIGNALS.load(Ordering::SeqCst), LAST_SIGNAL.load(Ordering::SeqCst));
        if signals > seen_signals {
            seen_signals = signals;
            if failure.is_none() {
                failure = Some(format!("stopped by {} (forwarded to every rank)", signal_name(sig)));
                stop(ranks, sig);
                return finish(ranks, failure);
            }
        }
        poll(ranks);
        if ranks.iter().any(|r| r.status.is_some_and(|s| !s.success())) {
            // A rank that fails usually takes its peers down within moments
            // (they see its connection close): collect those too, so the
            // message names every failed rank, not only whichever exited
            // first in this poll.
            let settle = Instant::now() + Duration::from_millis(500);
            while Instant::now() < settle && ranks.iter().any(|r| r.status.is_none()) {
                std::thread::sleep(Duration::from_millis(20));
                poll(ranks);
            }
            let failed: Vec<String> = ranks.iter().filter_map(|r| r.status.filter(|s| !s.success()).map(|s| format!("rank {} {}", r.rank, describe(s)))).collect();
            failure = Some(format!("{}; stopped the other ranks (each rank's own error is above)", failed.join(", ")));
        }
        if failure.is_none() {
            failure = hung(ranks, beats);
        }
        if failure.is_some() {
            stop(ranks, libc::SIGTERM);
            return finish(ranks, failure);
        }
        if ranks.iter().all(|r| r.status.is_some()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A living rank whose heartbeat is older than its timeout, described.
/// When several are, the one whose heartbeat stopped first is named: the
/// others are usually waiting for it in a collective.
fn hung(ranks: &[Rank], beats: &Path) -> Option<String> {
    let now = heartbeat::now();
    let mut stale: Vec<(usize, heartbeat::Beat)> = ranks
        .iter()
        .filter(|r| r.status.is_none())
        .filter_map(|r| heartbeat::read(&beats.join(format!("rank{}.json", r.rank))).map(|b| (r.rank, b)))
        .filter(|(_, b)| now - b.time > b.timeout_s)
        .collect();
    stale.sort_by(|a, b| a.1.time.total_cmp(&b.1.time));
    let (rank, b) = stale.first()?;
    let others: Vec<String> = stale[1..].iter().map(|(r, _)| r.to_string()).collect();
    let also = if others.is_empty() { String::new() } else { format!(" (rank(s) {} stalled after it, likely waiting for it)", others.join(", ")) };
    Some(format!(
        "rank {rank} made no progress for {:.1} s (its last heartbeat: step {}, phase {}; dist.timeout_s = {}): it hangs outside any collective{also}; stopped every rank",
        now - b.time,
        b.step,
        b.phase,
        b.timeout_s
    ))
}

/// The folder the ranks link their heartbeats into, one per attempt,
/// removed when the attempt ends.
struct HeartbeatDir(PathBuf);

impl HeartbeatDir {
    fn new(attempt: u32) -> Result<HeartbeatDir> {
        let dir = std::env::temp_dir().join(format!("ferrotron-launch-{}-{attempt}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(HeartbeatDir(dir))
    }
}

impl Drop for HeartbeatDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Records the exit status of every rank that has ended.
fn poll(ranks: &mut [Rank]) {
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        if let Ok(Some(st)) = r.child.try_wait() {
            r.status = Some(st);
        }
    }
}

/// Wait up to GRACE for stopped ranks (a second Ctrl-C cuts it short),
/// then SIGKILL the rest.
fn finish(ranks: &mut [Rank], failure: Option<String>) -> Result<()> {
    let deadline = Instant::now() + GRACE;
    let signals = SIGNALS.load(Ordering::SeqCst);
    while ranks.iter().any(|r| r.status.is_none()) && Instant::now() < deadline && SIGNALS.load(Ordering::SeqCst) == signals {
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            if let Ok(Some(st)) = r.child.try_wait() {
                r.status = Some(st);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(ranks, libc::SIGKILL);
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        r.status = r.child.wait().ok();
    }
    match failure {
        Some(f) => bail!("{f}"),
        None => Ok(()),
    }
}

/// Send `sig` to the process group of every rank still running.
fn stop(ranks: &mut [Rank], sig: i32) {
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        if let Ok(Some(st)) = r.child.try_wait() {
            r.status = Some(st);
            continue;
        }
        // SAFETY: signalling the group of a child we started and have not reaped.
        unsafe {
            libc::kill(-(r.child.id() as i32), sig);
        }
    }
}

/// "exited with status 3" / "was killed by signal 9 (SIGKILL)".
fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s} ({})", signal_name(s)),
        _ => format!("ended ({st})"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

// ---- signals ----

static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only atomics here: async-signal-safe.
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to atomics.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}
