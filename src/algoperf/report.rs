//! Scoring an output folder: time to target per trial, the best trial per
//! (workload, submission) under each ruleset, ratios, profiles, scores;
//! written as `report.md`, `scores.json` and two profile plots.
//!
//! Time to target (`Measure`):
//! - `calibrated` (default when every pair has a `calibration.json`):
//!   (steps to the target + AutoLRS trial steps before it) × the config's
//!   median step time measured alone (`ferrotron bench train`, `--calibrate`).
//!   Right when trials shared a device, whose wall times then depend on
//!   what ran next to them.
//! - `wall`: the trial's own step times (Σ step_ms) plus AutoLRS search
//!   time up to the target; start-up, evaluations and checkpoints excluded.
//!   Right when trials ran alone (`--parallel 1`).
//! - `steps`: optimizer steps, AutoLRS trial steps included.

use super::score;
use super::trial::{self, Outcome, TrialSpec};
use super::workload::Workload;
use super::{CALIBRATION_FILE, TARGET_FILE};
use crate::telemetry::plot::{register_embedded_font, FAMILY, PALETTE};
use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    Calibrated,
    Wall,
    Steps,
}

impl std::str::FromStr for Measure {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "calibrated" => Ok(Measure::Calibrated),
            "wall" => Ok(Measure::Wall),
            "steps" => Ok(Measure::Steps),
            _ => bail!("--measure `{s}` is unknown; use calibrated, wall or steps"),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// None: calibrated where every pair has a calibration, else wall.
    pub measure: Option<Measure>,
    /// Target overrides by workload name (a re-scoring, reported as such).
    pub targets: BTreeMap<String, f64>,
    /// Score only trials 0..N (equal budgets when a run was cut short).
    pub max_trials: Option<usize>,
}

/// One trial as scored.
#[derive(Clone, Debug, Serialize)]
pub struct TrialRow {
    pub index: usize,
    pub point: BTreeMap<String, f64>,
    pub outcome: Outcome,
    /// Time to target in the chosen measure (∞ = not reached).
    #[serde(serialize_with = "inf_as_null")]
    pub time: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PairResult {
    pub workload: String,
    pub submission: String,
    pub trials: Vec<TrialRow>,
    pub calibration_ms: Option<f64>,
}

impl PairResult {
    /// Best trial (external tuning) and trial 0 (self-tuning).
    pub fn best(&self) -> Option<&TrialRow> {
        self.trials.iter().filter(|t| t.time.is_finite()).min_by(|a, b| a.time.total_cmp(&b.time))
    }

    pub fn defaults(&self) -> Option<&TrialRow> {
        self.trials.iter().find(|t| t.index == 0)
    }

    fn time(&self, ruleset: Ruleset) -> f64 {
        match ruleset {
            Ruleset::External => self.best().map_or(f64::INFINITY, |t| t.time),
            Ruleset::SelfTuning => self.defaults().map_or(f64::INFINITY, |t| t.time),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Ruleset {
    External,
    SelfTuning,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub measure: Measure,
    pub max_trials: Option<usize>,
    pub workloads: Vec<(Workload, f64, bool)>,
    pub submissions: Vec<String>,
    pub pairs: Vec<PairResult>,
    /// Per ruleset: submission -> (score, ratios per workload).
    pub external: BTreeMap<String, (f64, Vec<f64>)>,
    pub self_tuning: BTreeMap<String, (f64, Vec<f64>)>,
}

fn inf_as_null<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.is_finite() { s.serialize_f64(*v) } else { s.serialize_none() }
}

/// Scores `out` and writes report.md, scores.json and the profile plots.
pub fn write(out: &Path, opts: &Options) -> Result<Report> {
    let r = collect(out, opts)?;
    crate::util::atomic::write_file(&out.join("report.md"), markdown(&r, out).as_bytes())?;
    crate::util::atomic::write_file(&out.join("scores.json"), serde_json::to_string_pretty(&scores_json(&r))?.as_bytes())?;
    for (ruleset, file) in [(Ruleset::External, "profiles_external.png"), (Ruleset::SelfTuning, "profiles_self.png")] {
        plot_profiles(&r, ruleset, &out.join(file))?;
    }
    Ok(r)
}

/// Reads every workload and trial folder of `out`.
pub fn collect(out: &Path, opts: &Options) -> Result<Report> {
    let mut workloads = vec![];
    let mut names: Vec<PathBuf> = std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join("workload.toml").exists()).collect();
    names.sort();
    if names.is_empty() {
        bail!("{} holds no workload folders (<workload>/workload.toml); run `ferrotron algoperf run` first", out.display());
    }
    for dir in &names {
        let w = Workload::load(&dir.join("workload.toml"))?;
        let (target, overridden) = match (opts.targets.get(&w.name), w.fixed_target()) {
            (Some(t), _) => (*t, true),
            (None, Some(t)) => (t, false),
            (None, None) => {
                let path = dir.join(TARGET_FILE);
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("workload {} has a reference target but no {}", w.name, path.display()))?)?;
                (v["target_val_loss"].as_f64().ok_or_else(|| anyhow!("{} has no target_val_loss", path.display()))?, false)
            }
        };
        workloads.push((w, target, overridden));
    }
    for name in opts.targets.keys() {
        if !workloads.iter().any(|(w, _, _)| &w.name == name) {
            bail!("--target {name}=...: no such workload in {}", out.display());
        }
    }
    let mut subs = BTreeSet::new();
    for (w, _, _) in &workloads {
        for e in std::fs::read_dir(out.join(&w.name))?.filter_map(|e| e.ok()) {
            if e.path().is_dir() {
                subs.insert(e.file_name().to_string_lossy().to_string());
            }
        }
    }
    let submissions: Vec<String> = subs.into_iter().collect();
    let calibrated_everywhere = workloads.iter().all(|(w, _, _)| submissions.iter().all(|s| out.join(&w.name).join(s).join(CALIBRATION_FILE).exists()));
    let measure = opts.measure.unwrap_or(if calibrated_everywhere { Measure::Calibrated } else { Measure::Wall });
    if measure == Measure::Calibrated && !calibrated_everywhere {
        bail!("--measure calibrated needs a {CALIBRATION_FILE} for every workload and submission: run `algoperf run` with --calibrate");
    }
    let mut pairs = vec![];
    for (w, target, _) in &workloads {
        for s in &submissions {
            let dir = out.join(&w.name).join(s);
            let calibration_ms = std::fs::read_to_string(dir.join(CALIBRATION_FILE)).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()).and_then(|v| v["median_step_ms"].as_f64());
            let mut trials = vec![];
            if dir.exists() {
                for e in std::fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
                    let spec_path = e.path().join(trial::TRIAL_FILE);
                    if !spec_path.exists() {
                        continue;
                    }
                    let spec: TrialSpec = serde_json::from_str(&std::fs::read_to_string(&spec_path)?).with_context(|| format!("{}", spec_path.display()))?;
                    if opts.max_trials.is_some_and(|n| spec.index >= n) {
                        continue;
                    }
                    let outcome = trial::outcome(&e.path(), *target)?;
                    let time = time_of(&outcome, measure, calibration_ms, w.time_budget_s);
                    trials.push(TrialRow { index: spec.index, point: spec.point, outcome, time });
                }
            }
            trials.sort_by_key(|t| t.index);
            pairs.push(PairResult { workload: w.name.clone(), submission: s.clone(), trials, calibration_ms });
        }
    }
    let mut r = Report { measure, max_trials: opts.max_trials, workloads, submissions, pairs, external: BTreeMap::new(), self_tuning: BTreeMap::new() };
    r.external = scores(&r, Ruleset::External);
    r.self_tuning = scores(&r, Ruleset::SelfTuning);
    Ok(r)
}

fn time_of(o: &Outcome, m: Measure, calibration_ms: Option<f64>, budget_s: f64) -> f64 {
    let t = match m {
        Measure::Steps => o.steps_with_trials().map(|s| s as f64),
        Measure::Wall => o.train_time_s,
        Measure::Calibrated => o.steps_with_trials().zip(calibration_ms).map(|(s, ms)| s as f64 * ms / 1e3),
    };
    match t {
        Some(t) if m != Measure::Steps && budget_s > 0.0 && t > budget_s => f64::INFINITY,
        Some(t) => t,
        None => f64::INFINITY,
    }
}

impl Report {
    fn pair(&self, w: &str, s: &str) -> &PairResult {
        self.pairs.iter().find(|p| p.workload == w && p.submission == s).expect("every pair is collected")
    }

    /// times[w][s] under a ruleset.
    fn times(&self, ruleset: Ruleset) -> Vec<Vec<f64>> {
        self.workloads.iter().map(|(w, _, _)| self.submissions.iter().map(|s| self.pair(&w.name, s).time(ruleset)).collect()).collect()
    }

    fn unit(&self) -> &'static str {
        if self.measure == Measure::Steps { "steps" } else { "s" }
    }
}

fn scores(r: &Report, ruleset: Ruleset) -> BTreeMap<String, (f64, Vec<f64>)> {
    let ratios = score::ratios(&r.times(ruleset));
    r.submissions.iter().enumerate().map(|(j, s)| {
        let col: Vec<f64> = ratios.iter().map(|row| row[j]).collect();
        (s.clone(), (score::score(&col), col))
    }).collect()
}

fn scores_json(r: &Report) -> serde_json::Value {
    let side = |m: &BTreeMap<String, (f64, Vec<f64>)>| -> serde_json::Value {
        m.iter().map(|(s, (sc, rs))| (s.clone(), serde_json::json!({ "score": sc, "ratios": rs.iter().map(|x| if x.is_finite() { serde_json::json!(x) } else { serde_json::Value::Null }).collect::<Vec<_>>() }))).collect::<serde_json::Map<_, _>>().into()
    };
    serde_json::json!({
        "measure": r.measure,
        "workloads": r.workloads.iter().map(|(w, t, o)| serde_json::json!({"name": w.name, "target_val_loss": t, "target_overridden": o})).collect::<Vec<_>>(),
        "external_tuning": side(&r.external),
        "self_tuning": side(&r.self_tuning),
        "pairs": r.pairs,
    })
}

fn fmt_time(t: f64, unit: &str) -> String {
    if !t.is_finite() {
        "∞".into()
    } else if unit == "steps" {
        format!("{t:.0}")
    } else {
        format!("{t:.1}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() { format!("{r:.2}") } else { "∞".into() }
}

fn fmt_point(p: &BTreeMap<String, f64>) -> String {
    if p.is_empty() {
        return "defaults".into();
    }
    p.iter().map(|(k, v)| format!("{}={}", k.trim_start_matches("optimizer."), if *v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) { format!("{v:.2e}") } else { format!("{v:.3}") })).collect::<Vec<_>>().join(" ")
}

/// report.md.
pub fn markdown(r: &Report, out: &Path) -> String {
    let u = r.unit();
    let mut m = String::new();
    let _ = writeln!(m, "# Time to result — `{}`\n", out.display());
    let how = match r.measure {
        Measure::Calibrated => "(steps to the target + AutoLRS trial steps) × the config's median step time measured alone (`ferrotron bench train`); evaluation and start-up excluded",
        Measure::Wall => "the trial's own step times (Σ step_ms) + AutoLRS search time up to the first evaluation at or below the target; evaluation and start-up excluded",
        Measure::Steps => "optimizer steps to the first evaluation at or below the target (AutoLRS trial steps included)",
    };
    let _ = writeln!(m, "Time to target: {how}. ∞ = not reached within the budget. Ratio = time / the fastest submission's on that workload; score = ∫₁⁴ ρ(τ) dτ / 3 (AlgoPerf).\n");
    if let Some(n) = r.max_trials {
        let _ = writeln!(m, "Scored with trials 0..{n} of each submission only (`--max-trials {n}`).\n");
    }
    let _ = writeln!(m, "## Workloads\n\n| workload | description | data | tokens/step | budget (steps) | target val loss | eval every |\n|---|---|---|---|---|---|---|");
    for (w, t, overridden) in &r.workloads {
        let tps = w.tokens_per_step().map(|t| t.to_string()).unwrap_or_default();
        let target = match (overridden, w.fixed_target()) {
            (true, _) => format!("{t:.4} (overridden when scoring)"),
            (false, Some(_)) => format!("{t:.4}"),
            (false, None) if w.reference_at < 1.0 => format!("{t:.4} (AdamW defaults at {:.0}% of the budget)", 100.0 * w.reference_at),
            (false, None) => format!("{t:.4} (AdamW defaults at the budget's end)"),
        };
        let _ = writeln!(m, "| {} | {} | `{}` | {tps} | {} | {target} | {} |", w.name, w.description, w.data, w.steps, w.eval_every);
    }
    for (ruleset, title, map) in [(Ruleset::External, "External tuning (best trial of each submission)", &r.external), (Ruleset::SelfTuning, "Self-tuning (trial 0: defaults only)", &r.self_tuning)] {
        let _ = writeln!(m, "\n## {title}\n\n| submission | score | {} |\n|---|---|{}", r.workloads.iter().map(|(w, _, _)| format!("{} time ({u}) / ratio", w.name)).collect::<Vec<_>>().join(" | "), "---|".repeat(r.workloads.len()));
        let mut order: Vec<&String> = r.submissions.iter().collect();
        order.sort_by(|a, b| map[*b].0.total_cmp(&map[*a].0));
        for s in order {
            let (sc, ratios) = &map[s];
            let cells: Vec<String> = r.workloads.iter().zip(ratios).map(|((w, _, _), ratio)| format!("{} / {}", fmt_time(r.pair(&w.name, s).time(ruleset), u), fmt_ratio(*ratio))).collect();
            let _ = writeln!(m, "| {s} | **{sc:.3}** | {} |", cells.join(" | "));
        }
    }
    if r.submissions.iter().any(|s| s == "adamw") && r.submissions.iter().any(|s| s == "adamw-autolrs") {
        let _ = writeln!(m, "\n## AutoLRS vs cosine (AdamW)\n\nAutoLRS: one run with its defaults (its trial steps and search time included). Cosine: AdamW's defaults (trial 0), and the best of its tuned trials (lr, beta2, weight decay, warmup).\n\n| workload | AutoLRS ({u}) | cosine, default lr ({u}) | cosine, best tuned ({u}) | AutoLRS / default | AutoLRS / tuned |\n|---|---|---|---|---|---|");
        for (w, _, _) in &r.workloads {
            let (auto, cos) = (r.pair(&w.name, "adamw-autolrs"), r.pair(&w.name, "adamw"));
            let (a, d, b) = (auto.time(Ruleset::SelfTuning), cos.time(Ruleset::SelfTuning), cos.time(Ruleset::External));
            let q = |x: f64, y: f64| if x.is_finite() && y.is_finite() { format!("{:.2}", x / y) } else { "—".into() };
            let _ = writeln!(m, "| {} | {} | {} | {} | {} | {} |", w.name, fmt_time(a, u), fmt_time(d, u), fmt_time(b, u), q(a, d), q(a, b));
        }
    }
    let _ = writeln!(m, "\n## Best trial per workload and submission\n\n| workload | submission | best trial | settings | steps to target | AutoLRS trial steps | tokens | time ({u}) | solo step (ms) | trials reaching |\n|---|---|---|---|---|---|---|---|---|---|");
    for p in &r.pairs {
        let w = &r.workloads.iter().find(|(w, _, _)| w.name == p.workload).unwrap().0;
        let reached = p.trials.iter().filter(|t| t.time.is_finite()).count();
        let cal = p.calibration_ms.map(|c| format!("{c:.2}")).unwrap_or_else(|| "—".into());
        match p.best() {
            Some(t) => {
                let tokens = t.outcome.target_step.zip(w.tokens_per_step().ok()).map(|(s, k)| format!("{:.2}M", (s * k) as f64 / 1e6)).unwrap_or_default();
                let _ = writeln!(m, "| {} | {} | {} | {} | {} | {} | {tokens} | {} | {cal} | {reached}/{} |", p.workload, p.submission, t.index, fmt_point(&t.point), t.outcome.target_step.unwrap_or(0), t.outcome.extra_steps, fmt_time(t.time, u), p.trials.len());
            }
            None => {
                let _ = writeln!(m, "| {} | {} | — | — | — | — | — | ∞ | {cal} | 0/{} |", p.workload, p.submission, p.trials.len());
            }
        }
    }
    let _ = writeln!(m, "\n## Every trial\n\n| workload | submission | trial | settings | exit | steps to target | time ({u}) | wall Σ step (s) | best val loss | last step |\n|---|---|---|---|---|---|---|---|---|---|");
    for p in &r.pairs {
        for t in &p.trials {
            let o = &t.outcome;
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.workload,
                p.submission,
                t.index,
                fmt_point(&t.point),
                o.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "running".into()),
                o.target_step.map(|s| s.to_string()).unwrap_or_else(|| "—".into()),
                fmt_time(t.time, u),
                o.train_time_s.map(|s| format!("{s:.1}")).unwrap_or_else(|| "—".into()),
                o.best_val_loss.map(|v| format!("{v:.4}")).unwrap_or_else(|| "—".into()),
                o.last_step
            );
        }
    }
    let subs = std::fs::read_to_string(out.join("submissions.toml")).unwrap_or_default();
    if !subs.is_empty() {
        let _ = writeln!(m, "\n## Submissions and search spaces (`submissions.toml`)\n\n```toml\n{}\n```", subs.trim_end());
    }
    let _ = writeln!(m, "\nProfiles: `profiles_external.png`, `profiles_self.png`. Raw: `scores.json`, each trial's `metrics.jsonl`, `config.toml`, `train.log`.");
    m
}

/// ρ(τ) of every submission on [1, 4].
pub fn plot_profiles(r: &Report, ruleset: Ruleset, path: &Path) -> Result<()> {
    register_embedded_font()?;
    let map = if ruleset == Ruleset::External { &r.external } else { &r.self_tuning };
    let title = match ruleset {
        Ruleset::External => "Performance profiles, external tuning (best trial)",
        Ruleset::SelfTuning => "Performance profiles, self-tuning (defaults)",
    };
    crate::util::atomic::write_file_with(path, |tmp| {
        let err = |e: &dyn std::fmt::Display| anyhow!("plotting failed: {e}");
        let root = BitMapBackend::new(tmp, (1000, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 24))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(1.0..score::TAU_MAX, -0.02..1.05)
            .map_err(|e| err(&e))?;
        c.configure_mesh().x_desc("τ (time / fastest time on the workload)").y_desc("ρ(τ): fraction of workloads").x_label_formatter(&|x| format!("{x:.1}")).y_label_formatter(&|y| format!("{y:.1}")).label_style((FAMILY, 15)).axis_desc_style((FAMILY, 17)).draw().map_err(|e| err(&e))?;
        for (i, s) in r.submissions.iter().enumerate() {
            let (sc, ratios) = &map[s];
            let color = PALETTE[i % PALETTE.len()];
            // Offset overlapping curves by a hair so each stays visible.
            let dy = 0.006 * (i as f64 - r.submissions.len() as f64 / 2.0);
            let pts: Vec<(f64, f64)> = score::profile_points(ratios).into_iter().map(|(x, y)| (x, y + dy)).collect();
            c.draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(format!("{s} ({sc:.3})"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
        }
        c.configure_series_labels().position(SeriesLabelPosition::LowerRight).label_font((FAMILY, 15)).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    })
}
