//! Distribution: the communicator (`Comm`) and its two implementations,
//! rendezvous from launcher environments, and `ferrotron launch`.

pub mod comm;

pub use comm::{segment, Comm, Elem};
