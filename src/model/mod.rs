//! The decoder: parameter layout, initialization, forward and backward.

pub mod layout;
