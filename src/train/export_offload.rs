//! A Hugging Face export straight from an offloaded run's units
//! (`bench --export-init`): each tensor is read from its unit when the
//! export writes it, one unit's master weights held at a time, instead of
//! gathering the whole model into a second host copy first.

use crate::ckpt::hf::{export_from, ExportOptions};
use crate::ckpt::Dtype;
use crate::config::ModelConfig;
use crate::model::layout::{ParamInfo, ParamLayout};
use crate::parallel::offload::Offload;
use anyhow::{anyhow, Result};
use std::borrow::Cow;
use std::cell::RefCell;
use std::path::Path;

/// The unit whose master weights are held: its index and its weights.
#[derive(Default)]
struct Held {
    unit: Option<usize>,
    weights: Vec<f32>,
}

/// Exports `off`'s master weights (model `cfg`, `layout`) to `dir` as
/// `ckpt::export` does from a flat buffer. The export writes tensors in
/// name order, which keeps a layer's tensors together, so each unit is
/// read about once. Host and file units only; [`export_units_by`] with
/// `Offload::read_unit_on` reaches device units (`offload.gpu_gb`) too.
pub fn export_units(off: &mut Offload, cfg: &ModelConfig, layout: &ParamLayout, dir: &Path, dtype: Dtype) -> Result<()> {
    let ranges = off.unit_ranges().to_vec();
    let mut read = |u: usize, out: &mut Vec<f32>| off.read_unit(u, |unit| {
        out.extend_from_slice(unit.master());
        Ok(())
    });
    export_units_by(&ranges, &mut read, cfg, layout, dir, dtype)
}

/// [`export_units`] with each unit's master weights (unit `u`, the units'
/// `ranges`) appended to a vector by `read`.
pub fn export_units_by(ranges: &[std::ops::Range<usize>], read: &mut dyn FnMut(usize, &mut Vec<f32>) -> Result<()>, cfg: &ModelConfig, layout: &ParamLayout, dir: &Path, dtype: Dtype) -> Result<()> {
    let (read, held) = (RefCell::new(read), RefCell::new(Held::default()));
    let source = |info: &ParamInfo| -> Result<Cow<'_, [f32]>> {
        let u = ranges.iter().position(|r| r.contains(&info.offset)).ok_or_else(|| anyhow!("internal: tensor {} is in no unit", info.name))?;
        let mut h = held.borrow_mut();
        if h.unit != Some(u) {
            h.unit = None;
            h.weights.clear();
            (read.borrow_mut())(u, &mut h.weights)?;
            h.unit = Some(u);
        }
        let start = info.offset - ranges[u].start;
        Ok(Cow::Owned(h.weights[start..start + info.numel()].to_vec()))
    };
    export_from(dir, cfg, layout, &source, &ExportOptions::new(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::model::init::init_weights;

    /// The unit-by-unit export writes the flat export's files, byte for
    /// byte, from the cpu tier's resident units and the nvme tier's files.
    #[test]
    fn unit_by_unit_export_is_the_flat_export() {
        for (tier, dtype) in [("cpu", Dtype::F32), ("nvme", Dtype::Bf16)] {
            let tmp = tempfile::tempdir().unwrap();
            let sets: Vec<String> = ["model.d_model=64", "model.n_layers=3", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=128", "model.tied_embeddings=false", "optimizer.name=adamw8bit"]
                .iter()
                .map(|s| s.to_string())
                .chain([format!("offload.optimizer={tier}"), format!("offload.path=\"{}\"", tmp.path().join("scratch").display())])
                .collect();
            let c = config::load(None, &sets).unwrap();
            let layout = ParamLayout::new(&c.model);
            let weights = init_weights(&c.model, &layout, 3);
            let mut off = Offload::new(&c, &layout, &weights).unwrap();
            let (units, flat) = (tmp.path().join("units"), tmp.path().join("flat"));
            export_units(&mut off, &c.model, &layout, &units, dtype).unwrap();
            crate::ckpt::export(&flat, &c.model, &layout, &weights, dtype).unwrap();
            for f in ["model.safetensors", "config.json"] {
                assert!(std::fs::read(units.join(f)).unwrap() == std::fs::read(flat.join(f)).unwrap(), "{tier}: {f} differs");
            }
        }
    }
}
