//! The NVMe tier writes each stepped unit's file behind the optimizer (a
//! writer thread, a few pooled buffers): a write hands over at once, and
//! anything that reads the unit's file afterwards waits for it — the
//! optimizer's read, a pass's read, a checkpoint; a run with writes slowed
//! on purpose (`debug.offload_write_delay_ms`) still equals the plain run
//! bit for bit, its steps ending with their writes on disk; a write that
//! fails (its file replaced by a folder, or the scratch folder removed
//! mid-step) stops the step with an error naming the file, without a
//! panic or a hang.

#[path = "common/checkpoints.rs"]
mod checkpoints;
#[path = "common/offload_runs.rs"]
mod offload_runs;
use checkpoints::{assert_same_state, last_ckpt};
use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::Backend;
use ferrotron::config::Config;
use ferrotron::model::init::init_weights;
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::store::{unit_ranges, Unit};
use ferrotron::parallel::offload::host_optimizer::{unit_layout, UnitHost};
use ferrotron::parallel::offload::nvme::{AlignedBuf, StateFiles};
use ferrotron::parallel::offload::Offload;
use ferrotron::parallel::zero::Zero;
use ferrotron::train::trainer::train;
use offload_runs::{small_cfg, strings, train_metric};
use std::path::Path;
use std::time::{Duration, Instant};

fn cfg(dir: &Path, name: &str, n_layers: usize, extra: &[String]) -> Config {
    small_cfg(dir, name, n_layers, extra)
}

/// Every byte of a unit's master weights and optimizer state.
fn unit_bytes(h: &UnitHost) -> Vec<Vec<u8>> {
    let mut out = vec![h.h.view_bytes(h.master).unwrap().to_vec()];
    out.extend(h.opt.state_tensors().iter().map(|t| h.h.view_bytes(t.view).unwrap().to_vec()));
    out
}

/// A unit written behind a slow writer: the hand-over returns before the
/// file changes; the optimizer's read and a pass's read wait for the write
/// (two queued writes of one unit: for both, in order) and see exactly
/// what was written, 8-bit state included.
#[test]
fn a_read_waits_for_the_units_pending_write() {
    const DELAY: Duration = Duration::from_millis(300);
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), "x", 2, &strings(&["optimizer.name=adamw8bit"]));
    let layout = ParamLayout::new(&c.model);
    let (u, r) = (1, unit_ranges(&c.model, &layout)[1].clone());
    let l = unit_layout(&layout, &r);
    let weights = init_weights(&c.model, &layout, 5);
    let files = StateFiles::create(&tmp.path().join("f"), false).unwrap();
    // A unit stepped `steps` times from the initial weights.
    let stepped = |steps: usize| {
        let mut h = UnitHost::new(u, &c.optimizer, &l).unwrap();
        h.set_master(&weights[r.clone()]).unwrap();
        for s in 0..steps {
            let g: Vec<f32> = (0..r.len()).map(|i| ((i * 7 + s) % 13) as f32 * 1e-3 - 6e-3).collect();
            h.step(g, 1e-2, 1.0).0.unwrap();
        }
        h
    };
    let mut first = stepped(0);
    files.write(&mut first).unwrap();
    let on_disk = || std::fs::read(files.path(u)).unwrap();
    let before = on_disk();
    files.set_write_delay_ms(DELAY.as_millis() as u64);
    let meta = |h: &UnitHost| h.opt.meta();
    for queued in [1, 2] {
        let hosts: Vec<UnitHost> = (1..=queued).map(|k| stepped(k + queued)).collect();
        let t = Instant::now();
        for h in &hosts {
            files.write_behind(h).unwrap();
        }
        assert!(t.elapsed() < DELAY, "{queued} write(s) handed over in {:?}: not behind", t.elapsed());
        assert!(on_disk() == before, "the file changed before the writer's delay was over");
        let last = hosts.last().unwrap();
        let back = files.read(u, &c.optimizer, &l, &meta(last)).unwrap();
        assert!(t.elapsed() >= DELAY * queued as u32, "the read did not wait for {queued} pending write(s)");
        assert!(unit_bytes(&back) == unit_bytes(last), "{queued} queued: the read saw another state than the last written");
        assert_eq!(meta(&back), meta(last));
        let mut restored = stepped(0);
        files.write(&mut restored).unwrap();
        assert!(on_disk() == before, "a synchronous write is on disk when it returns");
    }
    // A pass's read (the leading master section) waits too.
    let h = stepped(3);
    files.write_behind(&h).unwrap();
    let mut buf = AlignedBuf::new(files.pass_bytes(r.len())).unwrap();
    files.read_pass(u, r.len(), &mut buf).unwrap();
    assert!(buf.f32s(0, r.len()).iter().zip(h.master()).all(|(a, b)| a.to_bits() == b.to_bits()), "the pass read the old weights");
    files.flush().unwrap();
}

/// Slow writes (every unit file's write waits 25 ms first, so each step
/// ends with writes still pending): losses, checkpoints (saved unit by unit
/// from the files) and the final state equal the plain run's bit for bit,
/// overlapped and clipped, AdamW and 8-bit AdamW; every step waited for
/// writes behind it.
#[test]
fn slow_writes_equal_the_plain_run() {
    for (opt, clip) in [("adamw8bit", "0"), ("adamw", "1")] {
        let tmp = tempfile::tempdir().unwrap();
        let mut base = strings(&[&format!("optimizer.name={opt}"), &format!("train.grad_clip={clip}")]);
        base.push(format!("offload.path=\"{}\"", tmp.path().join("scratch").display()));
        let run = |name: &str, extra: &[&str]| {
            let mut sets = base.clone();
            sets.extend(strings(extra));
            train(&cfg(tmp.path(), name, 3, &sets), None).unwrap()
        };
        let plain = run("plain", &[]);
        let slow = run("slow", &["offload.optimizer=nvme", "debug.offload_write_delay_ms=25"]);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&plain.losses) == bits(&slow.losses), "{opt} clip {clip}: losses {:?} vs {:?}", plain.losses, slow.losses);
        assert_eq!(plain.final_val_loss.map(f32::to_bits), slow.final_val_loss.map(f32::to_bits), "{opt} clip {clip}: val loss");
        assert_same_state(&last_ckpt(&tmp.path().join("plain")), &last_ckpt(&tmp.path().join("slow")), &format!("{opt} clip {clip}"));
        let waits = train_metric(&tmp.path().join("slow"), "offload_write_wait_ms");
        assert!(waits.len() == 8 && waits.iter().all(|&w| w > 0.0), "{opt} clip {clip}: offload_write_wait_ms {waits:?}");
    }
}

/// How a test breaks the scratch folder while writes are pending.
#[derive(Clone, Copy, Debug)]
enum Sabotage {
    /// The first unit written (the head) becomes a folder.
    FileToFolder,
    /// The whole scratch folder goes.
    FolderRemoved,
}

/// A write that fails mid-step: `finish` returns an error naming the
/// unit's file (no panic, no hang), the writes queued after it are not
/// tried, and the offload still drops cleanly.
#[test]
fn a_failed_write_stops_the_step_naming_the_file() {
    for sabotage in [Sabotage::FileToFolder, Sabotage::FolderRemoved] {
        let tmp = tempfile::tempdir().unwrap();
        let mut sets = strings(&["optimizer.name=adamw", "offload.optimizer=nvme", "train.grad_clip=0", "debug.offload_write_delay_ms=400"]);
        sets.push(format!("offload.path=\"{}\"", tmp.path().join("scratch").display()));
        let c = cfg(tmp.path(), "x", 1, &sets);
        let layout = ParamLayout::new(&c.model);
        let weights = init_weights(&c.model, &layout, 1);
        let mut b = CpuBackend::new();
        let mut zero = Zero::new_offloaded(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm), &weights, false).unwrap();
        let mut off = Offload::new(&c, &layout, &weights).unwrap();
        let dir = off.files_dir().unwrap().to_path_buf();
        let units = Unit::all(c.model.n_layers);
        let head = dir.join(format!("unit_{:04}.state", units.len() - 1));
        let t = Instant::now();
        off.begin_step(1e-2, 0.0).unwrap();
        for &u in units.iter().rev() {
            off.fetch_grads(&mut b, u).unwrap();
            let v = off.device_grads(u).unwrap();
            b.fill(v, 1e-3).unwrap();
            off.grads_done(&mut b, &mut zero, u).unwrap();
        }
        // The units (a few KB each) are read and stepped well within the
        // writer's delay; then the first write opens its file.
        std::thread::sleep(Duration::from_millis(100));
        match sabotage {
            Sabotage::FileToFolder => {
                std::fs::remove_file(&head).unwrap();
                std::fs::create_dir(&head).unwrap();
            }
            Sabotage::FolderRemoved => std::fs::remove_dir_all(&dir).unwrap(),
        }
        let err = format!("{:#}", off.finish(&mut b, &mut zero, 0.0).unwrap_err());
        println!("{sabotage:?}: {err}");
        assert!(err.contains(&head.display().to_string()) && err.contains("was not written"), "{sabotage:?}: {err}");
        drop(off);
        assert!(t.elapsed() < Duration::from_secs(10), "{sabotage:?}: the failed step took {:?}", t.elapsed());
        assert!(!dir.exists(), "{sabotage:?}: the scratch folder is removed with the offload");
    }
}
