//! `NcclComm` on real GPUs, checked against `TcpComm` (itself checked
//! against direct references in tests/dist.rs) running the same script on
//! the same CUDA backend.
//!
//! SKIPS (prints "skipping: …" and passes) without a CUDA device, as in CI.
//! With one GPU: world 1 (initialisation, every call path, the bf16 shadow
//! going stale when NCCL writes a buffer). With 2+ GPUs also world =
//! min(GPUs, 4), ranks as threads, one GPU each: every collective with F32,
//! bf16 (`Compute`) and U8 buffers, equal and uneven segments, and ranks
//! out of step failing (with header checks on) instead of hanging.
//!
//! Data are small integers, exact in f32 and bf16, so NCCL's summation
//! order (not ours) cannot change a bit: results must be equal.

use ferrotron::backend::cuda::CudaBackend;
use ferrotron::backend::{Backend, DType, View};
use ferrotron::dist::{segment, Comm, Elem, NcclComm, TcpComm, WorldInfo};
use std::time::Duration;
#[path = "common/ports.rs"]
mod ports;
use ports::free_port;

const TIMEOUT: Duration = Duration::from_secs(60);

fn gpu(i: usize) -> Option<CudaBackend> {
    match CudaBackend::new(i) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("skipping: no CUDA device ({e})");
            None
        }
    }
}


fn info(rank: usize, world: usize, port: u16) -> WorldInfo {
    WorldInfo { rank, world, local_rank: rank, local_world: world, master_port: port, ..WorldInfo::single() }
}

fn put(b: &mut CudaBackend, dtype: DType, x: &[f32]) -> View {
    let v = View::whole(b.alloc(x.len(), dtype).unwrap(), x.len());
    if dtype == DType::U8 {
        b.upload_u8(v, &x.iter().map(|&f| f as u8).collect::<Vec<_>>()).unwrap();
    } else {
        b.upload(v, x).unwrap();
    }
    v
}

fn get(b: &mut CudaBackend, dtype: DType, v: View) -> Vec<f32> {
    if dtype == DType::U8 {
        let mut x = vec![0u8; v.len];
        b.download_u8(v, &mut x).unwrap();
        return x.into_iter().map(f32::from).collect();
    }
    let mut x = vec![0.0; v.len];
    b.download(v, &mut x).unwrap();
    x
}

/// Every collective on F32, bf16 and U8 buffers; returns (what, values)
/// for comparison between communicators.
fn script(b: &mut CudaBackend, c: &mut dyn Comm<CudaBackend>) -> Vec<(String, Vec<f32>)> {
    let (r, w) = (c.rank(), c.world());
    let mut out = Vec::new();
    let ints = |n: usize, m: usize, s: usize| (0..n).map(|i| ((i * 7 + s) % m) as f32).collect::<Vec<f32>>();
    for dt in [DType::F32, DType::Compute] {
        let v = put(b, dt, &ints(1000, 13, r));
        c.all_reduce_sum(b, v).unwrap();
        out.push((format!("all_reduce_sum {dt:?}"), get(b, dt, v)));
        for pattern in [[6, 6, 6, 6], [5, 0, 9, 2]] {
            let counts: Vec<usize> = (0..w).map(|k| pattern[k % 4]).collect();
            let total = counts.iter().sum();
            let v = put(b, dt, &ints(total, 11, r));
            c.reduce_scatter_sum(b, v, &counts).unwrap();
            let (o, l) = segment(&counts, r);
            out.push((format!("reduce_scatter_sum {dt:?} {counts:?}"), get(b, dt, v.sub(o, l))));
            let v = put(b, dt, &ints(total, 17, 3 * r));
            c.all_gather(b, v, &counts, Elem::F32).unwrap();
            out.push((format!("all_gather {dt:?} {counts:?}"), get(b, dt, v)));
        }
        let send = put(b, dt, &ints(5 * w, 19, r));
        let recv = put(b, dt, &vec![0.0; 5 * w]);
        c.all_to_all(b, send, recv, Elem::F32).unwrap();
        out.push((format!("all_to_all {dt:?}"), get(b, dt, recv)));
    }
    let counts: Vec<usize> = (0..w).map(|k| [3, 0, 4, 1][k % 4]).collect();
    let total = counts.iter().sum();
    let v = put(b, DType::U8, &ints(total, 200, 5 * r));
    c.all_gather(b, v, &counts, Elem::U8).unwrap();
    out.push(("all_gather U8".into(), get(b, DType::U8, v)));
    for root in 0..w {
        let v = put(b, DType::F32, &ints(33, 23, r));
        c.broadcast(b, v, root, Elem::F32).unwrap();
        out.push((format!("broadcast F32 from {root}"), get(b, DType::F32, v)));
    }
    let v = put(b, DType::U8, &ints(9, 250, r));
    c.broadcast(b, v, w - 1, Elem::U8).unwrap();
    out.push(("broadcast U8".into(), get(b, DType::U8, v)));
    let send = put(b, DType::U8, &ints(2 * w, 250, r));
    let recv = put(b, DType::U8, &vec![0.0; 2 * w]);
    c.all_to_all(b, send, recv, Elem::U8).unwrap();
    out.push(("all_to_all U8".into(), get(b, DType::U8, recv)));
    let mut h = [r as f64 + 0.5, 2.0];
    c.all_reduce_host(&mut h).unwrap();
    out.push(("all_reduce_host".into(), h.iter().map(|&x| x as f32).collect()));
    c.barrier().unwrap();
    out
}

fn same(nccl: &[(String, Vec<f32>)], tcp: &[(String, Vec<f32>)], rank: usize) {
    assert_eq!(nccl.len(), tcp.len());
    for ((what, n), (_, t)) in nccl.iter().zip(tcp) {
        assert_eq!(n, t, "{what} on rank {rank}: NCCL vs TCP");
    }
    println!("rank {rank}: {} results identical (NCCL vs TCP)", nccl.len());
}

#[test]
fn nccl_at_world_1() {
    let Some(mut b) = gpu(0) else { return };
    let mut nccl = NcclComm::connect(&WorldInfo::single(), TIMEOUT, &mut b).expect("NCCL on one GPU");
    println!("{} on {}", nccl.describe(), b.device_name());
    let mut tcp = TcpComm::connect(&WorldInfo::single(), TIMEOUT).unwrap();
    let n = script(&mut b, &mut nccl);
    let t = script(&mut b, &mut tcp);
    same(&n, &t, 0);
    assert_eq!(Comm::<CudaBackend>::bytes_sent(&nccl), 0, "a world of one sends nothing");

    // A write by NCCL must make the F32 weight's bf16 shadow stale: use W
    // in a matmul (creates the shadow), overwrite W through all_to_all,
    // use it again.
    let (m, k, nn) = (2, 8, 4);
    let w = put(&mut b, DType::F32, &vec![1.0; nn * k]);
    let x = put(&mut b, DType::Compute, &vec![1.0; m * k]);
    let y = put(&mut b, DType::Compute, &vec![0.0; m * nn]);
    b.linear_fwd(y, x, w, None, m, k, nn).unwrap();
    assert_eq!(get(&mut b, DType::Compute, y), vec![8.0; m * nn]);
    let twos = put(&mut b, DType::F32, &vec![2.0; nn * k]);
    nccl.all_to_all(&mut b, twos, w, Elem::F32).unwrap();
    b.linear_fwd(y, x, w, None, m, k, nn).unwrap();
    assert_eq!(get(&mut b, DType::Compute, y), vec![16.0; m * nn], "the matmul used a stale bf16 shadow after NCCL wrote the weight");
}

/// Asynchronous collectives (`start_*` on NCCL's own stream, `wait` makes
/// the compute stream wait for its event): started back to back, the
/// compute stream writing other buffers meanwhile, waited out of order;
/// results as the synchronous calls give; a ticket waits once.
#[test]
fn nccl_async_collectives_at_world_1() {
    let Some(mut b) = gpu(0) else { return };
    let mut nccl = NcclComm::connect(&WorldInfo::single(), TIMEOUT, &mut b).expect("NCCL on one GPU");
    let x: Vec<f32> = (0..4096).map(|i| (i % 97) as f32).collect();
    let (a, g) = (put(&mut b, DType::F32, &x), put(&mut b, DType::Compute, &x));
    let r = put(&mut b, DType::F32, &x);
    let ta = nccl.start_all_reduce_sum(&mut b, a).unwrap();
    let tg = nccl.start_all_gather(&mut b, g, &[x.len()], Elem::F32).unwrap();
    let tr = nccl.start_reduce_scatter_sum(&mut b, r, &[x.len()]).unwrap();
    // Compute-stream work on another buffer while they run.
    let other = put(&mut b, DType::F32, &x);
    b.scale(other, 2.0).unwrap();
    nccl.wait(&mut b, tr).unwrap();
    nccl.wait(&mut b, ta).unwrap();
    nccl.wait(&mut b, tg).unwrap();
    assert_eq!(get(&mut b, DType::F32, a), x);
    assert_eq!(get(&mut b, DType::Compute, g), x);
    assert_eq!(get(&mut b, DType::F32, r), x);
    assert_eq!(get(&mut b, DType::F32, other), x.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
    let t = nccl.start_all_reduce_sum(&mut b, a).unwrap();
    let n = t.0;
    nccl.wait(&mut b, t).unwrap();
    let again = nccl.wait(&mut b, ferrotron::dist::Ticket(n)).unwrap_err().to_string();
    assert!(again.contains("waited for already"), "{again}");
}

#[test]
fn nccl_matches_tcp_on_every_gpu() {
    let Some(b0) = gpu(0) else { return };
    let count = cudarc::driver::CudaContext::device_count().unwrap_or(1) as usize;
    drop(b0);
    if count < 2 {
        println!("skipping: {count} GPU visible, this test needs 2 or more");
        return;
    }
    let world = count.min(4);
    let (pn, pt) = (free_port(), free_port());
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..world)
            .map(|r| {
                sc.spawn(move || {
                    let mut b = CudaBackend::new(r).unwrap();
                    let mut nccl = NcclComm::connect(&info(r, world, pn), TIMEOUT, &mut b).unwrap();
                    let mut tcp = TcpComm::connect(&info(r, world, pt), TIMEOUT).unwrap();
                    let n = script(&mut b, &mut nccl);
                    let t = script(&mut b, &mut tcp);
                    same(&n, &t, r);
                    // Out of step with header checks on: an error, not a hang.
                    nccl.set_checked(true);
                    let v = put(&mut b, DType::F32, &vec![1.0; 2 * world]);
                    let e = if r == 1 { nccl.all_gather(&mut b, v, &vec![2; world], Elem::F32) } else { nccl.all_reduce_sum(&mut b, v) };
                    let e = e.err().map(|e| e.to_string()).unwrap_or_default();
                    assert!(e.contains("out of step"), "rank {r}: {e}");
                })
            })
            .collect();
        for h in hs {
            h.join().expect("rank thread panicked");
        }
    });
}
