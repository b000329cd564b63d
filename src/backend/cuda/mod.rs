//! CUDA backend (under construction)
