//! Parameter groups: which ranges of the flat buffer get which settings.
//! Default: weight decay on matrices, embeddings and the head; none on
//! norms and biases. Matrix optimizers split the matrices off into their
//! own group and hand the rest to AdamW.

use crate::backend::{BufId, View};
use crate::model::layout::{ParamKind, ParamLayout};
use std::ops::Range;

/// One tensor of a group, with what the matrix optimizers need: its
/// position in the layout (seeds projections), offset and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub name: String,
    /// Index in `ParamLayout::params`.
    pub index: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl TensorRef {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Rows of a matrix (`[out, in]`); a vector counts as one row.
    pub fn rows(&self) -> usize {
        if self.shape.len() >= 2 { self.shape[0] } else { 1 }
    }
    pub fn cols(&self) -> usize {
        if self.shape.len() >= 2 { self.numel() / self.shape[0] } else { self.numel() }
    }
    /// This tensor inside a flat buffer with the layout.
    pub fn view(&self, buf: BufId) -> View {
        View { buf, off: self.offset, len: self.numel() }
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub name: String,
    /// Ranges of the flat parameter buffer, merged where contiguous.
    pub ranges: Vec<Range<usize>>,
    pub weight_decay: f32,
    /// The tensors in this group, in layout order.
    pub tensors: Vec<TensorRef>,
}

impl ParamGroup {
    fn new(name: &str, weight_decay: f32) -> Self {
        ParamGroup { name: name.into(), ranges: vec![], weight_decay, tensors: vec![] }
    }
    pub fn numel(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }
    fn push(&mut self, t: TensorRef) {
        push_merged(&mut self.ranges, t.range());
        self.tensors.push(t);
    }
}

fn tensor_refs(layout: &ParamLayout) -> impl Iterator<Item = TensorRef> + '_ {
    layout.params.iter().enumerate().map(|(index, p)| TensorRef { name: p.name.clone(), index, offset: p.offset, shape: p.shape.clone(), kind: p.kind })
}

fn decays(kind: ParamKind) -> bool {
    !matches!(kind, ParamKind::Norm | ParamKind::Bias)
}

/// Every tensor, split by weight decay: `decay` and `no_decay`.
pub fn default_groups(layout: &ParamLayout, weight_decay: f32) -> Vec<ParamGroup> {
    let mut decay = ParamGroup::new("decay", weight_decay);
    let mut no_decay = ParamGroup::new("no_decay", 0.0);
    for t in tensor_refs(layout) {
        if decays(t.kind) { decay.push(t) } else { no_decay.push(t) }
    }
    [decay, no_decay].into_iter().filter(|g| g.numel() > 0).collect()
}

/// The attention/MLP weight matrices (group `matrices`, with weight decay)
/// and the rest split as in [`default_groups`] (`decay` = embeddings,
/// positions and head; `no_decay` = norms and biases).
pub fn matrix_split(layout: &ParamLayout, weight_decay: f32) -> (ParamGroup, Vec<ParamGroup>) {
    let mut matrices = ParamGroup::new("matrices", weight_decay);
    let mut decay = ParamGroup::new("decay", weight_decay);
    let mut no_decay = ParamGroup::new("no_decay", 0.0);
    for t in tensor_refs(layout) {
        match t.kind {
            ParamKind::Matrix => matrices.push(t),
            k if decays(k) => decay.push(t),
            _ => no_decay.push(t),
        }
    }
    (matrices, [decay, no_decay].into_iter().filter(|g| g.numel() > 0).collect())
}

/// Keep only the tensors of `group` for which `keep` holds (same name and
/// weight decay); `None` if none is left.
pub fn filter_group(group: &ParamGroup, name: &str, keep: impl Fn(&TensorRef) -> bool) -> Option<ParamGroup> {
    let mut out = ParamGroup::new(name, group.weight_decay);
    group.tensors.iter().filter(|t| keep(t)).for_each(|t| out.push(t.clone()));
    (out.numel() > 0).then_some(out)
}

fn push_merged(ranges: &mut Vec<Range<usize>>, r: Range<usize>) {
    match ranges.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => ranges.push(r),
    }
}
