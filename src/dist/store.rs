//! The TCP rendezvous: rank 0 listens on MASTER_ADDR:MASTER_PORT, every
//! other rank connects (retrying until `dist.timeout_s`) and says hello
//! (rank, world size); once all have arrived rank 0 answers each with the
//! bytes it publishes (NCCL's unique id; nothing for the TCP communicator).
//! The connections stay open and become the [`Star`] the TCP collectives
//! run on.
//!
//! Failures name ranks: rank 0 reports the ranks that never arrived (and
//! tells the ranks that did, so all fail with one message); another rank
//! that cannot reach rank 0 says where it looked.

use super::rendezvous::WorldInfo;
use super::star::{join, Star};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const HELLO_MAGIC: [u8; 4] = *b"FThi";
const WELCOME_MAGIC: [u8; 4] = *b"FTok";
const REFUSED_MAGIC: [u8; 4] = *b"FTno";
const VERSION: u32 = 1;

/// Meet every rank of `info`'s world. Rank 0 hands `publish` to all; every
/// rank gets it back. A world of 1 meets no one.
pub fn rendezvous(info: &WorldInfo, timeout: Duration, publish: &[u8]) -> Result<(Star, Vec<u8>)> {
    if info.world == 1 {
        return Ok((Star::single(timeout), publish.to_vec()));
    }
    let at = format!("{}:{}", info.master_addr, info.master_port);
    if info.rank == 0 {
        let links = serve(info, timeout, publish).with_context(|| format!("rendezvous at {at} (rank 0 of {})", info.world))?;
        Ok((Star::new(0, info.world, timeout, links)?, publish.to_vec()))
    } else {
        let (link, got) = join_world(info, timeout).with_context(|| format!("rendezvous at {at} (rank {} of {})", info.rank, info.world))?;
        Ok((Star::new(info.rank, info.world, timeout, vec![Some(link)])?, got))
    }
}

// ---- rank 0 ----

fn serve(info: &WorldInfo, timeout: Duration, publish: &[u8]) -> Result<Vec<Option<TcpStream>>> {
    let listener = listen(info)?;
    let deadline = Instant::now() + timeout;
    let mut links: Vec<Option<TcpStream>> = (0..info.world).map(|_| None).collect();
    while links.iter().skip(1).any(Option::is_none) && Instant::now() < deadline {
        match listener.accept() {
            Ok((s, _)) => {
                if let Err(e) = admit(s, info, &mut links, deadline) {
                    refuse_all(&mut links, &format!("{e:#}"));
                    return Err(e);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => bail!("accepting connections failed: {e}"),
        }
    }
    let missing: Vec<usize> = (1..info.world).filter(|&r| links[r].is_none()).collect();
    if !missing.is_empty() {
        let why = format!(
            "rank{} {} of {} did not arrive within {:.1} s (dist.timeout_s); start every rank with the same MASTER_ADDR, \
             MASTER_PORT and world size, and check that each can reach rank 0's host",
            if missing.len() > 1 { "s" } else { "" },
            join(&missing),
            info.world,
            timeout.as_secs_f64()
        );
        refuse_all(&mut links, &why);
        bail!(why);
    }
    for (r, s) in links.iter_mut().enumerate().skip(1) {
        let s = s.as_mut().expect("every rank arrived");
        send_frame(s, WELCOME_MAGIC, publish).with_context(|| format!("answering rank {r}"))?;
    }
    Ok(links)
}

/// Listen on all interfaces, or only on the loopback when MASTER_ADDR is
/// one (a one-node job is then not reachable from outside).
fn listen(info: &WorldInfo) -> Result<TcpListener> {
    let port = info.master_port;
    let resolved = (info.master_addr.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("MASTER_ADDR `{}` does not resolve to an address", info.master_addr))?
        .next()
        .with_context(|| format!("MASTER_ADDR `{}` resolves to no address", info.master_addr))?;
    let bind = match resolved.ip() {
        ip if ip.is_loopback() => resolved,
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    };
    let l = TcpListener::bind(bind).map_err(|e| {
        anyhow!("rank 0 cannot listen on {bind}: {e}. Another job may be using port {port}: set MASTER_PORT to a free port")
    })?;
    l.set_nonblocking(true).context("making the listener non-blocking")?;
    Ok(l)
}

/// Read a newcomer's hello and file its connection under its rank.
/// Connections that are not ferrotron ranks are dropped; ranks that
/// contradict the world are fatal (the job is misconfigured).
fn admit(s: TcpStream, info: &WorldInfo, links: &mut [Option<TcpStream>], deadline: Instant) -> Result<()> {
    let Ok(mut s) = setup(s, deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100))) else { return Ok(()) };
    let mut hello = [0u8; 16];
    if s.read_exact(&mut hello).is_err() || hello[..4] != HELLO_MAGIC {
        return Ok(()); // not one of ours (a port scan, a stale client)
    }
    let field = |i: usize| u32::from_le_bytes(hello[i..i + 4].try_into().expect("4 bytes")) as usize;
    let (version, rank, world) = (field(4), field(8), field(12));
    if version != VERSION as usize {
        bail!("a rank speaks rendezvous version {version}, rank 0 speaks {VERSION}: run the same ferrotron binary everywhere");
    }
    if world != info.world {
        bail!("rank {rank} was started with a world size of {world}, rank 0 with {}: every rank must get the same world size", info.world);
    }
    if rank == 0 || rank >= info.world {
        bail!("a process claims rank {rank} in a world of {}: ranks other than 0 must be 1..{}", info.world, info.world - 1);
    }
    if links[rank].is_some() {
        bail!("two processes claim rank {rank}: every rank must be started exactly once");
    }
    links[rank] = Some(s);
    Ok(())
}

/// Tell every connected rank why the rendezvous failed (best effort).
fn refuse_all(links: &mut [Option<TcpStream>], why: &str) {
    for s in links.iter_mut().flatten() {
        let _ = send_frame(s, REFUSED_MAGIC, why.as_bytes());
    }
}

// ---- other ranks ----

fn join_world(info: &WorldInfo, timeout: Duration) -> Result<(TcpStream, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    loop {
        match knock(info, timeout, deadline) {
            // Rank 0 drops a connection whose hello it could not read (it
            // takes it for a stranger) without a word: knock again while
            // there is time, instead of failing a rendezvous rank 0 is
            // still waiting on (seen once under load in CI).
            Err(Knock::Dropped(_)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(Knock::Dropped(e) | Knock::Failed(e)) => return Err(e),
            Ok(out) => return Ok(out),
        }
    }
}

/// Why one knock at rank 0 failed: it closed the connection unanswered
/// (worth another knock), or anything else.
enum Knock {
    Dropped(anyhow::Error),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Knock {
    fn from(e: anyhow::Error) -> Self {
        Knock::Failed(e)
    }
}

/// One connection to rank 0: hello, then its welcome or refusal.
fn knock(info: &WorldInfo, timeout: Duration, deadline: Instant) -> std::result::Result<(TcpStream, Vec<u8>), Knock> {
    let s = connect_until(&info.master_addr, info.master_port, deadline, timeout)?;
    // Rank 0 waits up to `timeout` for the others before it answers.
    let mut s = setup(s, 2 * timeout).map_err(anyhow::Error::from)?;
    let mut hello = HELLO_MAGIC.to_vec();
    for x in [VERSION, info.rank as u32, info.world as u32] {
        hello.extend_from_slice(&x.to_le_bytes());
    }
    s.write_all(&hello).map_err(|e| Knock::Dropped(anyhow!("rank 0 closed the connection before the hello ({e})")))?;
    let (magic, body) = recv_frame(&mut s).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Knock::Failed(anyhow!("rank 0 did not answer within {:.1} s", 2.0 * timeout.as_secs_f64())),
        _ => Knock::Dropped(anyhow!("rank 0 closed the connection without answering ({e}): it failed, or another program listens on this port")),
    })?;
    match magic {
        WELCOME_MAGIC => Ok((s, body)),
        REFUSED_MAGIC => Err(Knock::Failed(anyhow!("{} (reported by rank 0)", String::from_utf8_lossy(&body)))),
        _ => Err(Knock::Failed(anyhow!("the program at this address is not a ferrotron rank 0; set MASTER_PORT to a free port"))),
    }
}

/// Connect to rank 0, retrying while it is not listening yet.
fn connect_until(host: &str, port: u16, deadline: Instant, timeout: Duration) -> Result<TcpStream> {
    let mut last = String::from("no attempt made");
    loop {
        match (host, port).to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    let left = deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(10), Duration::from_secs(2));
                    match TcpStream::connect_timeout(&a, left) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = format!("{a}: {e}"),
                    }
                }
            }
            Err(e) => last = format!("`{host}` does not resolve: {e}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "could not reach rank 0 within {:.1} s (dist.timeout_s; last error {last}); is rank 0 running, \
                 with the same MASTER_ADDR and MASTER_PORT?",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- sockets and frames ----

/// Blocking, no Nagle delay (collective headers are small), bounded waits.
fn setup(s: TcpStream, wait: Duration) -> std::io::Result<TcpStream> {
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(wait))?;
    s.set_write_timeout(Some(wait))?;
    Ok(s)
}

/// magic, u32 length, body.
fn send_frame(s: &mut TcpStream, magic: [u8; 4], body: &[u8]) -> std::io::Result<()> {
    let mut f = magic.to_vec();
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(body);
    s.write_all(&f)
}

fn recv_frame(s: &mut TcpStream) -> std::io::Result<([u8; 4], Vec<u8>)> {
    let mut head = [0u8; 8];
    s.read_exact(&mut head)?;
    let len = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
    let mut body = vec![0u8; len.min(1 << 20)];
    s.read_exact(&mut body)?;
    Ok((head[..4].try_into().expect("4 bytes"), body))
}
