//! Distribution: the communicator (`Comm`) and its two implementations,
//! rendezvous from launcher environments, and `ferrotron launch`.
//!
//! Files: `comm` (the trait), `rendezvous` (rank and world from torchrun,
//! SLURM or Open MPI variables), `store` (rank 0's TCP rendezvous), `star`
//! (the framed TCP protocol with sequence checks and timeouts), `tcp`
//! (`TcpComm`, any backend), `nccl` (`NcclComm`, CUDA), `launch`
//! (`ferrotron launch`), `bench` (`ferrotron bench comm`).

pub mod comm;
pub mod rendezvous;
pub mod star;
pub mod store;
pub mod tcp;

pub use comm::{segment, Comm, Elem};
pub use rendezvous::WorldInfo;
pub use tcp::TcpComm;
