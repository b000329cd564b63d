//! `offload.params = cpu` (ZeRO-Infinity style): the device holds no
//! weights between uses. A unit's compute-dtype weights (the host's bf16
//! image on CUDA, its fp32 master on the CPU backend) are uploaded on the
//! copy stream when the pass fetches the unit, and freed when the last
//! holder releases it; the unit after it in the pass's direction is
//! uploaded ahead (prefetch), so its copy runs while the current unit
//! computes. The device holds a window of about three units.

use crate::backend::{Backend, BufId, CopyTicket, DType, HostSrc, View};
use crate::model::layout::ParamLayout;
use crate::model::store::Unit;
use crate::model::views::ModelViews;
use anyhow::Result;

/// Views of units not on the device point here.
const NOT_HERE: BufId = BufId(usize::MAX);

struct Resident {
    buf: BufId,
    /// Fetches holding it (0: uploaded ahead, not yet fetched).
    holders: usize,
    /// The upload, until waited for (before its host source may change).
    ticket: Option<CopyTicket>,
}

pub struct Streamed {
    layout: ParamLayout,
    n_layers: usize,
    units: Vec<Option<Resident>>,
    pub pv: ModelViews,
    /// Index of the unit fetched last (the pass's direction).
    last: Option<usize>,
}

impl Streamed {
    pub fn new(layout: &ParamLayout, n_layers: usize, units: usize) -> Self {
        Streamed { layout: layout.clone(), n_layers, units: (0..units).map(|_| None).collect(), pv: ModelViews::new(layout, NOT_HERE, n_layers), last: None }
    }

    fn unit_of(&self, u: usize) -> Unit {
        match u {
            0 => Unit::Embed,
            u if u == self.n_layers + 1 => Unit::Head,
            u => Unit::Layer(u - 1),
        }
    }

    /// Uploads unit `u` (range `start..start+src.len`) unless it is here.
    fn bring<B: Backend>(&mut self, b: &mut B, u: usize, start: usize, src: HostSrc<'_>) -> Result<()> {
        if self.units[u].is_some() {
            return Ok(());
        }
        let len = match src {
            HostSrc::F32(v) => v.len(),
            HostSrc::Bf16(v) => v.len(),
        };
        let buf = b.alloc(len.max(1), DType::Compute)?;
        // SAFETY: the source is the unit's host (master or image), which
        // does not change before `settle` waits for this ticket (the
        // offload settles a unit before stepping it).
        let ticket = match unsafe { b.upload_start(View::whole(buf, len), src) } {
            Ok(t) => t,
            Err(e) => {
                b.free(buf);
                return Err(e);
            }
        };
        self.units[u] = Some(Resident { buf, holders: 0, ticket: Some(ticket) });
        let unit = self.unit_of(u);
        self.pv.point_unit(&self.layout, unit, start, buf);
        Ok(())
    }

    /// The pass fetches unit `u`, and the unit after it in the pass's
    /// direction is uploaded ahead. `src_of(v)`: unit `v`'s start in the
    /// layout and its host values (None: not in host memory now).
    pub fn fetch<'h, B: Backend>(&mut self, b: &mut B, u: usize, src_of: impl Fn(usize) -> Option<(usize, HostSrc<'h>)>) -> Result<()> {
        let (start, src) = src_of(u).ok_or_else(|| anyhow::anyhow!("offload.params: unit {u}'s weights are not in host memory (is its optimizer step running?)"))?;
        self.bring(b, u, start, src)?;
        if let Some(r) = self.units[u].as_mut() {
            r.holders += 1;
        }
        let next = match self.last {
            Some(l) if l > u => u.checked_sub(1),
            _ => Some(u + 1).filter(|&n| n < self.units.len()),
        };
        self.last = Some(u);
        if let Some(n) = next {
            if let Some((start, s)) = src_of(n) {
                self.bring(b, n, start, s)?;
            }
        }
        Ok(())
    }

    /// Whether unit `u` is on the device (fetched, or uploaded ahead).
    pub fn resident(&self, u: usize) -> bool {
        self.units[u].is_some()
    }

    pub fn release<B: Backend>(&mut self, b: &mut B, u: usize) -> Result<()> {
        let Some(r) = self.units[u].as_mut() else { return Ok(()) };
        r.holders = r.holders.saturating_sub(1);
        if r.holders == 0 {
            self.drop_unit(b, u)?;
        }
        Ok(())
    }

    fn drop_unit<B: Backend>(&mut self, b: &mut B, u: usize) -> Result<()> {
        let Some(r) = self.units[u].take() else { return Ok(()) };
        let out = r.ticket.map_or(Ok(()), |t| b.copy_wait(t));
        b.free(r.buf);
        let unit = self.unit_of(u);
        self.pv.point_unit(&self.layout, unit, 0, NOT_HERE);
        out
    }

    /// Waits for unit `u`'s upload, if one is in flight: its host source
    /// may change after this (its optimizer step).
    pub fn settle<B: Backend>(&mut self, b: &mut B, u: usize) -> Result<()> {
        match self.units[u].as_mut().and_then(|r| r.ticket.take()) {
            Some(t) => b.copy_wait(t),
            None => Ok(()),
        }
    }

    /// Frees every unit no pass holds (uploaded ahead and never fetched)
    /// and forgets the direction: the end of a step.
    pub fn clear_idle<B: Backend>(&mut self, b: &mut B) -> Result<()> {
        self.last = None;
        for u in 0..self.units.len() {
            if self.units[u].as_ref().is_some_and(|r| r.holders == 0) {
                self.drop_unit(b, u)?;
            }
        }
        Ok(())
    }
}
