//! Distribution: the communicator (`Comm`) and its two implementations,
//! rendezvous from launcher environments, and `ferrotron launch`.
//!
//! Files: `comm` (the trait), `rendezvous` (rank and world from torchrun,
//! SLURM or Open MPI variables), `store` (rank 0's TCP rendezvous), `star`
//! (the framed TCP protocol with sequence checks and timeouts), `tcp`
//! (`TcpComm`, any backend), `nccl` + `nccl_lib` (`NcclComm`, CUDA),
//! `watchdog` (NCCL collectives that hang or fail end the process),
//! `launch` (`ferrotron launch`), `bench` (`ferrotron bench comm`),
//! `self_test` (the start-of-run check and bandwidth of several ranks),
//! `compressed` (the error-compensated 1-bit all-reduce of 1-bit Adam).
//!
//! The trainer calls [`connect`] once per process:
//! ```ignore
//! let info = WorldInfo::from_env()?;
//! let mut b = dist::open_cuda(&info)?;          // or CpuBackend::new()
//! let mut comm = dist::connect(&cfg.dist, &info, &mut b)?;
//! ```

pub mod bench;
pub mod comm;
pub mod compressed;
pub mod launch;
pub mod nccl;
mod nccl_lib;
pub mod rendezvous;
pub mod self_test;
pub mod setup;
pub mod solo;
pub mod star;
pub mod store;
pub mod tcp;
pub mod watchdog;

pub use comm::{segment, Comm, Elem, Ticket};
pub use compressed::CompressedAllReduce;
pub use nccl::NcclComm;
pub use rendezvous::WorldInfo;
pub use setup::share_string;
pub use solo::SoloComm;
pub use tcp::TcpComm;

use crate::backend::cuda::CudaBackend;
use crate::backend::Backend;
use crate::config::DistConfig;
use anyhow::{bail, Result};
use std::any::Any;
use std::time::Duration;

/// Set on ranks other than 0 by `ferrotron launch`: print no progress bar
/// and no per-step log lines (errors still print).
pub const QUIET_ENV: &str = "FERROTRON_RANK_QUIET";

/// The CUDA backend on this rank's GPU (see [`WorldInfo::cuda_device`]).
pub fn open_cuda(info: &WorldInfo) -> Result<CudaBackend> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    CudaBackend::new(info.cuda_device(visible.as_deref()))
}

/// `dist.timeout_s` as a duration.
pub fn timeout(cfg: &DistConfig) -> Duration {
    Duration::from_secs_f64(cfg.timeout_s)
}

/// The communicator `cfg.backend` asks for: `tcp`, `nccl`, or `auto` (nccl
/// when `B` is the CUDA backend, tcp otherwise). Meets the other ranks of
/// `info` first; `b` must already be on this rank's GPU
/// (`info.local_rank`).
pub fn connect<B: Backend + 'static>(cfg: &DistConfig, info: &WorldInfo, b: &mut B) -> Result<Box<dyn Comm<B>>> {
    let is_cuda = (b as &mut dyn Any).is::<CudaBackend>();
    let nccl = match cfg.backend.as_str() {
        "tcp" => false,
        "nccl" => true,
        _ => is_cuda,
    };
    if !nccl {
        return connect_tcp(cfg, info);
    }
    let Some(cuda) = (b as &mut dyn Any).downcast_mut::<CudaBackend>() else {
        bail!("dist.backend = nccl needs device = cuda (this is the {} backend); use dist.backend = tcp or auto", b.name());
    };
    let comm: Box<dyn Any> = Box::new(connect_nccl(cfg, info, cuda)?);
    // B is CudaBackend here, so this is the same type.
    match comm.downcast::<Box<dyn Comm<B>>>() {
        Ok(c) => Ok(*c),
        Err(_) => bail!("internal: the NCCL communicator does not match the backend type"),
    }
}

/// This rank's place in its group of `size` consecutive ranks (sequence
/// parallelism: ranks `g·size .. (g+1)·size` form group `g`): rank and
/// world within the group, rendezvous on MASTER_PORT + 1 + g. The group's
/// first rank listens at MASTER_ADDR, so a group must include a rank on
/// the master's node (every group does on one node).
pub fn group_info(info: &WorldInfo, size: usize) -> Result<WorldInfo> {
    if size == 0 || !info.world.is_multiple_of(size) {
        bail!("a group of {size} ranks does not divide the world of {}", info.world);
    }
    let group = info.rank / size;
    let Some(port) = u16::try_from(group + 1).ok().and_then(|g| info.master_port.checked_add(g)) else {
        bail!("MASTER_PORT {} + 1 + group {group} is not a port: set a lower MASTER_PORT", info.master_port);
    };
    Ok(WorldInfo { rank: info.rank % size, world: size, master_port: port, ..info.clone() })
}

/// A communicator over this rank's group of `size` consecutive ranks (see
/// [`group_info`]), of the kind [`connect`] picks; a group of one needs
/// no rendezvous.
pub fn connect_group<B: Backend + 'static>(cfg: &DistConfig, info: &WorldInfo, size: usize, b: &mut B) -> Result<Box<dyn Comm<B>>> {
    let group = group_info(info, size)?;
    if size == 1 {
        return Ok(Box::new(SoloComm));
    }
    connect(cfg, &group, b).map_err(|e| e.context(format!("connecting the group of ranks {}..{}", info.rank / size * size, (info.rank / size + 1) * size)))
}

/// Rendezvous ports for the groups of `size` consecutive ranks, agreed
/// over the world communicator: each group's first rank asks the OS for a
/// free port and every rank learns all of them. (Fixed offsets from
/// MASTER_PORT can collide with ports other programs hold.)
pub fn group_ports<B: Backend>(world: &mut dyn Comm<B>, size: usize) -> Result<Vec<u16>> {
    let groups = world.world() / size.max(1);
    let mut ports = vec![0.0f64; groups];
    if world.rank() % size == 0 {
        let l = std::net::TcpListener::bind("0.0.0.0:0").map_err(|e| anyhow::anyhow!("finding a free port for the sequence-parallel group: {e}"))?;
        ports[world.rank() / size] = l.local_addr()?.port() as f64;
    }
    world.all_reduce_host(&mut ports)?;
    Ok(ports.into_iter().map(|p| p as u16).collect())
}

/// [`connect_group`] with the group's rendezvous at `port` (from
/// [`group_ports`]).
pub fn connect_group_at<B: Backend + 'static>(cfg: &DistConfig, info: &WorldInfo, size: usize, port: u16, b: &mut B) -> Result<Box<dyn Comm<B>>> {
    let group = WorldInfo { master_port: port, ..group_info(info, size)? };
    if size == 1 {
        return Ok(Box::new(SoloComm));
    }
    connect(cfg, &group, b).map_err(|e| e.context(format!("connecting the group of ranks {}..{}", info.rank / size * size, (info.rank / size + 1) * size)))
}

/// A `TcpComm` for any backend (host copies through download/upload).
pub fn connect_tcp<B: Backend>(cfg: &DistConfig, info: &WorldInfo) -> Result<Box<dyn Comm<B>>> {
    Ok(Box::new(TcpComm::connect(info, timeout(cfg))?))
}

/// An `NcclComm` on `b`'s GPU.
pub fn connect_nccl(cfg: &DistConfig, info: &WorldInfo, b: &mut CudaBackend) -> Result<Box<dyn Comm<CudaBackend>>> {
    Ok(Box::new(NcclComm::connect(info, timeout(cfg), b)?))
}
