//! The run folder: `runs/<name>/` with the resolved `config.toml`,
//! `metrics.jsonl`, `checkpoints/`, `loss.png` and `tokenizer.txt`.

use crate::config::{self, Config};
use crate::util::lock::RunLock;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Picks, creates and locks the folder for a new run. Refuses a folder
/// that another process is using (see `util::lock`) or that holds a run
/// with a checkpoint, so nothing on disk is overwritten. A folder whose
/// run never saved a checkpoint (killed early) is started over, saying so:
/// there is nothing in it to continue.
pub fn create(cfg: &Config) -> Result<(PathBuf, RunLock)> {
    let name = if cfg.run.name.is_empty() {
        format!("{}-{}", cfg.model.preset, crate::util::time::now_compact())
    } else {
        cfg.run.name.clone()
    };
    let dir = Path::new(&cfg.run.dir).join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create run folder {}", dir.display()))?;
    let lock = RunLock::acquire(&dir)?;
    if dir.join("config.toml").exists() {
        if has_checkpoint_folders(&dir)? {
            bail!("run folder {} already holds a run; continue it with `ferrotron train --resume {}` or pick another --set run.name=...", dir.display(), dir.display());
        }
        eprintln!("note: run folder {} holds a run that never saved a checkpoint (stopped early?); starting it over", dir.display());
    }
    crate::util::atomic::write_file(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    Ok((dir, lock))
}

/// Whether `<dir>/checkpoints` holds any `step_*` entry (complete or not).
pub fn has_checkpoint_folders(dir: &Path) -> Result<bool> {
    let parent = crate::ckpt::checkpoints_dir(dir);
    match std::fs::read_dir(&parent) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("step_"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot list {}", parent.display())),
    }
}

/// Loads the config of an existing run and applies `--set` overrides,
/// refusing changes that would make the continuation a different run.
pub fn resume_config(dir: &Path, overrides: &[String], user_file: Option<&Path>) -> Result<Config> {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot resume {}: no readable config.toml there (is it a ferrotron run folder?)", dir.display()))?;
    let saved = config::from_run_toml(&text, &path.display().to_string())?;
    let mut table = toml::Value::try_from(&saved)?;
    if let Some(f) = user_file {
        let user: toml::Value = std::fs::read_to_string(f)?.parse().with_context(|| format!("config file {} is not valid TOML", f.display()))?;
        merge_into(&mut table, user);
    }
    for kv in overrides {
        config::apply_override(&mut table, kv)?;
    }
    let now = config::from_toml_str(&toml::to_string(&table)?, "resumed config")?;
    check_compatible(&saved, &now, dir, "the run")?;
    Ok(now)
}

/// The resume rule's second half: the fixed keys must also equal those the
/// checkpoint being continued was trained with (its manifest's config), so
/// a hand edit of config.toml is held to the same rule as `--set`.
pub fn check_against_checkpoint(manifest_config: &str, now: &Config, dir: &Path, ckpt_dir: &Path) -> Result<()> {
    let trained = config::from_run_toml(manifest_config, &format!("the config in {}", ckpt_dir.display()))?;
    let name = ckpt_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    check_compatible(&trained, now, dir, &format!("checkpoint {name}"))
}

/// Write the settings a resume runs with into config.toml (if they differ),
/// so that the next plain `--resume` continues with them too. Returns the
/// changed keys as `key: old -> new`.
pub fn record_config(dir: &Path, now: &Config) -> Result<Vec<String>> {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let saved = config::from_run_toml(&text, &path.display().to_string())?;
    if &saved == now {
        return Ok(vec![]);
    }
    let (a, b) = (flat(&saved)?, flat(now)?);
    let mut changed = Vec::new();
    for (key, new) in &b {
        let old = a.iter().find(|(k, _)| k == key).map(|(_, v)| v.to_string()).unwrap_or_else(|| "unset".into());
        if old != new.to_string() {
            changed.push(format!("{key}: {old} -> {new}"));
        }
    }
    crate::util::atomic::write_file(&path, now.to_toml().as_bytes())?;
    Ok(changed)
}

fn merge_into(base: &mut toml::Value, over: toml::Value) {
    if let (Some(b), toml::Value::Table(o)) = (base.as_table_mut(), over) {
        for (k, v) in o {
            match b.get_mut(&k) {
                Some(slot) if slot.is_table() && v.is_table() => merge_into(slot, v),
                _ => {
                    b.insert(k, v);
                }
            }
        }
    }
}

/// Fields that must not change when a run continues: the model, the seed,
/// the data and how it is cut into steps, the optimizer kind. `origin` says
/// what `saved` is ("the run" = its config.toml, or a checkpoint).
fn check_compatible(saved: &Config, now: &Config, dir: &Path, origin: &str) -> Result<()> {
    let a = flat(saved)?;
    let b = flat(now)?;
    // train.batch_size is per rank: the trainer checks that batch × ranks
    // (the global batch) is unchanged once it knows the number of ranks.
    let fixed = |k: &str| k.starts_with("model.") || ["seed", "data.path", "optimizer.name", "train.seq_len", "train.grad_accum"].contains(&k);
    for (key, old) in &a {
        if !fixed(key) {
            continue;
        }
        let new = b.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if new != Some(old) {
            bail!(
                "cannot resume {}: {key} differs ({origin} has {old}, now {}); resume with the run's own setting or start a new run",
                dir.display(),
                new.map(|v| v.to_string()).unwrap_or_else(|| "nothing".into())
            );
        }
    }
    Ok(())
}

fn flat(cfg: &Config) -> Result<Vec<(String, toml::Value)>> {
    let v = toml::Value::try_from(cfg)?;
    let mut out = Vec::new();
    walk(&v, "", &mut out);
    Ok(out)
}

fn walk(v: &toml::Value, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                walk(child, &key, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}
