//! The communicator layer on the CPU: every collective of `TcpComm` at
//! worlds 1-4 (ranks as threads over loopback, each with its own
//! `CpuBackend`) against values computed directly, failures that must be
//! errors naming ranks and collectives (never hangs), launcher
//! environments, and `ferrotron launch` end to end.

use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::{Backend, DType, View};
use ferrotron::dist::{segment, Comm, Elem, TcpComm, WorldInfo};
use std::collections::HashMap;
use std::time::{Duration, Instant};
#[path = "common/ports.rs"]
mod ports;
use ports::free_port;

/// A port nobody listens on right now (the OS picks it).

fn info(rank: usize, world: usize, port: u16) -> WorldInfo {
    WorldInfo { rank, world, local_rank: rank, local_world: world, master_port: port, ..WorldInfo::single() }
}

/// Runs `f(rank, comm)` on `world` threads that meet on a fresh port;
/// returns what each rank returned, in rank order.
fn ranks<T: Send>(world: usize, timeout_s: f64, f: impl Fn(usize, anyhow::Result<TcpComm>) -> T + Sync) -> Vec<T> {
    let port = free_port();
    let f = &f;
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..world)
            .map(|r| sc.spawn(move || f(r, TcpComm::connect(&info(r, world, port), Duration::from_secs_f64(timeout_s)))))
            .collect();
        hs.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
    })
}

/// Distinct, non-round values for rank `r` (so the summation order shows
/// in the last bits).
fn vals(r: usize, n: usize, salt: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mut z = (r as u64 * 7919 + i as u64 * 104_729 + salt * 15_485_863).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z ^= z >> 29;
            (z % 2_000_003) as f32 / 1_000_003.0 - 1.0
        })
        .collect()
}

fn bytes(r: usize, n: usize) -> Vec<u8> {
    (0..n).map(|i| (r * 31 + i * 7) as u8).collect()
}

/// The fixed-order reference: ((x0 + x1) + x2) + ...
fn ref_sum(world: usize, n: usize, salt: u64) -> Vec<f32> {
    let mut acc = vals(0, n, salt);
    for r in 1..world {
        acc.iter_mut().zip(vals(r, n, salt)).for_each(|(a, x)| *a += x);
    }
    acc
}

fn f32_buf(b: &mut CpuBackend, x: &[f32]) -> View {
    let v = View::whole(b.alloc(x.len(), DType::F32).unwrap(), x.len());
    b.upload(v, x).unwrap();
    v
}

fn u8_buf(b: &mut CpuBackend, x: &[u8]) -> View {
    let v = View::whole(b.alloc(x.len(), DType::U8).unwrap(), x.len());
    b.upload_u8(v, x).unwrap();
    v
}

fn get_f32(b: &mut CpuBackend, v: View) -> Vec<f32> {
    let mut x = vec![0.0; v.len];
    b.download(v, &mut x).unwrap();
    x
}

fn get_u8(b: &mut CpuBackend, v: View) -> Vec<u8> {
    let mut x = vec![0; v.len];
    b.download_u8(v, &mut x).unwrap();
    x
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Segment counts with uneven and empty segments.
fn counts(world: usize, pattern: &[usize]) -> Vec<usize> {
    (0..world).map(|r| pattern[r % pattern.len()]).collect()
}

fn check_all_collectives(rank: usize, world: usize, c: &mut dyn Comm<CpuBackend>) {
    let mut b = CpuBackend::new();
    assert_eq!((c.rank(), c.world(), c.kind()), (rank, world, "tcp"));

    // all_reduce_sum: bit-identical to the fixed-order sum; bytes counted.
    let n = 37;
    let v = f32_buf(&mut b, &vals(rank, n, 1));
    c.all_reduce_sum(&mut b, v).unwrap();
    assert_eq!(bits(&get_f32(&mut b, v)), bits(&ref_sum(world, n, 1)), "all_reduce_sum, world {world}");
    let expect_bytes = if rank == 0 { (world - 1) * 4 * n } else { 4 * n };
    assert_eq!(c.bytes_sent(), expect_bytes as u64, "bytes after one all_reduce_sum, rank {rank} of {world}");

    // reduce_scatter_sum with uneven and empty segments.
    for pattern in [&[5, 0, 3, 7][..], &[1, 4, 2, 6], &[0, 0, 0, 0]] {
        let cs = counts(world, pattern);
        let total: usize = cs.iter().sum();
        let v = f32_buf(&mut b, &vals(rank, total, 2));
        c.reduce_scatter_sum(&mut b, v, &cs).unwrap();
        let (off, len) = segment(&cs, rank);
        let want = ref_sum(world, total, 2);
        assert_eq!(bits(&get_f32(&mut b, v.sub(off, len))), bits(&want[off..off + len]), "reduce_scatter_sum {cs:?}");
    }

    // all_gather, f32 and u8: every segment ends up holding its owner's values.
    let cs = counts(world, &[3, 0, 5, 2]);
    let total: usize = cs.iter().sum();
    let want_f32: Vec<f32> = (0..world).flat_map(|r| { let (o, l) = segment(&cs, r); vals(r, total, 3)[o..o + l].to_vec() }).collect();
    let want_u8: Vec<u8> = (0..world).flat_map(|r| { let (o, l) = segment(&cs, r); bytes(r, total)[o..o + l].to_vec() }).collect();
    let v = f32_buf(&mut b, &vals(rank, total, 3));
    c.all_gather(&mut b, v, &cs, Elem::F32).unwrap();
    assert_eq!(bits(&get_f32(&mut b, v)), bits(&want_f32), "all_gather f32 {cs:?}");
    let v = u8_buf(&mut b, &bytes(rank, total));
    c.all_gather(&mut b, v, &cs, Elem::U8).unwrap();
    assert_eq!(get_u8(&mut b, v), want_u8, "all_gather u8 {cs:?}");

    // broadcast from every root, f32 and u8.
    for root in 0..world {
        let v = f32_buf(&mut b, &vals(rank, 11, 4));
        c.broadcast(&mut b, v, root, Elem::F32).unwrap();
        assert_eq!(bits(&get_f32(&mut b, v)), bits(&vals(root, 11, 4)), "broadcast f32 from {root}");
        let v = u8_buf(&mut b, &bytes(rank, 6));
        c.broadcast(&mut b, v, root, Elem::U8).unwrap();
        assert_eq!(get_u8(&mut b, v), bytes(root, 6), "broadcast u8 from {root}");
    }

    // all_to_all: chunk j of rank i's send lands in chunk i of rank j's recv.
    let chunk = 3;
    let send = f32_buf(&mut b, &vals(rank, chunk * world, 5));
    let recv = f32_buf(&mut b, &vec![0.0; chunk * world]);
    c.all_to_all(&mut b, send, recv, Elem::F32).unwrap();
    let want: Vec<f32> = (0..world).flat_map(|i| vals(i, chunk * world, 5)[chunk * rank..chunk * (rank + 1)].to_vec()).collect();
    assert_eq!(bits(&get_f32(&mut b, recv)), bits(&want), "all_to_all f32");
    let send = u8_buf(&mut b, &bytes(rank, 2 * world));
    let recv = u8_buf(&mut b, &vec![0; 2 * world]);
    c.all_to_all(&mut b, send, recv, Elem::U8).unwrap();
    let want: Vec<u8> = (0..world).flat_map(|i| bytes(i, 2 * world)[2 * rank..2 * (rank + 1)].to_vec()).collect();
    assert_eq!(get_u8(&mut b, recv), want, "all_to_all u8");

    // all_reduce_host: f64 sums in rank order.
    let mut h = vec![0.1 * (rank as f64 + 1.0), 1e10, -(rank as f64)];
    c.all_reduce_host(&mut h).unwrap();
    let mut want = vec![0.0; 3];
    for r in 0..world {
        want[0] += 0.1 * (r as f64 + 1.0);
        want[1] += 1e10;
        want[2] -= r as f64;
    }
    assert_eq!(h, want, "all_reduce_host");

    c.barrier().unwrap();
    c.barrier().unwrap();
}

#[test]
fn every_collective_matches_the_reference_at_worlds_1_to_4() {
    for world in 1..=4 {
        ranks(world, 20.0, |r, c| check_all_collectives(r, world, &mut c.expect("rendezvous")));
    }
}

#[test]
fn bad_arguments_are_errors() {
    ranks(1, 5.0, |_, c| {
        let mut c = c.unwrap();
        let mut b = CpuBackend::new();
        let v = f32_buf(&mut b, &[1.0; 6]);
        let c: &mut dyn Comm<CpuBackend> = &mut c;
        assert!(c.reduce_scatter_sum(&mut b, v, &[2, 3]).unwrap_err().to_string().contains("2 segment counts"));
        assert!(c.all_gather(&mut b, v, &[5], Elem::F32).unwrap_err().to_string().contains("add up to 5"));
        assert!(c.broadcast(&mut b, v, 1, Elem::F32).unwrap_err().to_string().contains("root 1"));
        let w = f32_buf(&mut b, &[0.0; 4]);
        assert!(c.all_to_all(&mut b, v, w, Elem::F32).unwrap_err().to_string().contains("all_to_all"));
    });
}

/// Ranks calling different collectives (or different lengths) fail at
/// once, every rank with the same description.
#[test]
fn out_of_step_ranks_fail_naming_the_collective() {
    let t0 = Instant::now();
    let errs = ranks(3, 20.0, |r, c| {
        let mut c = c.unwrap();
        let mut b = CpuBackend::new();
        let v = f32_buf(&mut b, &[1.0; 8]);
        let c: &mut dyn Comm<CpuBackend> = &mut c;
        c.barrier().unwrap();
        let e = if r == 1 { c.all_gather(&mut b, v, &[4, 4, 0], Elem::F32) } else { c.all_reduce_sum(&mut b, v) };
        let first = e.unwrap_err().to_string();
        // The communicator stays failed.
        let again = c.barrier().unwrap_err().to_string();
        assert!(again.contains("failed earlier"), "{again}");
        first
    });
    for (r, e) in errs.iter().enumerate() {
        println!("{e}");
        assert!(e.contains(&format!("failed on rank {r}")), "{e}");
        assert!(e.contains("ranks 0, 2 called #2 all_reduce_sum(len 8, f32)"), "{e}");
        assert!(e.contains("rank 1 called #2 all_gather(len 8, f32, counts [4, 4, 0])"), "{e}");
    }
    assert!(t0.elapsed() < Duration::from_secs(10));

    let errs = ranks(2, 20.0, |r, c| {
        let mut c = c.unwrap();
        let mut b = CpuBackend::new();
        let v = f32_buf(&mut b, &vec![1.0; 8 + r]);
        Comm::<CpuBackend>::all_reduce_sum(&mut c, &mut b, v).unwrap_err().to_string()
    });
    for e in errs {
        assert!(e.contains("rank 0 called #1 all_reduce_sum(len 8, f32); rank 1 called #1 all_reduce_sum(len 9, f32)"), "{e}");
    }
}

#[test]
fn a_rank_that_never_arrives_is_named() {
    let t0 = Instant::now();
    let port = free_port();
    let timeout = Duration::from_secs(2);
    let errs: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2).map(|r| sc.spawn(move || format!("{:#}", TcpComm::connect(&info(r, 4, port), timeout).err().expect("must fail")))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in &errs {
        println!("{e}");
        assert!(e.contains("ranks 2, 3 of 4 did not arrive within 2.0 s"), "{e}");
    }
    assert!(errs[1].contains("reported by rank 0"), "{}", errs[1]);
    assert!(t0.elapsed() < Duration::from_secs(8), "took {:?}", t0.elapsed());

    // No rank 0 at all.
    let e = format!("{:#}", TcpComm::connect(&info(1, 2, free_port()), Duration::from_secs(1)).err().expect("must fail"));
    assert!(e.contains("could not reach rank 0 within 1.0 s"), "{e}");
}

/// A rank whose first connection rank 0 drops unanswered (as rank 0 drops
/// a connection it takes for a stranger) knocks again and joins: here a
/// listener on the port accepts and closes one connection before the real
/// rank 0 starts there.
#[test]
fn a_rank_dropped_unanswered_knocks_again() {
    let port = free_port();
    let impostor = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the port first");
    std::thread::scope(|sc| {
        let joiner = sc.spawn(move || TcpComm::connect(&info(1, 2, port), Duration::from_secs(10)).map(|c| Comm::<CpuBackend>::world(&c)));
        drop(impostor.accept().expect("rank 1 connects"));
        drop(impostor);
        let rank0 = TcpComm::connect(&info(0, 2, port), Duration::from_secs(10)).expect("rank 0 serves");
        assert_eq!(Comm::<CpuBackend>::world(&rank0), 2);
        assert_eq!(joiner.join().unwrap().expect("rank 1 joins on its second knock"), 2);
    });
}

#[test]
fn a_rank_that_dies_is_named_by_the_others() {
    let t0 = Instant::now();
    let errs = ranks(3, 30.0, |r, c| {
        let mut c = c.unwrap();
        let mut b = CpuBackend::new();
        let v = f32_buf(&mut b, &[1.0; 5]);
        Comm::<CpuBackend>::all_reduce_sum(&mut c, &mut b, v).unwrap();
        if r == 2 {
            drop(c); // closes its sockets, like a crashed process
            return String::new();
        }
        Comm::<CpuBackend>::all_reduce_sum(&mut c, &mut b, v).unwrap_err().to_string()
    });
    for e in &errs[..2] {
        println!("{e}");
        assert!(e.contains("#2 all_reduce_sum") && e.contains("rank 2 closed its connection"), "{e}");
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "a dead rank must be noticed at once, took {:?}", t0.elapsed());

    // Rank 0 dies.
    let errs = ranks(2, 30.0, |r, c| {
        let mut c = c.unwrap();
        if r == 0 {
            return String::new();
        }
        Comm::<CpuBackend>::barrier(&mut c).unwrap_err().to_string()
    });
    assert!(errs[1].contains("#1 barrier") && errs[1].contains("rank 0 closed its connection"), "{}", errs[1]);
}

/// A rank that is alive but never calls the collective: the others fail
/// after the timeout, naming it.
#[test]
fn a_stuck_rank_is_named_after_the_timeout() {
    let t0 = Instant::now();
    let errs = ranks(3, 1.0, |r, c| {
        let mut c = c.unwrap();
        if r == 2 {
            std::thread::sleep(Duration::from_millis(2500));
            return String::new();
        }
        Comm::<CpuBackend>::barrier(&mut c).unwrap_err().to_string()
    });
    for e in &errs[..2] {
        println!("{e}");
        assert!(e.contains("rank 2 did not reach this collective within 1.0 s"), "{e}");
    }
    assert!(t0.elapsed() < Duration::from_secs(6));
}

// ---- launcher environments ----

fn vars(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn torchrun_environment() {
    let w = WorldInfo::from_vars(&vars(&[
        ("RANK", "5"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "4"),
        ("GROUP_RANK", "1"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "1234"),
    ]))
    .unwrap();
    assert_eq!((w.rank, w.world, w.local_rank, w.local_world, w.node_rank), (5, 8, 1, 4, 1));
    assert_eq!((w.master_addr.as_str(), w.master_port, w.launcher), ("node0", 1234, "torchrun"));
    assert_eq!(w.cuda_device(None), 1);
    assert_eq!(w.cuda_device(Some("0,1,2,3")), 1);
    assert_eq!(w.cuda_device(Some("3")), 0, "one visible GPU is device 0");

    // Only RANK and WORLD_SIZE: one node, loopback, default port.
    let w = WorldInfo::from_vars(&vars(&[("RANK", "1"), ("WORLD_SIZE", "2")])).unwrap();
    assert_eq!((w.local_rank, w.local_world, w.master_addr.as_str(), w.master_port), (1, 2, "127.0.0.1", 29500));

    // Nothing: a world of one.
    assert_eq!(WorldInfo::from_vars(&HashMap::new()).unwrap(), WorldInfo::single());
}

#[test]
fn slurm_environment() {
    let w = WorldInfo::from_vars(&vars(&[
        ("SLURM_PROCID", "6"),
        ("SLURM_NTASKS", "7"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NODEID", "3"),
        ("SLURM_TASKS_PER_NODE", "2(x3),1"),
        ("SLURM_JOB_NODELIST", "gpu[01-04,07],cpu3"),
    ]))
    .unwrap();
    assert_eq!((w.rank, w.world, w.local_rank, w.local_world, w.node_rank), (6, 7, 0, 1, 3));
    assert_eq!((w.master_addr.as_str(), w.master_port, w.launcher), ("gpu01", 29500, "slurm"));

    // MASTER_ADDR / MASTER_PORT override.
    let w = WorldInfo::from_vars(&vars(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_JOB_NODELIST", "a,b"),
        ("SLURM_TASKS_PER_NODE", "1(x2)"),
        ("MASTER_ADDR", "10.0.0.9"),
        ("MASTER_PORT", "4000"),
    ]))
    .unwrap();
    assert_eq!((w.master_addr.as_str(), w.master_port), ("10.0.0.9", 4000));

    use ferrotron::dist::rendezvous::{first_host, tasks_on_node};
    assert_eq!(first_host("gpu[01-04,07],cpu3").unwrap(), "gpu01");
    assert_eq!(first_host("node7,node9").unwrap(), "node7");
    assert_eq!(first_host("single").unwrap(), "single");
    assert_eq!(first_host("a[3]-ib,b").unwrap(), "a3-ib");
    assert_eq!(first_host("r[2-3]n[10-12]").unwrap(), "r2n10");
    assert!(first_host("gpu[01-04").is_err());
    assert!(first_host("").is_err());
    assert_eq!(tasks_on_node("4", 0).unwrap(), 4);
    assert_eq!(tasks_on_node("2(x3),1", 2).unwrap(), 2);
    assert!(tasks_on_node("2(x3),1", 4).is_err());
}

#[test]
fn openmpi_environment() {
    let w = WorldInfo::from_vars(&vars(&[
        ("OMPI_COMM_WORLD_RANK", "3"),
        ("OMPI_COMM_WORLD_SIZE", "4"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ("MASTER_ADDR", "host-a"),
    ]))
    .unwrap();
    assert_eq!((w.rank, w.world, w.local_rank, w.local_world, w.node_rank), (3, 4, 1, 2, 1));
    assert_eq!((w.master_addr.as_str(), w.launcher), ("host-a", "openmpi"));

    // Several nodes without MASTER_ADDR: an error that says what to set.
    let e = WorldInfo::from_vars(&vars(&[
        ("OMPI_COMM_WORLD_RANK", "0"),
        ("OMPI_COMM_WORLD_SIZE", "4"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("MASTER_ADDR is not set"), "{e}");

    // torchrun's variables win over SLURM's when both are present (srun torchrun).
    let w = WorldInfo::from_vars(&vars(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("RANK", "1"), ("WORLD_SIZE", "2")])).unwrap();
    assert_eq!((w.rank, w.launcher), (1, "torchrun"));
}

#[test]
fn inconsistent_environments_name_the_variable() {
    let err = |kv: &[(&str, &str)]| WorldInfo::from_vars(&vars(kv)).unwrap_err().to_string();
    assert!(err(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("RANK = 2 is not below WORLD_SIZE = 2"));
    assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "0")]).contains("WORLD_SIZE = 0"));
    assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK = `x`"));
    assert!(err(&[("RANK", "0")]).contains("WORLD_SIZE is not set"));
    assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "3"), ("LOCAL_WORLD_SIZE", "2")]).contains("LOCAL_RANK = 3"));
    assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "99999")]).contains("MASTER_PORT = `99999`"));
    assert!(err(&[("SLURM_PROCID", "4"), ("SLURM_NTASKS", "4")]).contains("SLURM_PROCID = 4 is not below SLURM_NTASKS = 4"));
    assert!(err(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_NODELIST", "n[1-2")]).contains("SLURM_JOB_NODELIST"));
    assert!(err(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "1")]).contains("OMPI_COMM_WORLD_RANK = 1"));
}

// ---- ferrotron launch ----

fn ferrotron(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferrotron")).args(args).output().expect("running ferrotron")
}

#[test]
fn launch_runs_bench_comm_on_two_ranks() {
    let out = ferrotron(&["launch", "--nproc-per-node", "2", "bench", "comm", "--size-mb", "0.1", "--warmup", "1", "--iters", "2"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("[rank 0] {")).unwrap_or_else(|| panic!("no report line in:\n{stdout}"));
    let report: serde_json::Value = serde_json::from_str(line.trim_start_matches("[rank 0] ")).unwrap();
    assert_eq!(report["world"], 2);
    assert_eq!(report["comm"], "tcp");
    assert_eq!(report["checked"].as_array().unwrap().len(), 5);
    // Rank 1 prints no report.
    assert!(!stdout.contains("[rank 1] {"), "{stdout}");
}

#[test]
fn launch_stops_everyone_when_a_rank_fails() {
    let t0 = Instant::now();
    // Rank 0 would wait 60 s for rank 1 at the rendezvous; the launcher must not.
    let out = ferrotron(&["launch", "--nproc-per-node", "2", "bench", "comm", "--fail-rank", "1", "--set", "dist.timeout_s=60"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("[rank 1] error: rank 1 fails on purpose"), "{stderr}");
    assert!(stderr.contains("error: rank 1 exited with status 1; stopped the other ranks"), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());

    let out = ferrotron(&["launch", "--nproc-per-node", "2", "--nnodes", "2", "bench", "comm"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--master-addr is needed"), "{}", String::from_utf8_lossy(&out.stderr));
}
