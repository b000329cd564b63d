//! Multi-rank observability, issue 17: every rank's step and phase times in
//! metrics.jsonl and `ferrotron report`'s per-rank heat map from them; the
//! communication self-test at the start of a run of several ranks.

use ferrotron::telemetry::heatmap::rank_grids;
use ferrotron::telemetry::metrics::{read_metrics, MetricLine, TrainMetrics};
use ferrotron::telemetry::run_report::{report, RANKS_PNG};
use std::path::Path;
use std::process::{Command, Output};

fn run(dir: &Path, world: usize, name: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrotron"));
    cmd.current_dir(dir);
    if world > 1 {
        cmd.args(["launch", "--nproc-per-node", &world.to_string()]);
    }
    cmd.arg("train");
    let base = [
        "train.batch_size=2", "train.seq_len=16", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2",
        "model.d_ff=64", "train.samples=0", "run.progress=false", "train.eval_every=0", "train.steps=6",
    ];
    for kv in base.iter().chain(extra).map(|s| s.to_string()).chain([format!("run.name={name}")]) {
        cmd.args(["--set", &kv]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A 2-rank run's report draws the heat map, and its data is the logged
/// per-rank times: each step's row holds both ranks' times, rank 0's being
/// its own line's `step_ms`, and min / max / mean agree with the row.
#[test]
fn a_two_rank_report_draws_the_heat_map_of_the_logged_times() {
    let tmp = tempfile::tempdir().unwrap();
    run(tmp.path(), 2, "two", &["dist.zero_stage=1"]);
    let dir = tmp.path().join("runs/two");
    let rep = report(&dir, None).unwrap();
    assert_eq!(rep.ranks_png.as_deref(), Some(dir.join(RANKS_PNG).as_path()));
    assert!(std::fs::metadata(dir.join(RANKS_PNG)).unwrap().len() > 1000);
    assert!(rep.text.contains("per-rank heat map") && rep.text.contains("slowest rank most often"), "{}", rep.text);

    let all = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    let train: Vec<&TrainMetrics> = all.iter().filter_map(|l| if let MetricLine::Train(t) = l { Some(t) } else { None }).collect();
    let grids = rank_grids(&train);
    let labels: Vec<&str> = grids.iter().map(|g| g.label.as_str()).collect();
    assert_eq!(labels, ["step ms", "forward ms", "backward ms", "optimizer ms"]);
    let step = &grids[0];
    assert_eq!(step.steps, (1..=6).collect::<Vec<u64>>());
    for (t, row) in train.iter().zip(&step.values) {
        let r = t.ranks.as_ref().unwrap();
        assert_eq!(row, &r.rank_step_ms);
        assert_eq!(row.len(), 2);
        // Rank 0's slot is its own step time, passed through a sum with zeros.
        assert_eq!(row[0], t.step_ms);
        assert_eq!(r.min_ms, row[0].min(row[1]));
        assert_eq!(r.max_ms, row[0].max(row[1]));
        assert!((r.mean_ms - 0.5 * (row[0] + row[1])).abs() < 1e-12);
        assert_eq!(r.rank_fwd_ms[0], t.fwd_ms.unwrap());
        assert_eq!(r.rank_opt_ms[0], t.opt_ms.unwrap());
    }

    // One rank: no heat map.
    run(tmp.path(), 1, "one", &[]);
    let one = report(&tmp.path().join("runs/one"), None).unwrap();
    assert!(one.ranks_png.is_none() && !tmp.path().join("runs/one").join(RANKS_PNG).exists());
}

/// The self-test runs at the start of a 2-rank run: collectives checked, a
/// bus bandwidth logged and printed; a warning below half the expected
/// figure; off with dist.self_test = false; never on one rank.
#[test]
fn the_comm_self_test_is_logged_and_warns_below_half_the_expected_figure() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(tmp.path(), 2, "st", &[]);
    let printed = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(printed.contains("comm self-test (tcp, 2 ranks): collectives correct") && printed.contains("no expected figure"), "{printed}");
    let st: Vec<serde_json::Value> = lines(&tmp.path().join("runs/st")).into_iter().filter(|l| l["kind"] == "comm_self_test").collect();
    assert_eq!(st.len(), 1);
    let l = &st[0];
    assert_eq!((l["world"].as_u64(), l["bytes"].as_u64(), l["step"].as_u64()), (Some(2), Some(1 << 20), Some(0)));
    assert_eq!(l["checked"].as_array().unwrap().len(), 5);
    // busbw = algbw · 2(w−1)/w = algbw at w = 2; algbw = bytes / time.
    let (alg, bus, ms) = (l["algbw_gbs"].as_f64().unwrap(), l["busbw_gbs"].as_f64().unwrap(), l["median_ms"].as_f64().unwrap());
    assert!(bus > 0.0 && (bus - alg).abs() < 1e-12 && (alg - (1u64 << 20) as f64 / (ms * 1e-3) / 1e9).abs() < 1e-9 * alg);

    // An expected figure no loopback reaches: the warning.
    let out = run(tmp.path(), 2, "slow", &["dist.expected_busbw_gbs=100000"]);
    let printed = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(printed.contains("below half the expected figure"), "{printed}");
    assert!(lines(&tmp.path().join("runs/slow")).iter().any(|l| l["kind"] == "comm_self_test" && l["below_half"] == true));

    run(tmp.path(), 2, "off", &["dist.self_test=false"]);
    run(tmp.path(), 1, "solo", &[]);
    for name in ["off", "solo"] {
        assert!(lines(&tmp.path().join("runs").join(name)).iter().all(|l| l["kind"] != "comm_self_test"), "{name}");
    }
}
