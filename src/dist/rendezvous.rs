//! Who am I in the world: rank, world size and the master's address, read
//! from the variables a launcher sets.
//!
//! Launchers, in the order they are tried (the first whose variables are
//! present wins, because launchers nest: `srun torchrun …` sets SLURM's
//! variables *and* torchrun's, and torchrun's describe the real ranks):
//! 1. torchrun / `ferrotron launch`: RANK, WORLD_SIZE, LOCAL_RANK,
//!    LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT.
//! 2. Open MPI (`mpirun`): OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK,
//!    _LOCAL_SIZE; MASTER_ADDR must be set on several nodes
//!    (`mpirun -x MASTER_ADDR=host`).
//! 3. SLURM (`srun`): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
//!    SLURM_NODEID, SLURM_JOB_NODELIST (the master is its first host),
//!    SLURM_TASKS_PER_NODE (local world).
//!
//! MASTER_ADDR / MASTER_PORT always override what a launcher implies; the
//! port defaults to [`DEFAULT_PORT`]. No launcher variables: a world of 1.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;

/// torchrun's default rendezvous port.
pub const DEFAULT_PORT: u16 = 29500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldInfo {
    /// This process's rank in `0..world`.
    pub rank: usize,
    pub world: usize,
    /// Rank among the processes of this node (the GPU to use).
    pub local_rank: usize,
    pub local_world: usize,
    /// Index of this node.
    pub node_rank: usize,
    /// Where rank 0 listens for the rendezvous.
    pub master_addr: String,
    pub master_port: u16,
    /// Which variables this came from (`torchrun`, `openmpi`, `slurm`,
    /// `single`), for logs and error messages.
    pub launcher: &'static str,
}

impl WorldInfo {
    /// One process, no launcher.
    pub fn single() -> WorldInfo {
        WorldInfo {
            rank: 0,
            world: 1,
            local_rank: 0,
            local_world: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_PORT,
            launcher: "single",
        }
    }

    /// From this process's environment.
    pub fn from_env() -> Result<WorldInfo> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// From a map of environment variables (testable without touching the
    /// process environment).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<WorldInfo> {
        let env = Env(vars);
        let info = if env.has("RANK") || env.has("WORLD_SIZE") {
            torchrun(&env)?
        } else if env.has("OMPI_COMM_WORLD_RANK") || env.has("OMPI_COMM_WORLD_SIZE") {
            openmpi(&env)?
        } else if env.has("SLURM_PROCID") || env.has("SLURM_NTASKS") {
            slurm(&env)?
        } else {
            return Ok(WorldInfo::single());
        };
        info.check()?;
        Ok(info)
    }

    /// The CUDA device this rank should use: its local rank, or 0 when the
    /// launcher gave each process one GPU through CUDA_VISIBLE_DEVICES
    /// (`cuda_visible_devices` is that variable's value, if set).
    pub fn cuda_device(&self, cuda_visible_devices: Option<&str>) -> usize {
        match cuda_visible_devices {
            Some(list) if list.split(',').filter(|d| !d.trim().is_empty()).count() == 1 => 0,
            _ => self.local_rank,
        }
    }

    fn check(&self) -> Result<()> {
        let (v_rank, v_world, v_local, v_lworld) = self.var_names();
        if self.world == 0 {
            bail!("{v_world} = 0: a world needs at least one process");
        }
        if self.rank >= self.world {
            bail!("{v_rank} = {} is not below {v_world} = {}: ranks are 0..{}", self.rank, self.world, self.world - 1);
        }
        if self.local_world == 0 || self.local_world > self.world {
            bail!("{v_lworld} = {} must be between 1 and {v_world} = {}", self.local_world, self.world);
        }
        if self.local_rank >= self.local_world {
            bail!("{v_local} = {} is not below {v_lworld} = {}", self.local_rank, self.local_world);
        }
        if self.master_addr.is_empty() {
            bail!("MASTER_ADDR is empty: set it to the host name or address of rank 0's node");
        }
        Ok(())
    }

    /// The variable names behind (rank, world, local rank, local world).
    fn var_names(&self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self.launcher {
            "openmpi" => ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
            "slurm" => ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_TASKS_PER_NODE"),
            _ => ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
        }
    }
}

/// Typed reads of a variable map; every error names the variable.
struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.trim())
    }
    fn num(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(None),
            Some(s) => s.parse().map(Some).with_context(|| format!("{k} = `{s}` is not a non-negative integer")),
        }
    }
    fn need(&self, k: &str, launcher: &str) -> Result<usize> {
        self.num(k)?.with_context(|| format!("{k} is not set, but other {launcher} variables are; set it or unset them all"))
    }
    fn port(&self) -> Result<Option<u16>> {
        match self.get("MASTER_PORT") {
            None => Ok(None),
            Some(s) => match s.parse::<u16>() {
                Ok(p) if p > 0 => Ok(Some(p)),
                _ => bail!("MASTER_PORT = `{s}` is not a TCP port (1-65535)"),
            },
        }
    }
    /// MASTER_ADDR, or `fallback`, or (one node only) the loopback address.
    fn master_addr(&self, fallback: Option<String>, one_node: bool) -> Result<String> {
        if let Some(a) = self.get("MASTER_ADDR") {
            return Ok(a.to_string());
        }
        match fallback {
            Some(a) => Ok(a),
            None if one_node => Ok("127.0.0.1".into()),
            None => bail!("MASTER_ADDR is not set and the ranks span several nodes: set it to rank 0's host name or address"),
        }
    }
}

fn torchrun(env: &Env) -> Result<WorldInfo> {
    let rank = env.need("RANK", "torchrun")?;
    let world = env.need("WORLD_SIZE", "torchrun")?;
    // Launchers that set only RANK/WORLD_SIZE: one node.
    let local_rank = env.num("LOCAL_RANK")?.unwrap_or(rank);
    let local_world = env.num("LOCAL_WORLD_SIZE")?.unwrap_or(world);
    let node_rank = env.num("GROUP_RANK")?.unwrap_or(0);
    Ok(WorldInfo {
        rank,
        world,
        local_rank,
        local_world,
        node_rank,
        master_addr: env.master_addr(None, local_world == world)?,
        master_port: env.port()?.unwrap_or(DEFAULT_PORT),
        launcher: "torchrun",
    })
}

fn openmpi(env: &Env) -> Result<WorldInfo> {
    let rank = env.need("OMPI_COMM_WORLD_RANK", "Open MPI")?;
    let world = env.need("OMPI_COMM_WORLD_SIZE", "Open MPI")?;
    let local_rank = env.num("OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(rank);
    let local_world = env.num("OMPI_COMM_WORLD_LOCAL_SIZE")?.unwrap_or(world);
    Ok(WorldInfo {
        rank,
        world,
        local_rank,
        local_world,
        // Open MPI has no node index; with mpirun's default by-slot
        // mapping, nodes hold consecutive blocks of ranks.
        node_rank: rank / local_world.max(1),
        master_addr: env.master_addr(None, local_world == world)?,
        master_port: env.port()?.unwrap_or(DEFAULT_PORT),
        launcher: "openmpi",
    })
}

fn slurm(env: &Env) -> Result<WorldInfo> {
    let rank = env.need("SLURM_PROCID", "SLURM")?;
    let world = env.need("SLURM_NTASKS", "SLURM")?;
    let local_rank = env.num("SLURM_LOCALID")?.unwrap_or(0);
    let node_rank = env.num("SLURM_NODEID")?.unwrap_or(0);
    let local_world = match env.get("SLURM_TASKS_PER_NODE") {
        Some(s) => tasks_on_node(s, node_rank).with_context(|| format!("SLURM_TASKS_PER_NODE = `{s}`"))?,
        None => world,
    };
    let first_host = match env.get("SLURM_JOB_NODELIST") {
        Some(s) => Some(first_host(s).with_context(|| format!("SLURM_JOB_NODELIST = `{s}`"))?),
        None => None,
    };
    Ok(WorldInfo {
        rank,
        world,
        local_rank,
        local_world,
        node_rank,
        master_addr: env.master_addr(first_host, local_world == world)?,
        master_port: env.port()?.unwrap_or(DEFAULT_PORT),
        launcher: "slurm",
    })
}

/// First host of a SLURM node list: `gpu[01-04,07],cpu3` → `gpu01`,
/// `node7,node9` → `node7`, `a[3]-ib` → `a3-ib`.
pub fn first_host(list: &str) -> Result<String> {
    let list = list.trim();
    // The first entry ends at the first comma outside brackets.
    let mut depth = 0;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let entry = &list[..end];
    if entry.is_empty() {
        bail!("empty node list");
    }
    let Some(open) = entry.find('[') else { return Ok(entry.to_string()) };
    let close = entry[open..].find(']').map(|i| open + i).context("a `[` without its `]`")?;
    // First item of the range list, first value of that item (`01-04` → `01`,
    // keeping its zero padding).
    let inner = &entry[open + 1..close];
    let first = inner.split(',').next().unwrap_or("").split('-').next().unwrap_or("");
    if first.is_empty() || !first.chars().all(|c| c.is_ascii_digit()) {
        bail!("cannot read the host range `[{inner}]`");
    }
    // Several bracket groups (`r[1-2]n[3-4]`): expand each group's first value.
    let rest = first_host(&entry[close + 1..]).unwrap_or_default();
    Ok(format!("{}{first}{rest}", &entry[..open]))
}

/// Tasks on node `node` from SLURM's compressed counts: `2(x3),1` means
/// three nodes with 2 tasks, then one node with 1.
pub fn tasks_on_node(spec: &str, node: usize) -> Result<usize> {
    let mut seen = 0;
    for part in spec.split(',') {
        let part = part.trim();
        let (count, repeat) = match part.split_once("(x") {
            Some((c, r)) => (c, r.strip_suffix(')').context("a `(x` without its `)`")?),
            None => (part, "1"),
        };
        let count: usize = count.parse().with_context(|| format!("`{count}` is not a task count"))?;
        let repeat: usize = repeat.parse().with_context(|| format!("`{repeat}` is not a repeat count"))?;
        if node < seen + repeat {
            return Ok(count);
        }
        seen += repeat;
    }
    bail!("lists {seen} nodes, but this is node {node} (SLURM_NODEID)")
}
