//! Parameter groups: which ranges of the flat buffer get which settings.
//! Default: weight decay on matrices, embeddings and the head; none on
//! norms and biases.

use crate::model::layout::{ParamKind, ParamLayout};
use std::ops::Range;

#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub name: String,
    /// Ranges of the flat parameter buffer, merged where contiguous.
    pub ranges: Vec<Range<usize>>,
    pub weight_decay: f32,
    /// Tensor names in this group (for `info`).
    pub tensors: Vec<String>,
}

impl ParamGroup {
    pub fn numel(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }
}

pub fn default_groups(layout: &ParamLayout, weight_decay: f32) -> Vec<ParamGroup> {
    let mut decay = ParamGroup { name: "decay".into(), ranges: vec![], weight_decay, tensors: vec![] };
    let mut no_decay = ParamGroup { name: "no_decay".into(), ranges: vec![], weight_decay: 0.0, tensors: vec![] };
    for p in &layout.params {
        let group = match p.kind {
            ParamKind::Norm | ParamKind::Bias => &mut no_decay,
            _ => &mut decay,
        };
        push_merged(&mut group.ranges, p.offset..p.offset + p.numel());
        group.tensors.push(p.name.clone());
    }
    [decay, no_decay].into_iter().filter(|g| g.numel() > 0).collect()
}

fn push_merged(ranges: &mut Vec<Range<usize>>, r: Range<usize>) {
    match ranges.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => ranges.push(r),
    }
}
