//! The host memory of `offload.optimizer = cpu`, measured: the growth of
//! the process's resident memory (/proc/self/statm) from before the
//! Offload is built to after two steps, against `budget::offload_bytes`
//! (what `info` prints and the start-up check refuses on) within 2%, and
//! the Offload's own count of its allocations against it exactly — for
//! AdamW and 8-bit AdamW, `offload.params` none and cpu, with and without
//! clipping. Building the offload from weights it consumes adds the pool
//! and about one unit to the peak, not a second copy of the weights.
//!
//! `offload.optimizer = nvme` (8-bit AdamW, `offload.params` none and
//! nvme): between steps the host holds the gradient pool and the passes'
//! read buffers only (the Offload's count, measured within 2%, within
//! `info`'s resident part); `info`'s host bytes bound the peak of the
//! steps and of the build (units read, stepped and written pass through).
//!
//! Each case runs in a fresh process (this test binary again, one case
//! named in an environment variable) with glibc's mmap threshold fixed
//! low, so that large buffers are mapped on allocation and unmapped on
//! free: the resident growth is then what is live, not what an earlier
//! case or a freed gradient buffer left in the heap.

#[path = "common/process_memory.rs"]
mod process_memory;
use process_memory::{hwm, rss};
use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::Backend;
use ferrotron::config::{self, Config};
use ferrotron::model::init::init_weights;
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::store::Unit;
use ferrotron::model::{Model, Recompute};
use ferrotron::parallel::offload::{budget, Offload};
use ferrotron::parallel::zero::Zero;
use std::path::Path;

const CASE_VAR: &str = "FERROTRON_OFFLOAD_HOSTMEM_CASE";
const TEST_NAME: &str = "host_memory_is_what_info_says";

/// A model of ~25M parameters: hundreds of MB of state, so that the fixed
/// costs of a process (thread stacks, allocator arenas: a few MB) stay
/// well under the 2% measured.
/// `case`: optimizer,params,clip[,tier[,host_gb]] (tier cpu unless named,
/// host_gb 0); the nvme tier's files go under `path`.
fn cfg(case: &str, path: &Path) -> Config {
    let mut words = case.split(',');
    let (opt, params, clip) = (words.next().unwrap(), words.next().unwrap(), words.next().unwrap());
    let tier = words.next().unwrap_or("cpu");
    let host_gb = words.next().unwrap_or("0");
    let sets: Vec<String> = [
        "model.d_model=384", "model.n_layers=12", "model.n_heads=6", "model.n_kv_heads=6", "model.d_ff=1536",
        "run.progress=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("optimizer.name={opt}"), format!("offload.params={params}"), format!("train.grad_clip={clip}")])
    .chain([format!("offload.optimizer={tier}"), format!("offload.path=\"{}\"", path.display()), format!("offload.host_gb={host_gb}")])
    .collect();
    config::load(None, &sets).unwrap()
}

/// The child's part: builds the Offload, runs two steps (gradients made
/// on the device as backward would, every unit), prints the numbers.
fn measure(case: &str) {
    // SAFETY: called before this process allocates anything large.
    assert_eq!(unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024) }, 1, "mallopt");
    let scratch = tempfile::tempdir().unwrap();
    let c = cfg(case, scratch.path());
    let layout = ParamLayout::new(&c.model);
    let weights = init_weights(&c.model, &layout, 1);
    let mut b = CpuBackend::new();
    let comm = Box::new(ferrotron::dist::SoloComm);
    let mut zero = match c.offload.params.as_str() {
        "cpu" | "nvme" => Zero::new_streamed(&mut b, &c.model, &layout, comm).unwrap(),
        _ => Zero::new_offloaded(&mut b, &c.model, &layout, comm, &weights, false).unwrap(),
    };
    // Peak resident memory from here on (Linux: writing 5 resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss0, dev0) = (rss(), b.live_bytes());
    let mut off = Offload::new(&c, &layout, &weights).unwrap();
    let units = Unit::all(c.model.n_layers);
    for step in 0..2 {
        off.begin_step(1e-3, c.train.grad_clip).unwrap();
        for &u in units.iter().rev() {
            off.fetch_grads(&mut b, u).unwrap();
            let v = off.device_grads(u).unwrap();
            b.fill(v, 1e-3 * (step + 1) as f32).unwrap();
            off.grads_done(&mut b, &mut zero, u).unwrap();
        }
        off.finish(&mut b, &mut zero, c.train.grad_clip).unwrap();
    }
    if c.offload.params == "nvme" {
        // A pass reads the weights from the files: the read buffers exist.
        let mut model = Model::new_bare(&c.model, Recompute::Off);
        let tokens: Vec<u32> = (0..64).map(|i| (i * 7 % 200) as u32).collect();
        model.eval_loss_in(&mut b, &mut off.store(&mut zero), &tokens, &tokens, 2, 32).unwrap();
    }
    let grown = rss() - rss0;
    let dev = b.live_bytes() - dev0;
    let predicted = budget::offload_bytes(&c).unwrap().host;
    let peak = hwm().saturating_sub(rss0).saturating_sub(b.peak_memory_bytes() - dev0);
    // Building from weights it consumes (what a run does) never holds a
    // second copy of them: the growth at its peak is the new part of the
    // offload (pool, state) less what it took over, plus about a unit.
    let given = weights.clone();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss1 = rss();
    let owned = Offload::new_owned(&c, &layout, given).unwrap();
    let build_peak = hwm().saturating_sub(rss1);
    drop(owned);
    println!("HOSTMEM {} {} {} {} {} {}", grown - dev, predicted, off.host_bytes(), layout.total, peak, build_peak);
}

#[test]
fn host_memory_is_what_info_says() {
    if let Ok(case) = std::env::var(CASE_VAR) {
        measure(&case);
        return;
    }
    for opt in ["adamw", "adamw8bit"] {
        for params in ["none", "cpu"] {
            for clip in ["0", "1"] {
                check_cpu_tier(&format!("{opt},{params},{clip}"));
            }
        }
    }
    for params in ["none", "nvme"] {
        for clip in ["0", "1"] {
            check_nvme_tier(&format!("adamw8bit,{params},{clip},nvme"));
        }
    }
    // Mixed: about half of the units resident (0.08 GB of ~0.15 GB).
    for params in ["none", "nvme"] {
        check_mixed(&format!("adamw8bit,{params},0,nvme,0.08"));
    }
}

/// What a measuring process reported.
struct Measured {
    /// Resident growth after the steps, less the device's.
    grown: u64,
    /// `info`'s host bytes.
    predicted: u64,
    /// The Offload's count of its allocations after the steps.
    counted: u64,
    params: u64,
    /// Peak resident growth over the steps, less the device's peak.
    peak: u64,
    /// Peak resident growth while building from owned weights.
    build_peak: u64,
}

/// Runs `case` in a fresh process (see the module doc).
fn run_case(case: &str) -> Measured {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE_VAR, case)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{case}: the measuring process failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // The harness may print the test's name on the same line.
    let line = text.lines().find_map(|l| l.split_once("HOSTMEM ")).unwrap_or_else(|| panic!("{case}: no measurement in\n{text}")).1;
    let v: Vec<u64> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
    Measured { grown: v[0], predicted: v[1], counted: v[2], params: v[3], peak: v[4], build_peak: v[5] }
}

fn check_cpu_tier(case: &str) {
    let Measured { grown: measured, predicted, counted, params: params_n, peak, build_peak } = run_case(case);
    let c = cfg(case, Path::new("unused"));
    let pool = budget::offload_bytes(&c).unwrap().host_pool;
    let layout = ParamLayout::new(&c.model);
    let biggest = ferrotron::model::store::unit_ranges(&c.model, &layout).iter().map(|r| r.len()).max().unwrap() as u64;
    println!("{case}: building from owned weights grew the peak by {build_peak} B (weights {} B, pool {pool} B)", 4 * params_n);
    // Slack: 1 MiB for the process's own small allocations.
    assert!(build_peak <= pool + 4 * biggest + (1 << 20), "{case}: building the offload from its weights held more than the pool and one unit besides them");
    println!(
        "{case}: measured {measured} B, info {predicted} B ({:.3} B/param), counted {counted} B, diff {:+.2}%; \
         peak growth less the device's peak {peak} B (informative: the two peaks need not coincide)",
        predicted as f64 / params_n as f64,
        100.0 * (measured as f64 - predicted as f64) / predicted as f64
    );
    assert_eq!(counted, predicted, "{case}: the offload's own count of its allocations vs info");
    assert!(measured.abs_diff(predicted) as f64 <= 0.02 * predicted as f64, "{case}: measured {measured} B vs info {predicted} B: more than 2% apart");
}

/// A mixed split (`offload.host_gb`): between steps the host holds the
/// resident units, the gradient pool and (params = nvme) the read buffers
/// — the Offload's count, `info`'s resident part and pool exactly, the
/// measured growth within 2% of it; `info`'s whole host figure (with the
/// window of units in files passing through a step) bounds the peaks.
fn check_mixed(case: &str) {
    let Measured { grown, predicted, counted, params: params_n, peak, build_peak } = run_case(case);
    let b = budget::offload_bytes(&cfg(case, Path::new("unused"))).unwrap();
    println!(
        "{case}: {} units resident ({} B), {} in files; between steps measured {grown} B, counted {counted} B, diff {:+.2}%; \
         peaks: steps {peak} B, build {build_peak} B, info {predicted} B ({:.3} B/param)",
        b.host_units,
        b.host_resident(),
        b.disk_units,
        100.0 * (grown as f64 - counted as f64) / counted as f64,
        predicted as f64 / params_n as f64
    );
    assert!(b.host_units > 0 && b.disk_units > 0, "{case}: a split with both tiers");
    let resident = b.host_resident() + b.host_images + b.host_pool;
    assert!(counted >= resident && counted <= resident + b.host_reads, "{case}: counted {counted} B vs info's resident part and pool {resident} B (+ read buffers {} B)", b.host_reads);
    if case.contains(",none,") {
        assert_eq!(counted, resident, "{case}: the offload's own count vs info");
    }
    // 2% plus the nvme tier's thread stacks and arenas (see check_nvme_tier).
    let slack = 0.02 * counted as f64 + (4 << 20) as f64;
    assert!(grown.abs_diff(counted) as f64 <= slack, "{case}: measured {grown} B vs counted {counted} B: more than 2% + 4 MiB apart");
    assert!(peak <= predicted, "{case}: the steps' peak {peak} B is above info's {predicted} B");
    assert!(build_peak <= predicted, "{case}: the build's peak {build_peak} B is above info's {predicted} B");
}

/// The nvme tier keeps no unit on the host between steps: what stays is
/// the gradient pool and (params = nvme) the read buffers a pass made,
/// at most `info`'s; `info`'s whole host figure (with the units passing
/// through a step) bounds the peaks.
fn check_nvme_tier(case: &str) {
    let Measured { grown, predicted, counted, params: params_n, peak, build_peak } = run_case(case);
    let b = budget::offload_bytes(&cfg(case, Path::new("unused"))).unwrap();
    println!(
        "{case}: between steps measured {grown} B, counted {counted} B (info's pool {} B + read buffers {} B); \
         peaks: steps {peak} B, build {build_peak} B, info {predicted} B ({:.3} B/param)",
        b.host_pool,
        b.host_reads,
        predicted as f64 / params_n as f64
    );
    assert!(counted >= b.host_pool && counted <= b.host_pool + b.host_reads, "{case}: counted {counted} B outside the pool and read buffers info names");
    if case.contains(",nvme,") {
        assert!(counted > b.host_pool, "{case}: the pass made no read buffer");
    }
    // 2%, plus 4 MiB: this tier's threads (the per-step read-ahead and
    // the parameter reader) bring stacks and allocator arenas, a few MiB
    // that the cpu tier's cases (ten times the bytes) absorb in their 2%.
    let slack = 0.02 * counted as f64 + (4 << 20) as f64;
    assert!(grown.abs_diff(counted) as f64 <= slack, "{case}: measured {grown} B vs counted {counted} B: more than 2% + 4 MiB apart");
    assert!(peak <= predicted, "{case}: the steps' peak {peak} B is above info's {predicted} B");
    assert!(build_peak <= predicted, "{case}: the build's peak {build_peak} B is above info's {predicted} B");
}
