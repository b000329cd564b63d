//! Several "nodes" on one machine: two `ferrotron launch` processes with
//! `--nnodes 2`, node ranks 0 and 1, meeting at 127.0.0.1 — the
//! torchrun-style multi-node path (node ranks, global rank numbering,
//! rendezvous at a master address) end to end on the CPU backend.
//!
//! Reference: the single-process run with the same global batch. Same
//! tolerance and reason as tests/zero.rs: ranks sum their gradients in
//! another order than one process, so values agree to float rounding
//! (2e-5 relative on losses, 1e-4 absolute on weights), far below what a
//! wrong shard or missing reduction moves (1e-2).

#[path = "common/runs.rs"]
mod runs;

use runs::{losses, weights};
use std::process::{Command, Output};
#[path = "common/ports.rs"]
mod ports;
use ports::free_port;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferrotron")
}

fn train_args(name: &str, batch: usize, stage: u32) -> Vec<String> {
    let sets = [
        "model.d_model=64".to_string(),
        "model.n_layers=2".into(),
        "model.n_heads=2".into(),
        "model.n_kv_heads=2".into(),
        "model.d_ff=256".into(),
        "train.seq_len=32".into(),
        "train.eval_every=0".into(),
        "train.samples=0".into(),
        "train.steps=8".into(),
        "train.ckpt_every=8".into(),
        "run.progress=false".into(),
        format!("run.name={name}"),
        format!("train.batch_size={batch}"),
        format!("dist.zero_stage={stage}"),
    ];
    let mut a = vec!["train".to_string()];
    for s in sets {
        a.push("--set".into());
        a.push(s);
    }
    a
}


fn check(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}


/// Two nodes of two ranks each (world 4), ZeRO-3, against one process.
#[test]
fn two_nodes_on_localhost_match_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin()).current_dir(tmp.path()).args(train_args("single", 8, 0)).output().unwrap();
    check(&out, "single process");

    let port = free_port().to_string();
    let node = |rank: &str| {
        let mut cmd = Command::new(bin());
        cmd.current_dir(tmp.path());
        cmd.args(["launch", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", rank, "--master-addr", "127.0.0.1", "--master-port", &port]);
        cmd.args(train_args("nodes", 2, 3));
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let (n0, n1) = (node("0"), node("1"));
    let (o0, o1) = (n0.wait_with_output().unwrap(), n1.wait_with_output().unwrap());
    check(&o0, "node 0");
    check(&o1, "node 1");

    let runs = tmp.path().join("runs");
    let (a, b) = (losses(&runs.join("single")), losses(&runs.join("nodes")));
    assert_eq!(a.len(), 8);
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 2e-5 * x.abs(), "step {}: two nodes {y} vs one process {x}", i + 1);
    }
    for ((n1, w1), (n2, w2)) in weights(&runs.join("single")).iter().zip(&weights(&runs.join("nodes"))) {
        assert_eq!(n1, n2);
        let worst = w1.iter().zip(w2).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "tensor {n1} differs by {worst}");
    }
}
