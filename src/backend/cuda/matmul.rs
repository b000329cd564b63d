//! cuBLASLt matmuls. Row-major problems are mapped to column-major by the
//! callers (linear.rs); here a `Problem` is already column-major:
//! D[m,n] = alpha * op(A) op(B) + beta * C, with C = D. Algorithms are picked
//! by the heuristic once per shape/dtype/alignment and cached; the workspace
//! is allocated once.

use super::memory::{Allocator, DevMem, Elem};
use anyhow::{anyhow, Result};
use cudarc::cublaslt::{result as lt, sys};
use std::collections::HashMap;
use std::ffi::c_void;

const WORKSPACE: usize = 32 << 20; // NVIDIA's recommendation for Hopper

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    pub ta: bool,
    pub tb: bool,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub lda: i64,
    pub ldb: i64,
    pub ldc: i64,
    pub ab: Elem,
    pub c: Elem,
    pub epilogue: Epilogue,
    /// Pointer alignments of A, B, C in bytes (capped at 256).
    pub align: [u32; 3],
}

/// What cuBLASLt does to the product before writing D. The auxiliary
/// matrix (GELU pre-activation) has D's shape, type and leading dimension;
/// the bias has D's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    None,
    Bias,
    /// D = gelu(product), aux = product.
    GeluAux,
    /// D = gelu(product + bias), aux = product + bias.
    GeluAuxBias,
    /// D = product ⊙ gelu'(aux).
    DGelu,
    /// D = product; the bias vector receives the sums of op(B) over the
    /// product's inner dimension (one per column of D): a bias gradient.
    BGradB,
}

impl Epilogue {
    fn has_bias(self) -> bool {
        matches!(self, Epilogue::Bias | Epilogue::GeluAuxBias | Epilogue::BGradB)
    }
    fn has_aux(self) -> bool {
        matches!(self, Epilogue::GeluAux | Epilogue::GeluAuxBias | Epilogue::DGelu)
    }
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created in `plan` and destroyed once here.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

pub struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: DevMem,
    plans: HashMap<Problem, Plan>,
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: handle created in `new`.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

fn cuda_type(e: Elem) -> sys::cudaDataType {
    match e {
        Elem::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        _ => sys::cudaDataType::CUDA_R_32F,
    }
}

pub fn alignment(ptr: u64) -> u32 {
    if ptr == 0 { 256 } else { (1u64 << ptr.trailing_zeros().min(8)) as u32 }
}

fn check(what: &str, r: Result<(), lt::CublasError>) -> Result<()> {
    r.map_err(|e| anyhow!("cuBLASLt {what}: {e:?}"))
}

unsafe fn set_desc<T>(d: sys::cublasLtMatmulDesc_t, a: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
    check("set desc", lt::set_matmul_desc_attribute(d, a, v as *const T as *const c_void, std::mem::size_of::<T>()))
}

impl Lt {
    pub fn new(alloc: &mut Allocator) -> Result<Self> {
        let handle = lt::create_handle().map_err(|e| anyhow!("cublasLtCreate: {e:?}"))?;
        Ok(Lt { handle, workspace: alloc.alloc(WORKSPACE)?, plans: HashMap::new() })
    }

    fn plan(&self, p: &Problem) -> Result<Plan> {
        use sys::cublasLtMatmulDescAttributes_t as A;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
            .map_err(|e| anyhow!("cuBLASLt desc: {e:?}"))?;
        let (a_rows, a_cols) = if p.ta { (p.k, p.m) } else { (p.m, p.k) };
        let (b_rows, b_cols) = if p.tb { (p.n, p.k) } else { (p.k, p.n) };
        let mk = |e, r, c, ld| lt::create_matrix_layout(cuda_type(e), r, c, ld).map_err(|e| anyhow!("layout: {e:?}"));
        let layouts = [mk(p.ab, a_rows, a_cols, p.lda)?, mk(p.ab, b_rows, b_cols, p.ldb)?, mk(p.c, p.m, p.n, p.ldc)?];
        let mut plan = Plan { desc, layouts, algo: unsafe { std::mem::zeroed() } };
        // SAFETY: descriptors are live; attribute types match cuBLASLt's docs
        // (int32 ops/epilogue, cudaDataType, u64 workspace, u32 alignments).
        unsafe {
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &(p.ta as i32))?;
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &(p.tb as i32))?;
            use sys::cublasLtEpilogue_t as E;
            let epilogue = match p.epilogue {
                Epilogue::None => E::CUBLASLT_EPILOGUE_DEFAULT,
                Epilogue::Bias => E::CUBLASLT_EPILOGUE_BIAS,
                Epilogue::GeluAux => E::CUBLASLT_EPILOGUE_GELU_AUX,
                Epilogue::GeluAuxBias => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
                Epilogue::DGelu => E::CUBLASLT_EPILOGUE_DGELU,
                Epilogue::BGradB => E::CUBLASLT_EPILOGUE_BGRADB,
            };
            set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            if p.epilogue.has_bias() {
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &cuda_type(p.c))?;
            }
            if p.epilogue.has_aux() {
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &p.ldc)?;
                set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &cuda_type(p.c))?;
            }
            let pref = lt::create_matmul_pref().map_err(|e| anyhow!("pref: {e:?}"))?;
            let set_pref = |a: P, v: *const c_void, n: usize| check("pref", lt::set_matmul_pref_attribute(pref, a, v, n));
            let ws = WORKSPACE as u64;
            set_pref(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws as *const u64 as *const c_void, 8)?;
            let al = [p.align[0], p.align[1], p.align[2], p.align[2]];
            let which = [
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ];
            for (w, v) in which.into_iter().zip(al.iter()) {
                set_pref(w, v as *const u32 as *const c_void, 4)?;
            }
            let h = lt::get_matmul_algo_heuristic(self.handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref);
            let _ = lt::destroy_matmul_pref(pref);
            plan.algo = h.map_err(|e| anyhow!("cuBLASLt found no algorithm for {p:?}: {e:?}"))?.algo;
        }
        Ok(plan)
    }

    /// Whether cuBLASLt has an algorithm for `p` (planned and cached on the
    /// first ask); lets callers fall back from a fused epilogue.
    pub fn supports(&mut self, p: &Problem) -> bool {
        if self.plans.contains_key(p) {
            return true;
        }
        match self.plan(p) {
            Ok(plan) => {
                self.plans.insert(*p, plan);
                true
            }
            Err(_) => false,
        }
    }

    /// Queue D = alpha op(A) op(B) + beta D on `stream`, through the
    /// problem's epilogue (`bias`, `aux`: its pointers, 0 where unused).
    #[allow(clippy::too_many_arguments)]
    pub fn run(&mut self, p: Problem, a: u64, b: u64, d: u64, epilogue_ptrs: (u64, u64), alpha: f32, beta: f32, stream: *mut c_void) -> Result<()> {
        self.run_with_c(p, a, b, (d, d), epilogue_ptrs, alpha, beta, stream)
    }

    /// [`Self::run`] with C read from its own buffer (same type and layout
    /// as D): D = alpha op(A) op(B) + beta C, C left as it was.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with_c(&mut self, p: Problem, a: u64, b: u64, (c, d): (u64, u64), (bias, aux): (u64, u64), alpha: f32, beta: f32, stream: *mut c_void) -> Result<()> {
        if !self.plans.contains_key(&p) {
            let plan = self.plan(&p)?;
            self.plans.insert(p, plan);
        }
        let plan = &self.plans[&p];
        // SAFETY: pointers were bounds-checked by the caller for this shape;
        // the plan's descriptors are live; the workspace is ours alone.
        unsafe {
            if p.epilogue.has_bias() {
                set_desc(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
            }
            if p.epilogue.has_aux() {
                set_desc(plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux)?;
            }
            check(
                "matmul",
                lt::matmul(
                    self.handle,
                    plan.desc,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    a as *const c_void,
                    plan.layouts[0],
                    b as *const c_void,
                    plan.layouts[1],
                    c as *const c_void,
                    plan.layouts[2],
                    d as *mut c_void,
                    plan.layouts[2],
                    &plan.algo,
                    self.workspace.ptr as *mut c_void,
                    WORKSPACE,
                    stream as sys::cudaStream_t,
                ),
            )
        }
    }
}
