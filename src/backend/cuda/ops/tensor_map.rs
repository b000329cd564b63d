//! Tensor maps for the Hopper bulk tensor copies (TMA,
//! `cp.async.bulk.tensor`): the driver encodes, on the host, where a tensor
//! lies in global memory and which box one copy moves; the kernel receives
//! the 128-byte map by value (`const __grid_constant__ TensorMap`).

use anyhow::{bail, Result};
use cudarc::driver::sys;
use cudarc::driver::DeviceRepr;

/// An encoded `CUtensorMap`; mirrors `TensorMap` in wgmma_common.cuh.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub(in crate::backend::cuda) struct TensorMap {
    pub words: [u64; 16],
}
// SAFETY: 128 bytes of plain data, the layout of the CUDA struct.
unsafe impl DeviceRepr for TensorMap {}

/// A 3-D bf16 tensor `[outer][rows][cols]` at `ptr` (rows `cols` elements
/// apart, no padding), read in boxes of `box_cols` x `box_rows` x 1 into
/// shared memory with the 128-byte swizzle. Elements outside the tensor
/// arrive as zeros. Needs a 16-byte aligned `ptr`, rows of a multiple of 16
/// bytes and `box_cols` * 2 <= 128 (the swizzle span).
pub(in crate::backend::cuda) fn bf16_3d_swizzled(ptr: u64, outer: usize, rows: usize, cols: usize, box_cols: u32, box_rows: u32) -> Result<TensorMap> {
    if !ptr.is_multiple_of(16) || !(cols * 2).is_multiple_of(16) || box_cols * 2 > 128 || box_rows > 256 {
        bail!("tensor map: address {ptr:#x}, row of {cols} bf16 or box {box_cols}x{box_rows} not allowed for a 128-byte swizzled copy");
    }
    let dims = [cols as u64, rows as u64, outer as u64];
    let strides = [cols as u64 * 2, (rows * cols) as u64 * 2]; // bytes, dims 1 and 2
    let boxes = [box_cols, box_rows, 1u32];
    let element_strides = [1u32; 3];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::uninit();
    // SAFETY: every array has the rank's length (3; strides 2); the driver
    // only writes the map.
    let rc = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            3,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if rc != sys::CUresult::CUDA_SUCCESS {
        bail!("cuTensorMapEncodeTiled failed ({rc:?}) for a [{outer}][{rows}][{cols}] bf16 tensor, box {box_cols}x{box_rows}");
    }
    // SAFETY: initialized by the successful call.
    let map = unsafe { map.assume_init() };
    Ok(TensorMap { words: map.opaque })
}
