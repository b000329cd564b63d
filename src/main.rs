//! The `ferrotron` command line: train, prepare, generate, info, export, launch.

use anyhow::{bail, Context, Result};
use ferrotron::{out, outln};
use clap::{Parser, Subcommand};
use ferrotron::config::{self, Config};
use ferrotron::train::{self, sample::SampleOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ferrotron", version, about = "Train transformer language models when memory and scale are the limit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Default)]
struct ConfigArgs {
    /// TOML config file (defaults to the `tiny` preset).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.steps=200 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model. With no arguments: the tiny preset on built-in data, on the CPU.
    Train {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Continue the run in this folder from its newest checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
    },
    /// Tokenize text, folders, .jsonl or Parquet files into token shards.
    Prepare {
        /// Input files or folders (repeatable).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Output folder for the shards.
        #[arg(long)]
        out: PathBuf,
        /// Tokenizer: gpt2, bytes, or a Hugging Face tokenizer.json (the file, or
        /// a folder holding it such as a model folder); its files are copied
        /// into --out and runs on the data use them.
        #[arg(long, default_value = "gpt2", value_name = "gpt2|bytes|PATH")]
        tokenizer: String,
        /// Fraction of documents held out for validation.
        #[arg(long, default_value_t = 0.005)]
        val_fraction: f64,
        /// Text column of Parquet files / field of .jsonl lines.
        #[arg(long, default_value = "text")]
        text_column: String,
        /// Replace shards already in --out.
        #[arg(long)]
        overwrite: bool,
    },
    /// Generate text from a trained run.
    Generate {
        #[arg(long, value_name = "RUN_DIR")]
        run: PathBuf,
        #[arg(long, default_value = "")]
        prompt: String,
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        #[arg(long, default_value_t = 200)]
        max_tokens: usize,
        #[arg(long, default_value_t = 1)]
        samples: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to run the model: cpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print each sample's generated token ids (a JSON array) instead of its text.
        #[arg(long)]
        ids: bool,
    },
    /// Parameter counts, FLOPs per token and a memory estimate for a config.
    Info {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// List every config key instead.
        #[arg(long)]
        keys: bool,
    },
    /// Benchmarks (side-by-side scripts live in bench/).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Compare runs: validation loss vs tokens (PNG) and a markdown table.
    Compare {
        /// Run folders (repeatable).
        #[arg(long, required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// Plot file to write.
        #[arg(long, default_value = "compare.png")]
        out: PathBuf,
        /// Plot only each optimizer's best run (lowest final validation
        /// loss), e.g. after a learning-rate sweep; the table keeps all runs.
        #[arg(long)]
        best_per_optimizer: bool,
    },
    /// Time-to-result benchmark (AlgoPerf-style): workloads × submissions, tuning trials, scores.
    Algoperf {
        #[command(subcommand)]
        what: AlgoperfCommand,
    },
    /// Where a run's step time went: PNGs of step time per phase and of MFU
    /// over the run (from metrics.jsonl), and a short summary.
    Report {
        /// The run folder.
        #[arg(value_name = "RUN_DIR")]
        run: PathBuf,
        /// Folder for the plots (default: the run folder).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Export a run's weights as Hugging Face safetensors + config.json
    /// (and the run's tokenizer.json when it has one).
    Export {
        #[arg(long, value_name = "RUN_DIR")]
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Tensor type: f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Split the weights into files of at most this size (e.g. 5GB,
        /// 500MB) with a model.safetensors.index.json; 0 = one file.
        #[arg(long, default_value = "5GB")]
        max_shard_size: String,
    },
    /// Run a command as several ranks on this node (torchrun-style), e.g.
    /// `ferrotron launch --nproc-per-node 2 train --set dist.zero_stage=3`.
    Launch {
        /// Ranks (processes, one per GPU) on this node.
        #[arg(long)]
        nproc_per_node: usize,
        #[arg(long, default_value_t = 1)]
        nnodes: usize,
        /// This node's index in 0..nnodes.
        #[arg(long, default_value_t = 0)]
        node_rank: usize,
        /// Host of node 0 (default 127.0.0.1 on one node).
        #[arg(long)]
        master_addr: Option<String>,
        /// Rendezvous port (default: a free one on one node, 29500 on several).
        #[arg(long)]
        master_port: Option<u16>,
        /// On a rank's failure, stop all ranks and start them again, up to N
        /// times; `train` continues from its newest complete checkpoint (give
        /// the run a name: --set run.name=...).
        #[arg(long, default_value_t = 0, value_name = "N")]
        max_restarts: u32,
        /// The ferrotron command each rank runs, with its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AlgoperfCommand {
    /// Run every trial not finished yet (resumable), then score.
    Run {
        /// Workload TOML files (repeatable; see workloads/).
        #[arg(long = "workload", required = true, num_args = 1..)]
        workloads: Vec<PathBuf>,
        /// Submissions and their search spaces.
        #[arg(long, default_value = "workloads/submissions.toml")]
        submissions: PathBuf,
        /// Only these submissions (comma-separated names); default all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Trials per submission under external tuning (trial 0 = defaults).
        #[arg(long, default_value_t = 1)]
        trials: usize,
        /// Output folder (re-running continues it).
        #[arg(long)]
        out: PathBuf,
        /// Trials at once (several small runs can share one GPU).
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// CUDA_VISIBLE_DEVICES per slot, round robin (comma-separated).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// Measure each config's solo step time first (`bench train`) and
        /// score calibrated times.
        #[arg(long)]
        calibrate: bool,
        /// Keep each trial's final checkpoint (removed by default).
        #[arg(long)]
        keep_checkpoints: bool,
        /// More `--set key=value` for every trial (e.g. device=cuda).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Seconds after which no trial starts and running ones stop (they
        /// stay resumable); the score then uses the trials all submissions finished.
        #[arg(long)]
        time_limit: Option<f64>,
    },
    /// Score an output folder again: report.md, scores.json, profile plots.
    Score {
        #[arg(long)]
        out: PathBuf,
        /// calibrated, wall or steps (default: calibrated where measured).
        #[arg(long)]
        measure: Option<String>,
        /// Override a workload's target: NAME=VAL_LOSS (repeatable; reported).
        #[arg(long = "target", value_name = "WORKLOAD=LOSS")]
        targets: Vec<String>,
        /// Score only trials 0..N of each submission (equal budgets after a cut-short run).
        #[arg(long)]
        max_trials: Option<usize>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time one optimizer step over a preset's parameters; measure its state memory.
    Optim {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Time every op (synchronizing after each) and report ms per step.
        #[arg(long)]
        profile: bool,
    },
    /// Time training steps of a config on random tokens; prints one JSON line.
    Train {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Untimed steps first (allocation, kernel compilation, algorithm search).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Timed steps; the median is reported.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Also export the initial weights as Hugging Face safetensors here.
        #[arg(long, value_name = "DIR")]
        export_init: Option<PathBuf>,
        /// Time every op (synchronizing after each) and report ms per step.
        #[arg(long)]
        profile: bool,
    },
    /// Communicator self-test and all-reduce bandwidth; run it under
    /// `ferrotron launch` (or torchrun, srun, mpirun). Prints one JSON line on rank 0.
    Comm {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// All-reduce size in MB (1e6 bytes) of f32.
        #[arg(long, default_value_t = 64.0)]
        size_mb: f64,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Timed all-reduces; the median is reported.
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Test hook: this rank fails at once.
        #[arg(long, hide = true)]
        fail_rank: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Train { cfg, resume } => cmd_train(cfg, resume),
        Command::Prepare { input, out, tokenizer, val_fraction, text_column, overwrite } => cmd_prepare(input, out, tokenizer, val_fraction, text_column, overwrite),
        Command::Generate { run, prompt, temperature, top_k, max_tokens, samples, seed, device, ids } => {
            cmd_generate(run, &prompt, SampleOptions { max_tokens, temperature, top_k }, samples, seed, &device, ids)
        }
        Command::Info { cfg, keys } => cmd_info(cfg, keys),
        Command::Export { run, out, dtype, max_shard_size } => cmd_export(run, out, &dtype, &max_shard_size),
        Command::Report { run, out } => out!("{}", ferrotron::telemetry::run_report::report(&run, out.as_deref())?.text),
        Command::Algoperf { what } => cmd_algoperf(what),
        Command::Compare { runs, out, best_per_optimizer } => {
            out!("{}", ferrotron::telemetry::compare::compare(&runs, &out, best_per_optimizer)?)?;
            outln!("\nplot: {}", out.display())?;
            Ok(())
        }
        Command::Bench { what: BenchCommand::Optim { cfg, warmup, steps, profile } } => {
            let cfg = load_config(&cfg)?;
            let result = train::bench_optim::bench_optim(&cfg, warmup, steps, profile)?;
            outln!("{}", serde_json::to_string(&result)?)?;
            Ok(())
        }
        Command::Bench { what: BenchCommand::Comm { cfg, size_mb, warmup, iters, fail_rank } } => {
            let cfg = load_config(&cfg)?;
            let args = ferrotron::dist::bench::CommBenchArgs { size_mb, warmup, iters, fail_rank };
            if let Some(result) = ferrotron::dist::bench::bench_comm(&cfg, &args)? {
                outln!("{}", serde_json::to_string(&result)?)?;
            }
            Ok(())
        }
        Command::Launch { nproc_per_node, nnodes, node_rank, master_addr, master_port, max_restarts, command } => {
            ferrotron::dist::launch::launch(&ferrotron::dist::launch::LaunchArgs { nproc_per_node, nnodes, node_rank, master_addr, master_port, command, max_restarts })
        }
        Command::Bench { what: BenchCommand::Train { cfg, warmup, steps, export_init, profile } } => {
            let cfg = load_config(&cfg)?;
            let result = train::bench::bench_train(&cfg, warmup, steps, export_init.as_deref(), profile)?;
            outln!("{}", serde_json::to_string(&result)?)?;
            Ok(())
        }
    }
}

fn load_config(args: &ConfigArgs) -> Result<Config> {
    config::load(args.config.as_deref(), &args.set)
}

fn cmd_train(args: ConfigArgs, resume: Option<PathBuf>) -> Result<()> {
    let resume = resume.or_else(|| restarted_run(&args));
    let cfg = match &resume {
        Some(dir) => train::run_dir::resume_config(dir, &args.set, args.config.as_deref())?,
        None => load_config(&args)?,
    };
    let s = train::trainer::train(&cfg, resume.as_deref())?;
    if s.rank > 0 {
        return Ok(());
    }
    outln!("\ndone: {} steps in {} | {:.0} tokens/s", s.steps, s.run_dir.display(), s.tokens_per_s)?;
    if s.skipped_steps > 0 {
        outln!("skipped steps (not applied: non-finite loss or gradient norm, or a loss spike): {} (metrics.jsonl: \"skipped\")", s.skipped_steps)?;
    }
    if let Some(v) = s.final_val_loss {
        outln!("final validation loss {v:.4}")?;
    }
    if let Some(mfu) = s.mfu {
        outln!("MFU {:.1}% (causal attention FLOPs halved)", mfu * 100.0)?;
    }
    if s.comm_bytes > 0 {
        let ratio = if s.dense_bytes > 0 { format!(" ({:.3} of dense f32 gradient all-reduces)", s.comm_bytes as f64 / s.dense_bytes as f64) } else { String::new() };
        println!("rank 0 sent {:.2} MB{ratio}", s.comm_bytes as f64 / 1e6);
    }
    if s.peak_mem_bytes > 0 {
        outln!("peak device memory {:.2} GiB", s.peak_mem_bytes as f64 / (1u64 << 30) as f64)?;
    }
    for (i, text) in s.samples.iter().enumerate() {
        outln!("\n--- sample {} ---\n{}", i + 1, text.trim_end())?;
    }
    outln!("\nloss plot: {}", s.run_dir.join("loss.png").display())?;
    Ok(())
}

/// After a restart by `launch --max-restarts`, a new-run command continues
/// the folder the first attempt created (named by run.name).
fn restarted_run(args: &ConfigArgs) -> Option<PathBuf> {
    if train::trainer::restart_count() == 0 {
        return None;
    }
    let cfg = load_config(args).ok()?;
    let dir = PathBuf::from(&cfg.run.dir).join(&cfg.run.name);
    (!cfg.run.name.is_empty() && dir.join("config.toml").exists()).then_some(dir)
}

fn cmd_prepare(input: Vec<PathBuf>, out: PathBuf, tokenizer: String, val_fraction: f64, text_column: String, overwrite: bool) -> Result<()> {
    use ferrotron::data::prepare::{prepare, PrepareOptions};
    if !(0.0..1.0).contains(&val_fraction) {
        bail!("--val-fraction must be in [0, 1), got {val_fraction}");
    }
    let opts = PrepareOptions { tokenizer, val_fraction, text_key: text_column, overwrite, ..PrepareOptions::default() };
    let summary = prepare(&input, &out, &opts)?;
    outln!("{summary}")?;
    Ok(())
}

fn cmd_generate(run: PathBuf, prompt: &str, opts: SampleOptions, samples: usize, seed: u64, device: &str, ids: bool) -> Result<()> {
    let out = train::generate::generate_from_run(&run, prompt, opts, samples, seed, device)?;
    for (i, g) in out.iter().enumerate() {
        if ids {
            println!("{}", serde_json::to_string(&g.ids)?);
            continue;
        }
        if samples > 1 {
            outln!("--- sample {} ---", i + 1)?;
        }
        outln!("{prompt}{}", g.text)?;
    }
    Ok(())
}

fn cmd_info(args: ConfigArgs, keys: bool) -> Result<()> {
    if keys {
        for k in config::known_keys() {
            outln!("{k}")?;
        }
        return Ok(());
    }
    let cfg = load_config(&args)?;
    out!("{}", ferrotron::telemetry::report::format_info(&cfg))?;
    Ok(())
}

fn cmd_export(run: PathBuf, out: PathBuf, dtype: &str, max_shard_size: &str) -> Result<()> {
    let dtype = match dtype {
        "f32" | "float32" => ferrotron::ckpt::Dtype::F32,
        "bf16" | "bfloat16" => ferrotron::ckpt::Dtype::Bf16,
        other => bail!("--dtype {other} is not supported; use f32 or bf16"),
    };
    let max = train::export::parse_size(max_shard_size).context("--max-shard-size")?;
    train::export::export_run(&run, &out, dtype, max)?;
    outln!("wrote Hugging Face safetensors + config.json to {}", out.display())?;
    Ok(())
}

fn cmd_algoperf(what: AlgoperfCommand) -> Result<()> {
    use ferrotron::algoperf::{self, report};
    let r = match what {
        AlgoperfCommand::Run { workloads, submissions, only, trials, out, parallel, devices, calibrate, keep_checkpoints, set, time_limit } => {
            let exe = std::env::current_exe().context("cannot find this program's path to start trials")?;
            let args = algoperf::RunArgs { workloads, submissions_file: submissions, only, trials, out, parallel, devices, calibrate, keep_checkpoints, sets: set, exe, time_limit_s: time_limit };
            let r = algoperf::run(&args)?;
            (r, args.out)
        }
        AlgoperfCommand::Score { out, measure, targets, max_trials } => {
            let mut opts = report::Options { measure: measure.map(|m| m.parse()).transpose()?, max_trials, ..Default::default() };
            for t in targets {
                let (name, v) = t.split_once('=').ok_or_else(|| anyhow::anyhow!("--target expects WORKLOAD=LOSS, got `{t}`"))?;
                let v: f64 = v.trim().parse().map_err(|_| anyhow::anyhow!("--target {t}: `{v}` is not a number"))?;
                opts.targets.insert(name.trim().to_string(), v);
            }
            (report::write(&out, &opts)?, out)
        }
    };
    let (r, out) = r;
    outln!("\nscores ({:?} time to target; external tuning / self-tuning):", r.measure)?;
    for s in &r.submissions {
        outln!("  {s:<16} {:.3} / {:.3}", r.external[s].0, r.self_tuning[s].0)?;
    }
    outln!("report: {}", out.join("report.md").display())?;
    Ok(())
}
