//! Telemetry: FLOPs, parameter counts, memory estimate, metrics file, plot,
//! progress text and the `info` report. Expected numbers are computed here
//! by hand from the model shapes, not through the code under test.

use ferrotron::config::{self, Config};
use ferrotron::model::layout::ParamKind;
use ferrotron::telemetry::flops::{flops_per_token, matmul_params, mfu, peak_flops_for};
use ferrotron::telemetry::memory::{activation_count, estimate, param_counts, state_bytes_per_param};
use ferrotron::telemetry::metrics::{read_metrics, MetricLine, MetricsWriter, TrainMetrics, METRICS_FILE};
use ferrotron::telemetry::plot::plot_loss;
use ferrotron::telemetry::progress::{eta, format_duration, status_text, Progress};
use ferrotron::telemetry::report::{format_info, group_digits, human_bytes, human_count};
use std::time::Duration;

fn preset(name: &str, extra: &[&str]) -> Config {
    let mut sets = vec![format!("model.preset={name}")];
    sets.extend(extra.iter().map(|s| s.to_string()));
    config::load(None, &sets).unwrap()
}

fn total_params(cfg: &Config) -> usize {
    param_counts(cfg).iter().map(|c| c.1).sum()
}

// ---------------------------------------------------------------- FLOPs

#[test]
fn gpt2_124m_flops_match_hand_calculation() {
    let cfg = preset("gpt2-124m", &[]);
    let (c, l, v, s) = (768usize, 12usize, 50257usize, 1024usize);
    // Per layer: qkv 3C·C, attn proj C·C, fc 4C·C, mlp proj 4C·C = 12C².
    let matrices = l * 12 * c * c;
    assert_eq!(matrices, 84_934_656); // the "85M" of the body
    let head = v * c; // tied wte used as the head
    assert_eq!(head, 38_597_376); // the "38.6M" head
    assert_eq!(matmul_params(&cfg.model), matrices + head);
    let attn_full = 12.0 * 12.0 * 12.0 * 64.0 * s as f64;
    let mm = 6.0 * (matrices + head) as f64;
    assert_eq!(flops_per_token(&cfg.model, s, false), mm + attn_full);
    assert_eq!(flops_per_token(&cfg.model, s, true), mm + attn_full / 2.0);
    assert_eq!(flops_per_token(&cfg.model, s, false), 854_438_400.0);
}

#[test]
fn gqa_attention_flops_count_query_heads() {
    // 8B: 32 query heads of 128, 8 kv heads; attention work is per query head.
    let cfg = preset("llama3-8b", &[]);
    let s = 8192;
    let diff = flops_per_token(&cfg.model, s, false) - flops_per_token(&cfg.model, s, true);
    assert_eq!(diff, 6.0 * 32.0 * 32.0 * 128.0 * s as f64);
}

#[test]
fn mfu_and_peak_table() {
    assert_eq!(peak_flops_for("NVIDIA H200"), Some(989e12));
    assert_eq!(peak_flops_for("NVIDIA H100 80GB HBM3"), Some(989e12));
    assert_eq!(peak_flops_for("NVIDIA H100 PCIe"), Some(756e12));
    assert_eq!(peak_flops_for("NVIDIA A100-SXM4-80GB"), Some(312e12));
    assert_eq!(peak_flops_for("cpu"), None);
    let m = mfu(500_000.0, 854_438_400.0, 989e12);
    assert!((m - 500_000.0 * 854_438_400.0 / 989e12).abs() < 1e-12);
    assert_eq!(mfu(1.0, 1.0, 0.0), 0.0);
}

// ---------------------------------------------------------- param counts

#[test]
fn gpt2_124m_has_hf_parameter_count() {
    let cfg = preset("gpt2-124m", &[]);
    // HF GPT2LMHeadModel (tied head, wpe included) has 124,439,808.
    assert_eq!(total_params(&cfg), 124_439_808);
    let counts = param_counts(&cfg);
    let get = |k: ParamKind| counts.iter().find(|c| c.0 == k).map(|c| c.1);
    assert_eq!(get(ParamKind::Embedding), Some(50257 * 768));
    assert_eq!(get(ParamKind::Position), Some(1024 * 768));
    assert_eq!(get(ParamKind::Matrix), Some(84_934_656));
    assert_eq!(get(ParamKind::Head), None, "tied: no separate head");
}

/// Llama-style: untied embeddings, RMSNorm (weight only), SwiGLU, no bias.
fn llama_expected(v: usize, c: usize, l: usize, h: usize, kv: usize, f: usize) -> usize {
    let d = c / h;
    let attn = c * (h + 2 * kv) * d + c * h * d;
    let mlp = 3 * c * f;
    2 * v * c + l * (2 * c + attn + mlp) + c
}

#[test]
fn llama_presets_have_plausible_counts() {
    let cases = [
        ("llama-60m", llama_expected(50257, 512, 8, 8, 8, 1376)),
        ("llama-130m", llama_expected(50257, 768, 12, 12, 12, 2048)),
        ("llama-350m", llama_expected(50257, 1024, 24, 16, 16, 2736)),
        ("llama-1b", llama_expected(50257, 2048, 24, 32, 32, 5461)),
        ("llama3-8b", llama_expected(128256, 4096, 32, 32, 8, 14336)),
    ];
    for (name, expected) in cases {
        assert_eq!(total_params(&preset(name, &[])), expected, "{name}");
    }
    // Meta's published Llama 3 8B count.
    assert_eq!(total_params(&preset("llama3-8b", &[])), 8_030_261_248);
}

// --------------------------------------------------------------- memory

/// tiny preset (V 256, C 128, L 4, H 4, F 512, layernorm, gelu, learned
/// positions, tied, biases) with a micro-batch of 2 × 16 = 32 tokens.
fn tiny_small(device: &str, recompute: bool) -> Config {
    let d = format!("device=\"{device}\"");
    let r = format!("train.recompute={recompute}");
    preset("tiny", &[d.as_str(), "train.batch_size=2", "train.seq_len=16", r.as_str()])
}

#[test]
fn memory_estimate_matches_hand_computation() {
    // Parameters: wte 256·128, wpe 128·128, per layer
    // 2·(128+128) norms + 384·128+384 + 128·128+128 + 512·128+512 + 128·512+128.
    let layer = 2 * 256 + (49_152 + 384) + (16_384 + 128) + (65_536 + 512) + (65_536 + 128);
    let params = 32_768 + 16_384 + 4 * layer + 256;
    assert_eq!(params, 842_496);

    // Saved activations, N = 32 tokens. Per layer, activation dtype:
    // ln1 N·C, qkv N·3C, attn N·C, residual N·C, ln2 N·C, fc N·F, gelu N·F, residual N·C.
    let n = 32u64;
    let per_layer = n * 128 + n * 384 + n * 128 + n * 128 + n * 128 + n * 512 + n * 512 + n * 128;
    // fp32: 2 layernorms × (mean + rstd) + lse per head.
    let per_layer_fp32 = 4 * n + n * 4;
    let act = 4 * per_layer + 2 * n * 128 + n * 256; // + embedding output, ln_f output, logits
    let fp32 = 4 * per_layer_fp32 + 2 * n; // + ln_f stats
    let counted = activation_count(&tiny_small("cpu", false));
    assert_eq!((counted.act, counted.fp32), (act, fp32));

    let cpu = estimate(&tiny_small("cpu", false));
    assert_eq!(cpu.params, params as u64);
    assert_eq!(cpu.weights, 4 * params as u64);
    assert_eq!(cpu.grads, 4 * params as u64);
    assert_eq!(cpu.optimizer_state, Some(8 * params as u64));
    assert_eq!(cpu.activations, 4 * (act + fp32));
    assert_eq!(cpu.activations, 1_118_464);
    // Backward scratch: dres, dln N·C each, the shared wide N·max(3C, F)
    // and narrow N·max(C, F) buffers, the projections' output N·C; token
    // ids, targets, losses N each.
    let scratch = (2 * n * 128 + n * 512 + n * 512 + n * 128) + 3 * n;
    assert_eq!(cpu.scratch, 4 * scratch);
    assert_eq!(cpu.total(), 16 * params as u64 + 1_118_464 + 4 * scratch);

    let cuda = estimate(&tiny_small("cuda", false));
    assert_eq!(cuda.weights, 6 * params as u64, "fp32 master + bf16 copy");
    assert_eq!(cuda.grads, 4 * params as u64);
    assert_eq!(cuda.activations, 2 * act + 4 * fp32);

    // Recompute drops ln1, ln2 and gelu outputs, 2·N·C + N·F per layer, into
    // one shared N·C (norms) + N·F (activation) scratch.
    let rc = activation_count(&tiny_small("cpu", true));
    assert_eq!(rc.act, act - 4 * (2 * n * 128 + n * 512) + (n * 128 + n * 512));
    assert_eq!(rc.fp32, fp32);

    // Layer checkpointing keeps each block's output (N·C) and one block's
    // worth of everything else, fp32 stats included.
    let mut ck = tiny_small("cpu", false);
    ck.train.checkpoint_layers = true;
    ck.train.checkpoint_keep_attention = false;
    let lc = activation_count(&ck);
    assert_eq!(lc.act, 4 * n * 128 + (per_layer - n * 128) + 2 * n * 128 + n * 256);
    assert_eq!(lc.fp32, per_layer_fp32 + 2 * n);
    // Keeping attention: every block also keeps its attention output (N·C
    // here, H·D = C) and log-sum-exp (N·H, 4 heads), no longer shared.
    ck.train.checkpoint_keep_attention = true;
    let ka = activation_count(&ck);
    assert_eq!(ka.act, lc.act + 3 * n * 128);
    assert_eq!(ka.fp32, lc.fp32 + 3 * n * 4);
}

#[test]
fn optimizer_state_per_param() {
    let with = |name: &str| {
        let set = format!("optimizer.name={name}");
        preset("tiny", &[set.as_str()])
    };
    assert_eq!(state_bytes_per_param(&with("adamw")).unwrap(), 8.0);
    assert_eq!(state_bytes_per_param(&with("lion")).unwrap(), 4.0);
    // APOLLO's rank above a matrix's smaller side (128 on tiny) is capped
    // there, per matrix: 512 plans the same state as 128.
    let capped = preset("tiny", &["optimizer.name=apollo", "optimizer.rank=512"]);
    let at_side = preset("tiny", &["optimizer.name=apollo", "optimizer.rank=128"]);
    assert_eq!(state_bytes_per_param(&capped).unwrap(), state_bytes_per_param(&at_side).unwrap());
}

// -------------------------------------------------------------- metrics

fn train_line(step: u64) -> TrainMetrics {
    TrainMetrics { step, loss: 5.0 - step as f64 * 0.1, lr: 1e-3, grad_norm: 1.0, tokens_per_s: 1000.0, step_ms: 10.0, peak_mem_bytes: 1 << 20, ..Default::default() }
}

#[test]
fn metrics_lines_are_json_with_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = MetricsWriter::create(dir.path()).unwrap();
    w.train(&TrainMetrics { mfu: Some(0.4), ..train_line(1) }).unwrap();
    w.eval(1, 4.5).unwrap();
    let text = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["kind"], "train");
    for key in ["step", "loss", "lr", "grad_norm", "tokens_per_s", "step_ms", "peak_mem_bytes", "mfu"] {
        assert!(lines[0].get(key).is_some(), "missing {key}");
    }
    assert!(lines[0].get("fwd_ms").is_none(), "unset optional fields are omitted");
    assert_eq!(lines[1], serde_json::json!({"kind": "eval", "step": 1, "val_loss": 4.5}));
}

#[test]
fn resume_truncates_later_steps_and_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = MetricsWriter::create(dir.path()).unwrap();
    for step in 1..=10 {
        w.train(&train_line(step)).unwrap();
        if step % 5 == 0 {
            w.eval(step, 4.0).unwrap();
        }
    }
    drop(w);
    // The run died after step 10; its last checkpoint was step 6.
    let mut w = MetricsWriter::resume(dir.path(), 6).unwrap();
    for step in 7..=8 {
        w.train(&train_line(step)).unwrap();
    }
    let lines = read_metrics(&dir.path().join(METRICS_FILE)).unwrap();
    let train: Vec<u64> = lines.iter().filter(|l| matches!(l, MetricLine::Train(_))).map(|l| l.step()).collect();
    let eval: Vec<u64> = lines.iter().filter(|l| matches!(l, MetricLine::Eval(_))).map(|l| l.step()).collect();
    assert_eq!(train, (1..=8).collect::<Vec<_>>());
    assert_eq!(eval, vec![5]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
}

#[test]
fn torn_last_line_is_skipped_and_dropped_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(METRICS_FILE);
    let mut w = MetricsWriter::create(dir.path()).unwrap();
    w.train(&train_line(1)).unwrap();
    drop(w);
    // A run killed in the middle of a write, plus a kind from the future.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"kind\":\"rank_timing\",\"step\":1}\n{\"kind\":\"train\",\"st");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(read_metrics(&path).unwrap().len(), 1);
    let mut w = MetricsWriter::resume(dir.path(), 1).unwrap();
    w.train(&train_line(2)).unwrap();
    assert_eq!(read_metrics(&path).unwrap().iter().map(|l| l.step()).collect::<Vec<_>>(), vec![1, 2]);
    // A malformed line in the middle is an error, not silently skipped.
    std::fs::write(&path, "garbage\n{\"kind\":\"eval\",\"step\":1,\"val_loss\":1.0}\n").unwrap();
    assert!(read_metrics(&path).unwrap_err().to_string().contains(":1:"));
}

// ----------------------------------------------------------------- plot

#[test]
fn plot_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let mut metrics = Vec::new();
    for step in 1..=200u64 {
        let loss = 2.0 + 4.0 * (-(step as f64) / 40.0).exp() + 0.05 * ((step * 7919) % 13) as f64 / 13.0;
        metrics.push(MetricLine::Train(TrainMetrics { loss, ..train_line(step) }));
        if step % 50 == 0 {
            metrics.push(MetricLine::Eval(ferrotron::telemetry::EvalMetrics { step, val_loss: loss + 0.1 }));
        }
    }
    metrics.push(MetricLine::Train(TrainMetrics { loss: f64::NAN, ..train_line(201) }));
    let out = dir.path().join("loss.png");
    plot_loss(&metrics, &out, "tiny · loss").unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 5_000, "suspiciously small PNG: {} bytes", bytes.len());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temp file left behind");
    if let Ok(keep) = std::env::var("FERROTRON_KEEP_PLOT") {
        std::fs::copy(&out, keep).unwrap();
    }
    assert!(plot_loss(&[], &out, "empty").is_err());
}

// ------------------------------------------------------------- progress

#[test]
fn progress_text_and_eta() {
    assert_eq!(eta(Duration::from_secs(10), 0, 100), None);
    assert_eq!(eta(Duration::from_secs(10), 10, 90), Some(Duration::from_secs(90)));
    assert_eq!(format_duration(Duration::from_secs(3725)), "1h02m");
    assert_eq!(format_duration(Duration::from_secs(245)), "4m05s");
    assert_eq!(status_text(3.28114, 45_200.0, Some(Duration::from_secs(12))), "loss 3.2811 | 45.2k tok/s | ETA 12s");
    // A bar only on a terminal (cargo test usually is not one).
    let p = Progress::new(20, 5, true).with_log_every(0);
    assert_eq!(p.is_bar(), std::io::IsTerminal::is_terminal(&std::io::stderr()));
    assert!(!Progress::new(20, 5, false).is_bar(), "disabled means no bar");
    p.update(6, 3.0, 100.0);
    p.println("message");
    p.finish();
}

// --------------------------------------------------------------- report

#[test]
fn info_report_for_gpt2() {
    let text = format_info(&preset("gpt2-124m", &["device=\"cuda\""]));
    for needle in ["124.44M", "124,439,808", "causal (attention halved)", "full attention", "797.815 MFLOP", "854.438 MFLOP", "optimizer state", "adamw, 8 B/param", "GiB"] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    assert_eq!(human_count(124_439_808.0), "124.44M");
    assert_eq!(human_bytes(3 << 29), "1.50 GiB");
    assert_eq!(human_bytes(96 << 20), "96.00 MiB");
    assert_eq!(group_digits(8_030_261_248), "8,030,261,248");
}

/// Not a check: prints `info` for a few presets (run with --nocapture) so
/// the layout can be eyeballed.
#[test]
#[ignore]
fn print_info_reports() {
    for (name, device) in [("gpt2-124m", "cuda"), ("llama3-8b", "cuda"), ("tiny", "cpu")] {
        println!("{}", format_info(&preset(name, &[&format!("device=\"{device}\"")])));
    }
}

/// Not a check: shows the bar on a terminal (run with --ignored --nocapture).
#[test]
#[ignore]
fn progress_demo() {
    let p = Progress::new(30, 0, true).with_log_every(5);
    for step in 1..=30 {
        std::thread::sleep(Duration::from_millis(50));
        p.update(step, 6.0 - step as f64 * 0.1, 12_345.0);
        if step == 15 {
            p.println("eval step 15: val_loss 4.5000");
        }
    }
    p.finish();
}

#[test]
fn tensor_lists_fold_layers() {
    use ferrotron::telemetry::report::tensor_summary;
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(tensor_summary(&names(&["wte", "h.0.ln1.w", "h.1.ln1.w", "h.2.ln1.w", "ln_f.w"])), "wte, h.{0-2}.ln1.w, ln_f.w");
    assert_eq!(tensor_summary(&names(&["h.3.mlp.fc.w"])), "h.3.mlp.fc.w");
    assert_eq!(tensor_summary(&names(&["h.0.attn.qkv.w", "h.2.attn.qkv.w", "h.5.attn.qkv.w"])), "h.{0,2,5}.attn.qkv.w");
}

/// On the committed llama-60m sweep: each optimizer's best learning rate.
#[test]
fn best_run_per_optimizer_of_a_sweep() {
    use ferrotron::telemetry::compare::{best_runs, load_run};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/convergence_2026-11-28/runs");
    let mut folders: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    folders.sort();
    let runs: Vec<_> = folders.iter().map(|f| load_run(f).unwrap()).collect();
    let best: Vec<&str> = best_runs(&runs).iter().map(|r| r.name.as_str()).collect();
    let want = ["adamw-lr1e-3", "adamw8bit-lr1e-3", "apollo-lr3e-3", "apollo_mini-lr1e-2", "cosmos-lr3e-4", "frugal-lr1e-3", "lion-lr1e-4", "muon-lr1e-2"];
    assert_eq!(best, want);
}

/// The activation estimate differs between recompute modes exactly as much
/// as the buffers the CPU backend allocates do (the buffers the estimate
/// leaves out, e.g. the backward scratch, are the same in every mode).
#[test]
fn activation_estimate_tracks_allocations_across_recompute_modes() {
    use ferrotron::backend::{cpu::CpuBackend, Backend};
    use ferrotron::model::{Model, Recompute};
    let live_after_step = |cfg: &Config| {
        let mut b = CpuBackend::new();
        let mut model = Model::new(&mut b, &cfg.model, Recompute::of(&cfg.train)).unwrap().with_logits_chunk(cfg.train.logits_chunk);
        let (batch, seq) = (cfg.train.batch_size, cfg.train.seq_len);
        let tokens: Vec<u32> = (0..batch * seq).map(|i| (i % 200) as u32).collect();
        model.forward_backward(&mut b, &tokens, &tokens, batch, seq, 1.0).unwrap();
        b.live_memory_bytes() as i64
    };
    let counted = |cfg: &Config| {
        let c = activation_count(cfg);
        4 * (c.act + c.fp32) as i64 // the CPU backend stores everything in 4 bytes
    };
    let off = tiny_small("cpu", false);
    let mut rms = off.clone();
    rms.model.norm = ferrotron::config::Norm::Rmsnorm;
    let elementwise = tiny_small("cpu", true);
    let mut layers = tiny_small("cpu", false);
    layers.train.checkpoint_layers = true;
    layers.train.checkpoint_keep_attention = false;
    let mut layers_keep = layers.clone();
    layers_keep.train.checkpoint_keep_attention = true;
    // What remains is the model's own fp32 weights and gradients: every
    // buffer the passes allocate is counted, activations or scratch.
    let base = live_after_step(&off) - counted(&off);
    let scratch = |cfg: &Config| {
        let s = ferrotron::telemetry::memory::scratch_count(cfg);
        4 * (s.act + s.fp32) as i64
    };
    for cfg in [&off, &rms] {
        let params = ferrotron::model::layout::ParamLayout::new(&cfg.model).total as i64;
        assert_eq!(live_after_step(cfg) - counted(cfg) - scratch(cfg), 8 * params, "{:?} norm: allocations beyond weights and gradients", cfg.model.norm);
    }
    for cfg in [&elementwise, &layers, &layers_keep] {
        assert_eq!(live_after_step(cfg) - counted(cfg), base, "recompute {:?}", Recompute::of(&cfg.train));
    }
    assert!(counted(&layers) < counted(&layers_keep) && counted(&layers_keep) < counted(&elementwise) && counted(&elementwise) < counted(&off));

    // Logits in chunks of 64 of the 128 rows: half the logits buffer.
    let mut all_rows = tiny_small("cpu", false);
    all_rows.train.seq_len = 64;
    all_rows.train.logits_chunk = 0;
    let mut chunked = all_rows.clone();
    chunked.train.logits_chunk = 64;
    assert_eq!(live_after_step(&chunked) - counted(&chunked), live_after_step(&all_rows) - counted(&all_rows));
    assert_eq!(counted(&all_rows) - counted(&chunked), 4 * 64 * 256, "64 rows of the 256-wide vocabulary fewer");
}

// ----------------------------------------------------------------- report

/// `report`: the step-time plot always, the MFU plot where MFU was
/// recorded, and a summary with the median step split by phase.
#[test]
fn run_report_plots_phases_and_mfu_and_summarizes() {
    use ferrotron::telemetry::run_report::{bucket_medians, report, MAX_POINTS};
    let dir = tempfile::tempdir().unwrap();
    let mut w = MetricsWriter::create(dir.path()).unwrap();
    for step in 1..=9 {
        let line = TrainMetrics { step_ms: 10.0, fwd_ms: Some(3.0), bwd_ms: Some(5.0), opt_ms: Some(1.0), mfu: Some(0.4), ..train_line(step) };
        w.train(&line).unwrap();
    }
    w.train(&TrainMetrics { loss: f64::NAN, grad_norm: f64::NAN, skipped: Some("loss is NaN".into()), ..train_line(10) }).unwrap();
    w.eval(10, 3.5).unwrap();
    let r = report(dir.path(), None).unwrap();
    for png in [&r.time_png, r.mfu_png.as_ref().unwrap()] {
        assert_eq!(&std::fs::read(png).unwrap()[..4], b"\x89PNG", "{}", png.display());
    }
    let t = &r.text;
    assert!(t.contains("10 steps logged") && t.contains("1 skipped"), "{t}");
    assert!(t.contains("median step 10.00 ms: forward 3.00 (30%), backward 5.00 (50%), optimizer 1.00 (10%), other 1.00 (10%"), "{t}");
    assert!(t.contains("MFU median 40.0%") && t.contains("validation loss 3.5000 at step 10"), "{t}");
    // Without MFU (a CPU run): no MFU plot, and the text says why.
    let cpu = tempfile::tempdir().unwrap();
    let mut w = MetricsWriter::create(cpu.path()).unwrap();
    w.train(&train_line(1)).unwrap();
    let r = report(cpu.path(), None).unwrap();
    assert!(r.mfu_png.is_none() && r.text.contains("MFU not recorded"), "{}", r.text);
    // Long runs are bucketed to at most MAX_POINTS points (medians).
    let pts: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, (i % 7) as f64)).collect();
    let b = bucket_medians(pts);
    assert!(b.len() <= MAX_POINTS && b.len() >= MAX_POINTS / 2, "{}", b.len());
    // A run with no steps is a clear error.
    let empty = tempfile::tempdir().unwrap();
    MetricsWriter::create(empty.path()).unwrap();
    assert!(format!("{:#}", report(empty.path(), None).err().unwrap()).contains("no training steps"));
}

/// `info`'s total is what a one-process training step allocates at its
/// peak (the CPU backend counts every buffer; per-op scratch is not a
/// buffer there): plain, ZeRO stages 1–3 in one process (no fp32 copy of
/// the full buffers; stages 2–3: gradients straight into the shard; stage
/// 3: one unit gathered at a time), with layer
/// checkpointing, logits in chunks, 8-bit AdamW, tied and untied
/// embeddings — the settings the llama3-8b row of the benchmarks uses.
#[test]
fn one_process_step_peak_equals_info_total() {
    let cases: &[&[&str]] = &[
        &[],
        &["dist.zero_stage=1"],
        &["dist.zero_stage=2"],
        &["dist.zero_stage=3"],
        &["dist.zero_stage=3", "model.tied_embeddings=false", "optimizer.name=adamw8bit", "train.checkpoint_layers=true"],
        &["dist.zero_stage=3", "train.checkpoint_layers=true", "train.checkpoint_keep_attention=false", "train.logits_chunk=64"],
        &["train.checkpoint_layers=true", "optimizer.name=adamw8bit", "train.logits_chunk=64"],
    ];
    for extra in cases {
        let mut sets: Vec<String> = ["model.preset=tiny-llama", "train.batch_size=2", "train.seq_len=128"].iter().map(|s| s.to_string()).collect();
        sets.extend(extra.iter().map(|s| s.to_string()));
        let cfg = ferrotron::config::load(None, &sets).unwrap();
        let r = ferrotron::train::bench::bench_train(&cfg, 1, 2, None, false).unwrap();
        assert_eq!(r.peak_mem_bytes, r.estimate_bytes, "{extra:?}: measured peak vs info");
        assert_eq!(r.estimate_bytes, ferrotron::telemetry::memory::estimate(&cfg).total());
    }
}
