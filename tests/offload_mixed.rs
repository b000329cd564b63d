//! Mixed offload tiers (`offload.optimizer = nvme` with `offload.host_gb`):
//! the units the budget holds keep master weights and state in host memory,
//! the rest in files. On the CPU backend a mixed run equals the plain run,
//! the all-cpu run and the all-nvme run bit for bit (the arithmetic is the
//! same: only where each unit waits between steps changes), with the
//! weights resident on the device or streamed (`offload.params = nvme`);
//! the units not resident are only in files; the budget counts the split
//! the run makes and refuses before anything is created; a kill -9 resumes
//! bit for bit, also with another split.

#[path = "common/checkpoints.rs"]
mod checkpoints;
#[path = "common/offload_runs.rs"]
mod offload_runs;
use offload_runs::{small_cfg, strings};
use checkpoints::{assert_same_state, last_ckpt};
use ferrotron::backend::cpu::CpuBackend;
use ferrotron::backend::{Backend, View};
use ferrotron::ckpt;
use ferrotron::config::{self, Config};
use ferrotron::model::init::init_weights;
use ferrotron::model::layout::ParamLayout;
use ferrotron::model::store::{unit_ranges, Unit};
use ferrotron::parallel::offload::{budget, placement, Offload};
use ferrotron::parallel::zero::Zero;
use ferrotron::train::trainer::train;
use std::path::Path;
use std::process::{Command, Stdio};

fn cfg(dir: &Path, name: &str, extra: &[String]) -> Config {
    small_cfg(dir, name, 4, extra)
}

/// `offload.host_gb` that keeps about half of `c`'s units' bytes in host
/// memory (a split with units in both tiers, checked).
fn half_split(c: &Config) -> String {
    let layout = ParamLayout::new(&c.model);
    let units = placement::unit_bytes(c, &layout).unwrap();
    let half: u64 = units.iter().map(|u| u.resident()).sum::<u64>() / 2;
    let disk = placement::on_disk(&units, half);
    assert!(disk.iter().any(|&d| d) && disk.iter().any(|&d| !d), "a split with both tiers: {disk:?}");
    // Round up to whole bytes: host_gb is in 10^9 bytes.
    format!("offload.host_gb={}", (half as f64 + 0.5) / 1e9)
}

/// Plain, all-cpu, all-nvme and mixed runs with the same settings: the same
/// losses (train and validation) and final weights and state, bit for bit.
/// `params`: where the compute weights live (`none`: on the device; `nvme`:
/// streamed, from host memory for resident units, from the files for the
/// rest; the all-cpu run streams from host memory).
fn four_ways_equal(opt: &str, params: &str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    let mut base = strings(extra);
    base.push(format!("optimizer.name={opt}"));
    base.push(format!("offload.path=\"{}\"", scratch.display()));
    let split = half_split(&cfg(tmp.path(), "x", &base));
    let run = |name: &str, off: &[&str]| {
        let mut sets = base.clone();
        sets.extend(strings(off));
        train(&cfg(tmp.path(), name, &sets), None).unwrap()
    };
    let cpu_params = if params == "none" { "none" } else { "cpu" };
    let plain = run("plain", &[]);
    let host = run("cpu", &["offload.optimizer=cpu", &format!("offload.params={cpu_params}")]);
    let disk = run("nvme", &["offload.optimizer=nvme", &format!("offload.params={params}")]);
    let mixed = run("mixed", &["offload.optimizer=nvme", &format!("offload.params={params}"), &split]);
    let what = format!("{opt} params={params} {extra:?} {split}");
    assert_eq!(plain.losses.len(), 8);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (name, other) in [("cpu", &host), ("nvme", &disk), ("mixed", &mixed)] {
        assert!(bits(&plain.losses) == bits(&other.losses), "{what} {name}: losses {:?} vs {:?}", plain.losses, other.losses);
        assert_eq!(plain.final_val_loss.map(f32::to_bits), other.final_val_loss.map(f32::to_bits), "{what} {name}: val loss");
        assert_same_state(&last_ckpt(&tmp.path().join("plain")), &last_ckpt(&tmp.path().join(name)), &format!("{what} {name}"));
    }
    if scratch.exists() {
        let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "{what}: scratch files left behind: {left:?}");
    }
}

#[test]
fn mixed_equals_plain_cpu_and_nvme_adamw() {
    four_ways_equal("adamw", "none", &[]);
    four_ways_equal("adamw", "none", &["train.grad_clip=0", "train.grad_accum=2"]);
    four_ways_equal("adamw", "nvme", &["train.grad_clip=0", "model.tied_embeddings=false"]);
}

#[test]
fn mixed_equals_plain_cpu_and_nvme_adamw8bit() {
    four_ways_equal("adamw8bit", "none", &["model.tied_embeddings=false", "offload.prefetch=1"]);
    four_ways_equal("adamw8bit", "nvme", &["train.grad_accum=2"]);
    four_ways_equal("adamw8bit", "nvme", &["train.grad_clip=0", "train.checkpoint_layers=true", "model.n_layers=10"]);
}

/// The units the budget does not hold are only in files: no host copy
/// between steps, a file each, rewritten by every step; the resident
/// units have no file and stay in host memory. The placement is the
/// budget's (the split `info` prints), and the offload's count of its host
/// bytes is the budget's resident part and pool exactly.
#[test]
fn units_not_resident_are_only_in_files() {
    let tmp = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let mut sets = strings(&["optimizer.name=adamw8bit", "offload.optimizer=nvme", "train.grad_clip=0", &format!("model.tied_embeddings={tied}")]);
        sets.push(format!("offload.path=\"{}\"", tmp.path().join("scratch").display()));
        let split = half_split(&cfg(tmp.path(), "x", &sets));
        sets.push(split);
        let c = cfg(tmp.path(), "x", &sets);
        let layout = ParamLayout::new(&c.model);
        let (_, on_disk) = placement::plan(&c, &layout).unwrap();
        let need = budget::offload_bytes(&c).unwrap();
        let weights = init_weights(&c.model, &layout, 1);
        let mut b = CpuBackend::new();
        let mut zero = Zero::new_offloaded(&mut b, &c.model, &layout, Box::new(ferrotron::dist::SoloComm), &weights, false).unwrap();
        let mut off = Offload::new(&c, &layout, &weights).unwrap();
        let units = Unit::all(c.model.n_layers);
        assert_eq!(off.resident_units(), need.host_units, "tied {tied}: resident units vs the budget's split");
        assert_eq!(need.host_units + need.disk_units, units.len());
        assert_eq!(off.host_bytes(), need.host_resident() + need.host_pool, "tied {tied}: the offload's host bytes vs the budget's");
        let dir = off.files_dir().unwrap().to_path_buf();
        let file_of = |u: usize| dir.join(format!("unit_{u:04}.state"));
        let listed = || {
            let mut v: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
            v.sort();
            v
        };
        let want: Vec<_> = (0..units.len()).filter(|&u| on_disk[u]).map(file_of).collect();
        assert_eq!(listed(), want, "tied {tied}: a file for each unit not resident, none for the others");
        let file_bytes: u64 = want.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        assert!(file_bytes <= need.disk && need.disk - file_bytes <= 7 * 4096 * need.disk_units as u64, "tied {tied}: files {file_bytes} B vs the budget's {} B", need.disk);
        let read_all = || want.iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>();
        let mut before = read_all();
        for step in 0..2 {
            off.begin_step(1e-2, 0.0).unwrap();
            for &u in units.iter().rev() {
                off.fetch_grads(&mut b, u).unwrap();
                let v = off.device_grads(u).unwrap();
                b.fill(v, 0.01 * (step + 1) as f32).unwrap();
                off.grads_done(&mut b, &mut zero, u).unwrap();
            }
            off.finish(&mut b, &mut zero, 0.0).unwrap();
            assert_eq!(off.resident_units(), need.host_units, "tied {tied} step {step}: the resident units are back home, no other");
            assert_eq!(listed(), want, "tied {tied} step {step}: no file for a resident unit");
            let now = read_all();
            for (f, (a, n)) in want.iter().zip(before.iter().zip(&now)) {
                assert_ne!(a, n, "step {step} rewrote {}", f.display());
            }
            before = now;
        }
        // The device weights are the master weights, wherever they live,
        // and the files' are the master of their units.
        let master = off.master_weights().unwrap();
        let mut dev = vec![0.0f32; layout.total];
        b.download(View::whole(zero.shard_params, layout.total), &mut dev).unwrap();
        assert!(master.iter().zip(&dev).all(|(a, b)| a.to_bits() == b.to_bits()), "tied {tied}: device vs master");
        for (u, r) in unit_ranges(&c.model, &layout).iter().enumerate() {
            assert!(master[r.clone()].iter().zip(&weights[r.clone()]).any(|(a, b)| a != b), "tied {tied}: unit {u} stepped");
            if on_disk[u] {
                let bytes = std::fs::read(file_of(u)).unwrap();
                let file: Vec<f32> = bytes[..4 * r.len()].chunks(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect();
                assert!(file.iter().zip(&master[r.clone()]).all(|(a, b)| a.to_bits() == b.to_bits()), "unit {u}: file vs master");
            }
        }
        drop(off);
        assert!(!dir.exists(), "scratch folder removed with the run");
    }
}

/// The budget for a split: the host holds the resident units (their bytes
/// as placed), the disk the rest; either short is refused with a message
/// naming `offload.host_gb`; a real run refuses before creating anything.
#[test]
fn budget_counts_the_split_and_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let path = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    let with = |extra: &[&str]| {
        let mut sets = strings(&["model.preset=tiny-llama", "offload.optimizer=nvme", "optimizer.name=adamw8bit", &path]);
        sets.extend(strings(extra));
        cfg(tmp.path(), "x", &sets)
    };
    let c = with(&[]);
    let layout = ParamLayout::new(&c.model);
    let units = placement::unit_bytes(&c, &layout).unwrap();
    let (all_disk, all_host) = (budget::offload_bytes(&c).unwrap(), budget::offload_bytes(&with(&["offload.host_gb=1000"])).unwrap());
    let mixed_cfg = with(&[&half_split(&c)]);
    let mixed = budget::offload_bytes(&mixed_cfg).unwrap();
    let on_disk = placement::plan(&mixed_cfg, &layout).unwrap().1;
    // Host: the resident units' bytes exactly; disk: the others' files.
    let resident: u64 = units.iter().zip(&on_disk).filter(|(_, d)| !**d).map(|(u, _)| u.resident()).sum();
    assert_eq!(mixed.host_resident(), resident);
    assert_eq!(mixed.host_params + mixed.disk_params, layout.total as u64);
    assert_eq!((all_host.disk, all_host.disk_units, all_host.host_window), (0, 0, 0), "every unit in host memory: no files, no window");
    assert_eq!(all_host.host, budget::offload_bytes(&with(&["offload.optimizer=cpu", "offload.path=\"\""])).unwrap().host, "all resident = the cpu tier");
    assert_eq!(all_disk.host_units, 0);
    assert!(mixed.disk < all_disk.disk && mixed.disk > 0);
    assert!(mixed.host > all_disk.host - all_disk.host_window + mixed.host_window);
    // The window is sized by the largest unit in a file.
    let biggest_file = units.iter().zip(&on_disk).filter(|(_, d)| **d).map(|(u, _)| u.master_state()).max().unwrap();
    assert_eq!(mixed.host_window, (c.offload.prefetch as u64 + 3) * 2 * biggest_file);
    // Refusals name the knob.
    let e = budget::check(&mixed_cfg, mixed, Some(u64::MAX), Some(mixed.disk - 1)).unwrap_err().to_string();
    assert!(e.contains("of disk") && e.contains("offload.host_gb"), "{e}");
    let e = budget::check(&mixed_cfg, mixed, Some(mixed.host - 1), Some(u64::MAX)).unwrap_err().to_string();
    assert!(e.contains("host memory") && e.contains("lower offload.host_gb"), "{e}");
    budget::check(&mixed_cfg, mixed, Some(mixed.host), Some(mixed.disk)).unwrap();
    // A real run whose resident units cannot fit in this machine's memory
    // refuses before it creates anything (terabytes of state in host_gb).
    let big_sets = strings(&["offload.optimizer=nvme", &path, "offload.host_gb=1e7", "model.d_model=8192", "model.n_layers=400", "model.n_heads=64", "model.n_kv_heads=64", "model.d_ff=22016"]);
    let big = cfg(tmp.path(), "big", &big_sets);
    let need = budget::offload_bytes(&big).unwrap();
    if need.host <= budget::host_available().unwrap_or(u64::MAX) {
        eprintln!("skipped: more host memory than the {} the big model needs", need.host);
        return;
    }
    let e = train(&big, None).unwrap_err().to_string();
    assert!(e.contains("host memory") && e.contains("offload.host_gb"), "{e}");
    assert!(!tmp.path().join("big").exists() && !tmp.path().join("scratch").exists(), "nothing created");
}

#[test]
fn host_gb_is_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |sets: &[&str]| {
        let mut v = strings(sets);
        v.push(format!("run.dir=\"{}\"", tmp.path().display()));
        config::load(None, &v).map(|_| ()).unwrap_err().to_string()
    };
    assert!(load(&["offload.optimizer=cpu", "offload.host_gb=10"]).contains("needs offload.optimizer = nvme"));
    assert!(load(&["offload.host_gb=10"]).contains("needs offload.optimizer = nvme"));
    assert!(load(&["offload.optimizer=nvme", "offload.path=\"x\"", "offload.host_gb=-1"]).contains("0 or more"));
}

/// A checkpoint of a mixed run resumes with another split (all in files,
/// all resident, another mix) and ends where the uninterrupted run ends.
#[test]
fn resume_with_another_split_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let path = format!("offload.path=\"{}\"", tmp.path().join("scratch").display());
    let base = strings(&["optimizer.name=adamw8bit", "offload.optimizer=nvme", "offload.params=nvme", &path]);
    let split = half_split(&cfg(tmp.path(), "x", &base));
    let all_host = "offload.host_gb=1000".to_string();
    let full = train(&cfg(tmp.path(), "full", &strings(&["optimizer.name=adamw8bit"])), None).unwrap();
    for (i, (first, then)) in [(&split, "offload.host_gb=0".to_string()), (&all_host, split.clone()), (&split, all_host.clone())].into_iter().enumerate() {
        let name = format!("killed{i}");
        let run = tmp.path().join(&name);
        let with = |s: &str| base.iter().cloned().chain([s.to_string()]).collect::<Vec<_>>();
        train(&cfg(tmp.path(), &name, &with(first)), None).unwrap();
        std::fs::remove_dir_all(run.join("checkpoints/step_00000008")).unwrap();
        let resumed = train(&cfg(tmp.path(), &name, &with(&then)), Some(&run)).unwrap();
        assert_eq!(resumed.losses, full.losses[4..].to_vec(), "{first} then {then}");
        assert_same_state(&last_ckpt(&tmp.path().join("full")), &last_ckpt(&run), &format!("{first} then {then}"));
    }
}

fn cli_sets(name: &str, scratch: &Path, steps: u64, host_gb: &str) -> Vec<String> {
    let mut v = vec!["train".to_string()];
    for s in [
        "train.batch_size=2", "train.seq_len=16", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=64",
        "model.n_layers=4", "train.samples=0", "run.progress=false", "train.eval_every=0", "train.ckpt_every=1", "train.keep_ckpts=2",
        "optimizer.name=adamw8bit", "offload.optimizer=nvme", "offload.params=nvme",
    ] {
        v.push("--set".into());
        v.push(s.into());
    }
    for s in [format!("train.steps={steps}"), format!("run.name={name}"), format!("offload.path=\"{}\"", scratch.display()), host_gb.to_string()] {
        v.push("--set".into());
        v.push(s);
    }
    v
}

/// kill -9 in the middle of a mixed run (resident units stepping in host
/// memory, the others rewriting their files): every checkpoint left loads
/// and `--resume` ends where the uninterrupted run ends, bit for bit.
#[test]
fn kill_9_mid_mixed_run_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    let steps = 30;
    // The same model as the command line's, for the split.
    let probe = config::load(None, &cli_sets("p", &scratch, steps, "offload.host_gb=0")[1..].iter().filter(|s| *s != "--set").cloned().collect::<Vec<_>>()).unwrap();
    let split = half_split(&probe);
    let bin = env!("CARGO_BIN_EXE_ferrotron");
    let out = Command::new(bin).args(cli_sets("ref", &scratch, steps, &split)).current_dir(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = tmp.path().join("runs/victim");
    let mut child = Command::new(bin).args(cli_sets("victim", &scratch, steps, &split)).current_dir(tmp.path()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|m| m.lines().count()).unwrap_or(0) < 4 {
        assert!(t0.elapsed().as_secs() < 120, "the victim never got going");
        assert!(child.try_wait().unwrap().is_none(), "the victim ended before the kill");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for e in std::fs::read_dir(run.join("checkpoints")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("step_") && name[5..].bytes().all(|c| c.is_ascii_digit()) {
            ckpt::load(&e.path()).unwrap_or_else(|err| panic!("unloadable {name}: {err:#}"));
        }
    }
    let out = Command::new(bin).args(["train", "--resume", "runs/victim"]).current_dir(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "nothing left after the resumed run");
    let last = format!("checkpoints/step_{steps:08}");
    let (a, b) = (ckpt::load(&tmp.path().join("runs/ref").join(&last)).unwrap(), ckpt::load(&run.join(&last)).unwrap());
    assert_same_state(&a, &b, "killed and resumed vs uninterrupted");
}
