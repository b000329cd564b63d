"""Emulates the warp-level register layouts of `mma.sync.m16n8k16` and
`ldmatrix` (.x4, plain and .trans) on the CPU, to check fragment
bookkeeping of the tensor-core attention kernels without a GPU.

It reproduces the two fragment paths of `fa2_bwd_dq` (attention_fa2.cu) for
one warp: S = Q K^T from ldmatrix fragments (A and B non-transposed), and
dQ += dS K with A packed from the S accumulators and B (K stored [key][d])
loaded with .trans. The GPU tests verify the same kernel, so a mismatch here
points at the emulator; new fragment mappings can be checked against it
before they reach a GPU.

    python3 tools/mma_fragments.py      (needs numpy)
"""
import numpy as np
rng = np.random.default_rng(0)
BK = 64; D = 64; LD = D + 8

def a_row(l): return l & 15
def a_col(l): return (l >> 4) * 8
def b_row(l): return (l & 7) + ((l >> 4) << 3)
def b_col(l): return ((l >> 3) & 1) * 8

def ldsm_x4(smem, addr_of_lane, trans):
    # returns regs[lane][i] = (lo, hi) pairs
    regs = [[None]*4 for _ in range(32)]
    for i in range(4):
        rows = [addr_of_lane(8*i + r) for r in range(8)]  # (row, col) start of each of 8 rows
        M = np.array([[smem[r][c + j] for j in range(8)] for (r, c) in rows])
        for t in range(32):
            if not trans:
                regs[t][i] = (M[t >> 2][2*(t & 3)], M[t >> 2][2*(t & 3)+1])
            else:
                regs[t][i] = (M[2*(t & 3)][t >> 2], M[2*(t & 3)+1][t >> 2])
    return regs

def mma(C, A, b0, b1):
    # C[lane] 4 floats, A[lane] 4 pairs, b0/b1[lane] pairs; builds full matrices
    Am = np.zeros((16, 16)); Bm = np.zeros((16, 8))
    for t in range(32):
        g, c = t >> 2, t & 3
        Am[g][2*c], Am[g][2*c+1] = A[t][0]
        Am[g+8][2*c], Am[g+8][2*c+1] = A[t][1]
        Am[g][2*c+8], Am[g][2*c+9] = A[t][2]
        Am[g+8][2*c+8], Am[g+8][2*c+9] = A[t][3]
        Bm[2*c][g], Bm[2*c+1][g] = b0[t]
        Bm[2*c+8][g], Bm[2*c+9][g] = b1[t]
    P = Am @ Bm
    for t in range(32):
        g, c = t >> 2, t & 3
        C[t][0] += P[g][2*c]; C[t][1] += P[g][2*c+1]; C[t][2] += P[g+8][2*c]; C[t][3] += P[g+8][2*c+1]

K = rng.standard_normal((BK, D))         # [key][d]
sK = np.zeros((BK, LD)); sK[:, :D] = K

# --- fa2_bwd_dq, warp w: its 16 query rows of a 64-query tile --------------
Q = rng.standard_normal((64, D)); sQ = np.zeros((64, LD)); sQ[:, :D] = Q
w = 1
# S = Q K^T for warp w (non-trans A and B).
s = [[[0.0]*4 for _ in range(32)] for _ in range(64 // 8)]
qf = [ldsm_x4(sQ, lambda l, kk=kk: (w*16 + a_row(l), kk*16 + a_col(l)), False) for kk in range(D // 16)]
for kk in range(D // 16):
    for np_ in range(64 // 16):
        bk = ldsm_x4(sK, lambda l: (np_*16 + b_row(l), kk*16 + b_col(l)), False)
        mma(s[2*np_], qf[kk], [bk[t][0] for t in range(32)], [bk[t][1] for t in range(32)])
        mma(s[2*np_+1], qf[kk], [bk[t][2] for t in range(32)], [bk[t][3] for t in range(32)])
S = np.zeros((16, 64))
for lane in range(32):
    for n in range(8):
        g, c = lane >> 2, lane & 3
        S[g][n*8+2*c], S[g][n*8+2*c+1], S[g+8][n*8+2*c], S[g+8][n*8+2*c+1] = s[n][lane]
assert np.allclose(S, Q[w*16:w*16+16] @ K.T); print("emulator reproduces S = Q K^T of fa2_bwd_dq")
# dQ += dS K with A packed from accumulators (here: the S accumulators) and B by .trans.
dq = [[[0.0]*4 for _ in range(32)] for _ in range(D // 8)]
for kk in range(64 // 16):
    sa = [[(s[2*kk][t][0], s[2*kk][t][1]), (s[2*kk][t][2], s[2*kk][t][3]), (s[2*kk+1][t][0], s[2*kk+1][t][1]), (s[2*kk+1][t][2], s[2*kk+1][t][3])] for t in range(32)]
    for dn in range(D // 16):
        bk = ldsm_x4(sK, lambda l: (kk*16 + a_row(l), dn*16 + a_col(l)), True)
        mma(dq[2*dn], sa, [bk[t][0] for t in range(32)], [bk[t][1] for t in range(32)])
        mma(dq[2*dn+1], sa, [bk[t][2] for t in range(32)], [bk[t][3] for t in range(32)])
DQ = np.zeros((16, D))
for lane in range(32):
    for n in range(D // 8):
        g, c = lane >> 2, lane & 3
        DQ[g][n*8+2*c], DQ[g][n*8+2*c+1], DQ[g+8][n*8+2*c], DQ[g+8][n*8+2*c+1] = dq[n][lane]
assert np.allclose(DQ, S @ K); print("emulator reproduces dQ += dS K of fa2_bwd_dq")
