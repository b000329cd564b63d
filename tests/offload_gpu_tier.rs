//! The device tier of an offloaded run (`offload.gpu_gb`): the units that
//! budget takes keep master weights and optimizer state on the device and
//! the device optimizer steps them; the rest go to host memory and files
//! as before. On the CPU backend the device optimizer is the host
//! optimizer's arithmetic, so every split equals the plain run bit for bit
//! (losses, validation, weights, state, checkpoints), with and without
//! clipping; checkpoints resume across splits; the budget and `info`
//! count the device's part; bad settings and a device too small are
//! refused before anything is created.

#[path = "common/checkpoints.rs"]
mod checkpoints;
#[path = "common/offload_runs.rs"]
mod offload_runs;
use offload_runs::{small_cfg, strings};
use checkpoints::{assert_same_state, last_ckpt};
use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::{Backend, View};
use ferrotron::config::{self, Config};
use ferrotron::model::init::init_weights;
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::store::Unit;
use ferrotron::parallel::offload::placement::{self, Place};
use ferrotron::parallel::offload::{budget, gpu_tier, Offload};
use ferrotron::parallel::zero::Zero;
use ferrotron::telemetry::memory;
use ferrotron::train::trainer::train;
use std::path::Path;

fn cfg(dir: &Path, name: &str, extra: &[String]) -> Config {
    small_cfg(dir, name, 4, extra)
}

/// GB (10^9 bytes, rounded up to whole bytes) of `bytes`.
fn gb(bytes: u64) -> f64 {
    (bytes as f64 + 0.5) / 1e9
}

/// `offload.gpu_gb` and `offload.host_gb` settings that put about a third
/// of `c`'s units' bytes on the device and a third in host memory (nvme:
/// the rest in files), checked to leave every tier some units.
fn three_way(c: &Config, nvme: bool) -> Vec<String> {
    let layout = ParamLayout::new(&c.model);
    let units = placement::unit_bytes(c, &layout).unwrap();
    let third: u64 = units.iter().map(|u| u.resident()).sum::<u64>() / 3;
    let host = if nvme { third } else { u64::MAX };
    let places = placement::places(&units, third, host);
    assert!(places.contains(&Place::Gpu) && places.contains(&Place::Host), "a split with units on the device and in host memory: {places:?}");
    assert!(!nvme || places.contains(&Place::Disk), "and in files: {places:?}");
    let mut v = vec![format!("offload.gpu_gb={}", gb(third))];
    if nvme {
        v.push(format!("offload.host_gb={}", gb(third)));
    }
    v
}

/// Plain and offloaded runs with units on the device (cpu tier + device,
/// nvme tier + host + device, every unit on the device): the same losses,
/// validation loss, final weights and state, bit for bit.
fn device_tier_equals_plain(opt: &str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    let mut base = strings(extra);
    base.push(format!("optimizer.name={opt}"));
    base.push(format!("offload.path=\"{}\"", scratch.display()));
    let with = |off: &[String]| base.iter().cloned().chain(off.iter().cloned()).collect::<Vec<_>>();
    let probe = |tier: &str| cfg(tmp.path(), "x", &with(&[format!("offload.optimizer={tier}")]));
    let mut cpu = vec!["offload.optimizer=cpu".to_string()];
    cpu.extend(three_way(&probe("cpu"), false));
    let mut nvme = vec!["offload.optimizer=nvme".to_string()];
    nvme.extend(three_way(&probe("nvme"), true));
    let all = strings(&["offload.optimizer=cpu", "offload.gpu_gb=1000"]);
    let run = |name: &str, off: &[String]| train(&cfg(tmp.path(), name, &with(off)), None).unwrap();
    let plain = run("plain", &[]);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(plain.losses.len(), 8);
    for (name, off) in [("cpu_gpu", &cpu), ("nvme_host_gpu", &nvme), ("all_gpu", &all)] {
        let what = format!("{opt} {extra:?} {name} {off:?}");
        let other = run(name, off);
        assert!(bits(&plain.losses) == bits(&other.losses), "{what}: losses {:?} vs {:?}", plain.losses, other.losses);
        assert_eq!(plain.final_val_loss.map(f32::to_bits), other.final_val_loss.map(f32::to_bits), "{what}: val loss");
        assert_same_state(&last_ckpt(&tmp.path().join("plain")), &last_ckpt(&tmp.path().join(name)), &what);
    }
    if scratch.exists() {
        let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "scratch files left behind: {left:?}");
    }
}

#[test]
fn device_tier_equals_plain_adamw() {
    device_tier_equals_plain("adamw", &[]);
    device_tier_equals_plain("adamw", &["train.grad_clip=0", "train.grad_accum=2"]);
    device_tier_equals_plain("adamw", &["train.grad_clip=0", "model.tied_embeddings=false"]);
}

#[test]
fn device_tier_equals_plain_adamw8bit() {
    device_tier_equals_plain("adamw8bit", &["model.tied_embeddings=false", "train.grad_accum=2"]);
    device_tier_equals_plain("adamw8bit", &["train.grad_clip=0"]);
    device_tier_equals_plain("adamw8bit", &["train.grad_clip=0.05", "train.checkpoint_layers=true"]);
}

/// A checkpoint written with one split resumes with another (units moving
/// between device, host memory and files) and ends where the
/// uninterrupted plain run ends, bit for bit.
#[test]
fn resume_across_splits_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let path = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    let base = strings(&["optimizer.name=adamw8bit", &path]);
    let full = train(&cfg(tmp.path(), "full", &base), None).unwrap();
    let probe = cfg(tmp.path(), "x", &base.iter().cloned().chain(["offload.optimizer=nvme".to_string()]).collect::<Vec<_>>());
    let mut three = vec!["offload.optimizer=nvme".to_string()];
    three.extend(three_way(&probe, true));
    let all_gpu = strings(&["offload.optimizer=cpu", "offload.gpu_gb=1000"]);
    let all_files = strings(&["offload.optimizer=nvme"]);
    let all_host = strings(&["offload.optimizer=cpu"]);
    for (i, (first, then)) in [(&three, &all_host), (&all_host, &three), (&all_gpu, &all_files), (&three, &all_gpu)].into_iter().enumerate() {
        let name = format!("split{i}");
        let run = tmp.path().join(&name);
        let with = |s: &[String]| base.iter().cloned().chain(s.iter().cloned()).collect::<Vec<_>>();
        train(&cfg(tmp.path(), &name, &with(first)), None).unwrap();
        std::fs::remove_dir_all(run.join("checkpoints/step_00000008")).unwrap();
        let resumed = train(&cfg(tmp.path(), &name, &with(then)), Some(&run)).unwrap();
        assert_eq!(resumed.losses, full.losses[4..].to_vec(), "{first:?} then {then:?}");
        assert_same_state(&last_ckpt(&tmp.path().join("full")), &last_ckpt(&run), &format!("{first:?} then {then:?}"));
    }
}

/// Device units hold their state on the device only (no host copy, no
/// file); a step leaves their compute weights equal to their master; the
/// `_on` accessors read and write them, the host-only ones refuse them.
#[test]
fn device_units_live_on_the_device_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sets = strings(&["optimizer.name=adamw", "offload.optimizer=nvme", "train.grad_clip=0"]);
    sets.push(format!("offload.path=\"{}\"", tmp.path().join("scratch").display()));
    let probe = cfg(tmp.path(), "x", &sets);
    sets.extend(three_way(&probe, true));
    let c = cfg(tmp.path(), "x", &sets);
    let layout = ParamLayout::new(&c.model);
    let (_, places) = placement::plan_places(&c, &layout).unwrap();
    let weights = init_weights(&c.model, &layout, 1);
    let mut b = CpuBackend::new();
    let mut zero = Zero::new_offloaded(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm), &weights, false).unwrap();
    zero.device_units = gpu_tier::device_units(&mut b, &c, &layout, &weights).unwrap();
    let mut off = Offload::new(&c, &layout, &weights).unwrap();
    let n_gpu = places.iter().filter(|p| **p == Place::Gpu).count();
    assert_eq!(zero.device_units.as_ref().unwrap().count(), n_gpu);
    assert_eq!(off.resident_units(), places.iter().filter(|p| **p == Place::Host).count(), "no host copy of a device unit");
    let need = budget::offload_bytes(&c).unwrap();
    assert_eq!(off.host_bytes(), need.host_resident() + need.host_pool, "the offload's host bytes vs the budget's (no device unit in them)");
    let files = std::fs::read_dir(off.files_dir().unwrap()).unwrap().count();
    assert_eq!(files, places.iter().filter(|p| **p == Place::Disk).count(), "no file for a device unit");
    let units = Unit::all(c.model.n_layers);
    off.begin_step(1e-2, 0.0).unwrap();
    for &u in units.iter().rev() {
        off.fetch_grads(&mut b, u).unwrap();
        let v = off.device_grads(u).unwrap();
        b.fill(v, 0.01).unwrap();
        off.grads_done(&mut b, &mut zero, u).unwrap();
    }
    off.finish(&mut b, &mut zero, 0.0).unwrap();
    let master = off.master_weights_on(&mut b, &mut zero).unwrap();
    let mut dev = vec![0.0f32; layout.total];
    b.download(View::whole(zero.shard_params, layout.total), &mut dev).unwrap();
    assert!(master.iter().zip(&dev).all(|(a, b)| a.to_bits() == b.to_bits()), "device weights vs master");
    assert!(master.iter().zip(&weights).any(|(a, b)| a != b), "stepped");
    let gpu_unit = places.iter().position(|p| *p == Place::Gpu).unwrap();
    let e = off.master_weights().unwrap_err().to_string();
    assert!(e.contains("offload.gpu_gb"), "{e}");
    // Written through the host copy, read back the same.
    let r = off.unit_ranges()[gpu_unit].clone();
    let new: Vec<f32> = (0..r.len()).map(|i| i as f32 * 1e-3).collect();
    let mut all = master.clone();
    all[r.clone()].copy_from_slice(&new);
    off.set_weights_on(&mut b, &mut zero, &all).unwrap();
    assert_eq!(off.master_weights_on(&mut b, &mut zero).unwrap(), all);
    b.download(View::whole(zero.shard_params, layout.total), &mut dev).unwrap();
    assert_eq!(dev[r].to_vec(), new, "the compute weights follow a written master");
}

/// `info`'s budget: the device part (units, params, master + state) is
/// the placement's, added to the device estimate; host and disk hold the
/// rest only.
#[test]
fn budget_and_info_count_the_device_part() {
    let tmp = tempfile::tempdir().unwrap();
    let path = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    let base = strings(&["model.preset=tiny-llama", "offload.optimizer=nvme", "optimizer.name=adamw8bit", &path]);
    let plain = cfg(tmp.path(), "x", &base);
    let mut sets = base.clone();
    sets.extend(three_way(&plain, true));
    let c = cfg(tmp.path(), "x", &sets);
    let layout = ParamLayout::new(&c.model);
    let (units, places) = placement::plan_places(&c, &layout).unwrap();
    let on = |p: Place| units.iter().zip(&places).filter(move |(_, q)| **q == p).map(|(u, _)| *u).collect::<Vec<_>>();
    let gpu = budget::gpu_units(&c).unwrap();
    assert_eq!(gpu.units, on(Place::Gpu).len());
    assert_eq!(gpu.bytes(), on(Place::Gpu).iter().map(|u| u.resident()).sum::<u64>());
    assert!(gpu.bytes() <= (c.offload.gpu_gb * 1e9) as u64);
    let off = budget::offload_bytes(&c).unwrap();
    assert_eq!(off.host_units + off.disk_units + gpu.units, units.len());
    assert_eq!(off.host_params + off.disk_params + gpu.params, layout.total as u64);
    // Without the device part, host memory keeps the units that are now on the device.
    let (before, after) = (memory::estimate(&plain), memory::estimate(&c));
    assert_eq!(after.total() - before.total(), gpu.bytes() + 4 * gpu.biggest, "the device adds master + state (+ a unit's gradient copy when clipping)");
    let info = ferrotron::telemetry::report::format_info(&c);
    assert!(info.contains("gpu_gb = ") && info.contains(&format!("master + optimizer state of {} units", gpu.units)), "{info}");
}

/// Bad settings, and a device too small for the units the budget puts on
/// it, are refused before anything is created, naming offload.gpu_gb.
#[test]
fn refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |sets: &[&str]| {
        let mut v = strings(sets);
        v.push(format!("run.dir=\"{}\"", tmp.path().display()));
        config::load(None, &v).map(|_| ()).unwrap_err().to_string()
    };
    assert!(load(&["offload.gpu_gb=10"]).contains("needs offload.optimizer = cpu or nvme"));
    assert!(load(&["offload.optimizer=cpu", "offload.params=cpu", "offload.gpu_gb=10"]).contains("needs offload.params = none"));
    assert!(load(&["offload.optimizer=cpu", "offload.gpu_gb=-1"]).contains("0 or more"));
    // A device of 1 MB cannot hold the units 1000 GB of budget puts there.
    let c = cfg(tmp.path(), "small", &strings(&["offload.optimizer=cpu", "offload.gpu_gb=1000", "dist.gpu_memory_gb=0.001"]));
    let e = train(&c, None).unwrap_err().to_string();
    assert!(e.contains("offload.gpu_gb = 1000") && e.contains("dist.gpu_memory_gb"), "{e}");
    assert!(!tmp.path().join("small").exists(), "nothing created");
}
