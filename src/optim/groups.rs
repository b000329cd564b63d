//! Parameter groups: which ranges of the flat buffer get which settings.
//! Default: weight decay on matrices, embeddings and the head; none on
//! norms and biases. Matrix optimizers split the matrices off into their
//! own group(s) and hand the rest to AdamW. `optimizer.groups` rules
//! override both per tensor (first matching rule wins).

use crate::config::{GroupRule, OptimizerConfig};
use crate::model::layout::{ParamInfo, ParamKind, ParamLayout};
use anyhow::{bail, ensure, Result};
use std::ops::Range;

/// One tensor of a group: the model's one tensor descriptor, with its
/// weight decay filled in by the grouping.
pub type TensorRef = ParamInfo;

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
    layout.params.iter().cloned()
}

fn decays(kind: ParamKind) -> bool {
    !matches!(kind, ParamKind::Norm | ParamKind::Bias)
}

/// The optimizers that update 2-D matrices themselves and hand the other
/// tensors to AdamW.
pub const MATRIX_OPTIMIZERS: &[&str] = &["apollo", "apollo_mini", "frugal", "muon", "cosmos"];

/// `*` matches any run of characters, `?` any one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // match[i][j]: pattern[..i] matches name[..j].
    let mut prev = vec![false; n.len() + 1];
    prev[0] = true;
    for &pc in &p {
        let mut cur = vec![false; n.len() + 1];
        cur[0] = prev[0] && pc == '*';
        for j in 1..=n.len() {
            cur[j] = match pc {
                '*' => cur[j - 1] || prev[j],
                '?' => prev[j - 1],
                c => prev[j - 1] && c == n[j - 1],
            };
        }
        prev = cur;
    }
    prev[n.len()]
}

/// The first `optimizer.groups` rule naming `tensor`, with its index.
fn rule_for<'a>(cfg: &'a OptimizerConfig, tensor: &str) -> Option<(usize, &'a GroupRule)> {
    cfg.groups.iter().enumerate().find(|(_, r)| r.tensors.iter().any(|p| glob_match(p, tensor)))
}

/// Where one tensor goes: its group's name, its weight decay, and whether
/// the matrix optimizer itself updates it.
struct Placement {
    group: String,
    weight_decay: f32,
    matrix: bool,
}

fn place(t: &TensorRef, cfg: &OptimizerConfig, matrix_optimizer: bool) -> Placement {
    let default_wd = if decays(t.kind) { cfg.weight_decay } else { 0.0 };
    let default_matrix = matrix_optimizer && t.kind == ParamKind::Matrix;
    let default_name = if default_matrix { "matrices" } else if decays(t.kind) { "decay" } else { "no_decay" };
    match rule_for(cfg, &t.name) {
        None => Placement { group: default_name.into(), weight_decay: default_wd, matrix: default_matrix },
        Some((i, rule)) => {
            let matrix = match rule.optimizer.as_str() {
                "" => default_matrix,
                "adamw" => false,
                _ => matrix_optimizer && t.shape.len() == 2,
            };
            let name = if rule.name.is_empty() { format!("groups[{i}]") } else { rule.name.clone() };
            Placement { group: name, weight_decay: rule.weight_decay.unwrap_or(default_wd), matrix }
        }
    }
}

/// Every tensor placed and grouped by (name, placement, decay), groups in
/// order of their first tensor. A rule whose tensors end up with different
/// updates or decays is reported as several groups (`.adamw` / `.no_decay`
/// suffixes).
fn grouped(layout: &ParamLayout, cfg: &OptimizerConfig, matrix_optimizer: bool) -> Vec<(bool, ParamGroup)> {
    let mut groups: Vec<(bool, ParamGroup)> = vec![];
    for mut t in tensor_refs(layout) {
        let pl = place(&t, cfg, matrix_optimizer);
        t.weight_decay = pl.weight_decay;
        let found = groups.iter_mut().find(|(m, g)| g.name == pl.group && *m == pl.matrix && g.weight_decay == pl.weight_decay);
        match found {
            Some((_, g)) => g.push(t),
            None => {
                let mut g = ParamGroup::new(&pl.group, pl.weight_decay);
                g.push(t);
                groups.push((pl.matrix, g));
            }
        }
    }
    disambiguate(&mut groups);
    groups
}

/// Suffixes for groups that share a name: the AdamW side of a rule split
/// between the matrix optimizer and AdamW gets `.adamw`; then the
/// undecayed side of a rule split by decay gets `.no_decay`.
fn disambiguate(groups: &mut [(bool, ParamGroup)]) {
    let split: Vec<String> = groups.iter().filter(|(m, g)| *m && groups.iter().any(|(m2, g2)| !*m2 && g2.name == g.name)).map(|(_, g)| g.name.clone()).collect();
    for (matrix, g) in groups.iter_mut() {
        if !*matrix && split.contains(&g.name) {
            g.name += ".adamw";
        }
    }
    let names: Vec<String> = groups.iter().map(|(_, g)| g.name.clone()).collect();
    for (_, g) in groups.iter_mut() {
        if g.weight_decay == 0.0 && names.iter().filter(|n| **n == g.name).count() > 1 {
            g.name += ".no_decay";
        }
    }
}

/// Every tensor, for the optimizers that update all of them the same way:
/// `decay` and `no_decay`, or the groups of `optimizer.groups`.
pub fn default_groups(layout: &ParamLayout, cfg: &OptimizerConfig) -> Vec<ParamGroup> {
    grouped(layout, cfg, false).into_iter().map(|(_, g)| g).collect()
}

/// The tensors a matrix optimizer updates itself, and the rest (for its
/// AdamW part). Defaults: the attention/MLP weight matrices (`matrices`);
/// `decay` = embeddings, positions and head, `no_decay` = norms and biases.
pub fn matrix_split(layout: &ParamLayout, cfg: &OptimizerConfig) -> (Matrices, Vec<ParamGroup>) {
    let (mut matrices, mut rest) = (vec![], vec![]);
    for (matrix, g) in grouped(layout, cfg, true) {
        if matrix { matrices.push(g) } else { rest.push(g) }
    }
    (Matrices::new(matrices), rest)
}

/// The matrix groups of a matrix optimizer, and all their tensors in
/// layout order (each carrying its own weight decay).
#[derive(Clone, Debug)]
pub struct Matrices {
    pub groups: Vec<ParamGroup>,
    pub tensors: Vec<TensorRef>,
}

impl Matrices {
    fn new(groups: Vec<ParamGroup>) -> Self {
        let mut tensors: Vec<TensorRef> = groups.iter().flat_map(|g| g.tensors.clone()).collect();
        tensors.sort_by_key(|t| t.offset);
        Matrices { groups, tensors }
    }
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }

    /// All matrix groups as one (for state shared across them, like
    /// FRUGAL's pool); named after its groups, with the first group's decay.
    pub fn combined(&self) -> ParamGroup {
        let name = self.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(" + ");
        let mut all = ParamGroup::new(&name, self.groups.first().map_or(0.0, |g| g.weight_decay));
        self.tensors.iter().for_each(|t| all.push(t.clone()));
        all
    }
}

/// Checks `optimizer.groups` against the model's tensors: every pattern
/// names a tensor, `optimizer` is `adamw` or the optimizer itself (and
/// `adamw` only where a matrix optimizer has an AdamW part), tensors put
/// under a matrix optimizer are 2-D, decays are finite and ≥ 0.
pub fn check_rules(layout: &ParamLayout, cfg: &OptimizerConfig) -> Result<()> {
    let matrix_optimizer = MATRIX_OPTIMIZERS.contains(&cfg.name.as_str());
    let example = layout.params.iter().take(4).map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    for (i, rule) in cfg.groups.iter().enumerate() {
        let at = format!("optimizer.groups[{i}]");
        ensure!(!rule.tensors.is_empty(), "{at} names no tensors: set tensors = [\"pattern\", ...] (`ferrotron info` lists the tensor names)");
        for pat in &rule.tensors {
            ensure!(layout.params.iter().any(|p| glob_match(pat, &p.name)), "{at}: `{pat}` matches no tensor of this model (names look like {example}; `*` matches any run of characters)");
        }
        if let Some(wd) = rule.weight_decay {
            ensure!(wd.is_finite() && wd >= 0.0, "{at}.weight_decay must be ≥ 0, got {wd}");
        }
        match rule.optimizer.as_str() {
            "" => {}
            "adamw" => ensure!(
                matrix_optimizer || cfg.name == "adamw",
                "{at}.optimizer = adamw: only the matrix optimizers ({}) hand tensors to AdamW; with {} every tensor is updated by {}",
                MATRIX_OPTIMIZERS.join(", "),
                cfg.name,
                cfg.name
            ),
            o if o == cfg.name => {
                for p in layout.params.iter().filter(|p| rule.tensors.iter().any(|pat| glob_match(pat, &p.name))) {
                    ensure!(!matrix_optimizer || p.shape.len() == 2, "{at}: {} updates 2-D matrices only, {} is {:?}", cfg.name, p.name, p.shape);
                }
            }
            o => bail!("{at}.optimizer = {o}: use `adamw` or `{}` (the configured optimizer.name)", cfg.name),
        }
    }
    Ok(())
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
