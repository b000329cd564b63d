#!/usr/bin/env python3
"""Dumps the PTX of every CUDA kernel file at a git revision (or the working
tree) and compares two dumps, to show a refactor left every kernel's PTX
byte for byte as it was. No GPU: NVRTC only, called through ctypes.

    python3 tools/kernel_ptx.py dump --rev 690d695 --out /tmp/ptx-base
    python3 tools/kernel_ptx.py dump --out /tmp/ptx-head          # working tree
    python3 tools/kernel_ptx.py compare /tmp/ptx-base /tmp/ptx-head --rename norm=sum_squares

It compiles each file the way src/backend/cuda/compiler.rs does: the shared
header (common.cuh), a `#line 1 "<name>.cu"` directive, then the file, with
`--gpu-architecture=compute_90 --std=c++17 --include-path=<CUDA headers>`
(compute_90a for the files compiler.rs lists in SM90A_FILES).
The files are found from the `include_str!` lines of the Rust sources under
src/backend/cuda at that revision (the old `("name", include_str!(...))`
table and the `KernelFile { name, source: include_str!(...) }` form).
`compare` checks whole files by name and every `.entry` (kernel) by its
name, wherever it lives, so moving a kernel between files is still checked.
The lib test `backend::cuda::compiler::tests::dump_ptx` writes the PTX the
Rust code itself produces (FERROTRON_PTX_DUMP=DIR), to check this script's
recipe against it.

CUDA headers and libnvrtc: $CUDA_HOME (default /usr/local/cuda), include/ and
lib/ or lib64/ below it.
"""
import argparse
import ctypes
import hashlib
import os
import re
import subprocess
import sys

OLD_TABLE = re.compile(r'\(\s*"(\w+)"\s*,\s*include_str!\(\s*"([^"]+)"\s*\)\s*\)')
NEW_FILE = re.compile(r'name:\s*"(\w+)"\s*,\s*source:\s*include_str!\(\s*"([^"]+)"\s*\)')
COMMON = re.compile(r'include_str!\(\s*"([^"]*common\.cuh)"\s*\)')


def git_files(rev, under):
    out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, under], check=True, capture_output=True, text=True).stdout
    return out.split()


def read(rev, path):
    if rev is None:
        with open(path, encoding="utf-8") as f:
            return f.read()
    return subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout


def rust_files(rev):
    if rev is None:
        found = []
        for root, _, names in os.walk("src/backend/cuda"):
            found += [os.path.join(root, n) for n in names if n.endswith(".rs")]
        return sorted(found)
    return [p for p in git_files(rev, "src/backend/cuda") if p.endswith(".rs")]


def kernel_sources(rev):
    """(common header text, [(name, source text)]) at `rev`."""
    files, common = [], None
    for rs in rust_files(rev):
        text, here = read(rev, rs), os.path.dirname(rs)
        for pattern in (OLD_TABLE, NEW_FILE):
            for name, rel in pattern.findall(text):
                files.append((name, os.path.normpath(os.path.join(here, rel))))
        for rel in COMMON.findall(text):
            common = os.path.normpath(os.path.join(here, rel))
    if common is None or not files:
        sys.exit(f"no kernel files found under src/backend/cuda at {rev or 'the working tree'}")
    return read(rev, common), [(n, read(rev, p)) for n, p in sorted(files)]


def nvrtc(cuda_home):
    for sub in ("lib", "lib64"):
        lib = os.path.join(cuda_home, sub)
        builtins = [f for f in os.listdir(lib) if f.startswith("libnvrtc-builtins.so")] if os.path.isdir(lib) else []
        for f in builtins:  # NVRTC dlopens it by bare name: load it first
            ctypes.CDLL(os.path.join(lib, f), mode=ctypes.RTLD_GLOBAL)
        for f in ("libnvrtc.so.13", "libnvrtc.so"):
            if os.path.exists(os.path.join(lib, f)):
                return ctypes.CDLL(os.path.join(lib, f))
    sys.exit(f"libnvrtc not found under {cuda_home}/lib or lib64 (set CUDA_HOME)")


def compile_ptx(lib, src, name, options):
    prog = ctypes.c_void_p()
    check = lambda rc, what: rc == 0 or sys.exit(f"{what} failed ({rc}) on {name}")
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None), "nvrtcCreateProgram")
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    if rc != 0:
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        sys.exit(f"NVRTC failed on {name}:\n{log.value.decode()}")
    size = ctypes.c_size_t()
    check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
    buf = ctypes.create_string_buffer(size.value)
    check(lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return buf.value.decode()


# Files with sm_90a-only instructions (wgmma), as in compiler.rs.
SM90A_FILES = {"attention_wgmma"}


def dump(args):
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    lib = nvrtc(cuda_home)
    common, files = kernel_sources(args.rev)
    os.makedirs(args.out, exist_ok=True)
    for name, body in files:
        arch = "compute_90a" if name in SM90A_FILES else "compute_90"
        options = [f"--gpu-architecture={arch}", "--std=c++17", f"--include-path={os.path.join(cuda_home, 'include')}"]
        ptx = compile_ptx(lib, f'{common}\n#line 1 "{name}.cu"\n{body}', f"{name}.cu", options)
        with open(os.path.join(args.out, f"{name}.ptx"), "w", encoding="utf-8") as f:
            f.write(ptx)
        print(f"{name:<16} {hashlib.sha256(ptx.encode()).hexdigest()[:16]}  {len(entries(ptx))} kernels")


def entries(ptx):
    """Kernel name -> its PTX text, from `.entry NAME(` to the next entry."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\.(?:visible|weak)?\s*\.entry\s+(\w+)\(", ptx, re.M)]
    bounds = starts + [(len(ptx), None)]
    return {name: ptx[s:bounds[i + 1][0]] for i, (s, name) in enumerate(starts)}


def load(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".ptx"):
            with open(os.path.join(folder, f), encoding="utf-8") as fh:
                out[f[:-4]] = fh.read()
    return out


def compare(args):
    a, b = load(args.a), load(args.b)
    for pair in args.rename:  # a file renamed between the two dumps
        old, new = pair.split("=")
        if old in a:
            a[new] = a.pop(old)
    ka = {k: v for ptx in a.values() for k, v in entries(ptx).items()}
    kb = {k: v for ptx in b.values() for k, v in entries(ptx).items()}
    bad = [f"file {n}: differs" for n in sorted(set(a) & set(b)) if a[n] != b[n]]
    bad += [f"file {n}: only in {args.a}" for n in sorted(set(a) - set(b))]
    bad += [f"file {n}: only in {args.b}" for n in sorted(set(b) - set(a))]
    bad += [f"kernel {k}: differs" for k in sorted(set(ka) & set(kb)) if ka[k] != kb[k]]
    bad += [f"kernel {k}: missing from one side" for k in sorted(set(ka) ^ set(kb))]
    same_files = sum(a[n] == b[n] for n in set(a) & set(b))
    print(f"{len(a)} / {len(b)} files, {same_files} identical; {len(ka)} / {len(kb)} kernels, {sum(ka[k] == kb.get(k) for k in ka)} identical")
    for line in bad:
        print("  " + line)
    sys.exit(1 if bad else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="PTX of every kernel file at a revision")
    d.add_argument("--rev", help="git revision (default: the working tree)")
    d.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="two dumps: same files, same kernels, byte for byte")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="file OLD of the first dump is NEW in the second")
    args = p.parse_args()
    dump(args) if args.cmd == "dump" else compare(args)


if __name__ == "__main__":
    main()
