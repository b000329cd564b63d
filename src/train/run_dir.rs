//! The run folder: `runs/<name>/` with the resolved `config.toml`,
//! `metrics.jsonl`, `checkpoints/`, `loss.png` and `tokenizer.txt`.

use crate::config::{self, Config};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Picks and creates the folder for a new run. Refuses to reuse a folder
/// that already holds a run, so nothing on disk is overwritten.
pub fn create(cfg: &Config) -> Result<PathBuf> {
    let name = if cfg.run.name.is_empty() {
        format!("{}-{}", cfg.model.preset, crate::util::time::now_compact())
    } else {
        cfg.run.name.clone()
    };
    let dir = Path::new(&cfg.run.dir).join(name);
    if dir.join("config.toml").exists() {
        bail!("run folder {} already holds a run; continue it with `ferrotron train --resume {}` or pick another --set run.name=...", dir.display(), dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create run folder {}", dir.display()))?;
    crate::util::atomic::write_file(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    Ok(dir)
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
    check_compatible(&saved, &now, dir)?;
    Ok(now)
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

/// Fields that must not change when a run continues.
fn check_compatible(saved: &Config, now: &Config, dir: &Path) -> Result<()> {
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
                "cannot resume {}: {key} differs (the run has {old}, now {}); resume with the run's own setting or start a new run",
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
