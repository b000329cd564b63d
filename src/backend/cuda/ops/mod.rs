//! The ops of the CUDA backend, one home each: `<op>.rs` holds the op's
//! launcher (an inherent `CudaBackend` method named like the `Backend`
//! method it implements, with the op's checks) and the typed argument
//! structs of its kernels (`kernels::kernel!`), beside `<op>.cu` with the
//! kernels themselves. A family of ops sharing one `.cu` file shares its
//! `.rs` file (elementwise, attention). `cuda/mod.rs` forwards
//! the trait to these methods by a macro, so a new op touches no other
//! file of this backend; one with kernels adds a line to `kernel_modules!`.

mod flat;
pub(super) mod linear;
mod rows;
mod tensor_map;
mod transfer;

use super::kernels::KernelFile;

/// The ops with kernels: each module and its `.cu` files, in the order
/// `compile_all` compiles them. Declares the modules, [`FILES`] and (for
/// the signature test) `KERNELS`.
macro_rules! kernel_modules {
    ($( $m:ident: $($f:ident),+; )*) => {
        $( pub(super) mod $m; )*
        /// Every kernel file.
        pub(in crate::backend::cuda) const FILES: &[KernelFile] = &[$($($m::$f),+),*];
        /// Every kernel struct, by module.
        #[cfg(test)]
        pub(in crate::backend::cuda) const KERNELS: &[&[super::kernels::Signature]] = &[$($m::KERNELS),*];
    };
}

kernel_modules! {
    elementwise: FILE;
    sum_squares: FILE;
    embed: FILE;
    layernorm: FILE;
    rmsnorm: FILE;
    gelu: FILE;
    swiglu: FILE;
    rope: FILE;
    attention: FILE, MMA_FILE, FA2_FILE, WGMMA_FILE, WGMMA_BWD_FILE;
    xent: FILE;
    adamw: FILE;
    axpby: FILE;
    copy_strided: FILE;
    axis: FILE;
    lion: FILE;
    sign_descent: FILE;
    precondition: FILE;
    adamw8bit: FILE;
    onebit: FILE;
}

#[cfg(test)]
mod signatures;
