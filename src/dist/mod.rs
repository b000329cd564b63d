//! Distribution: the communicator (`Comm`) and its two implementations,
//! rendezvous from launcher environments, and `ferrotron launch`.

pub mod comm;
pub mod setup;
pub mod solo;

pub use comm::{segment, Comm, Elem};
pub use setup::{connect, share_string, WorldInfo};
pub use solo::SoloComm;
