//! The typed launchers against the kernels they launch: each `kernel!`
//! struct must list the parameters of its `extern "C" __global__` function
//! in the `.cu` text, in order, with the matching Rust type, and every
//! kernel of a `.cu` file must have a launcher. (The compiler checks each
//! launch against its struct; this checks each struct against the CUDA.)

use super::super::kernels::Signature;
use super::{FILES, KERNELS};

/// A kernel declared in a `.cu` file: its name as written (a macro-made
/// name keeps its `##`) and the Rust types its parameters need.
struct CudaKernel {
    name: String,
    params: Vec<String>,
}

/// The Rust type a CUDA parameter is passed as: pointers as `u64`, scalars
/// by width, structs by their `#[repr(C)]` mirror of the same name (by
/// value, also as `const __grid_constant__`).
fn rust_type(param: &str) -> String {
    if param.contains('*') {
        return "u64".into();
    }
    let words: Vec<&str> = param.split_whitespace().filter(|w| *w != "const" && *w != "__grid_constant__").collect();
    let ty = words[..words.len() - 1].join(" ");
    match ty.as_str() {
        "int" => "i32".into(),
        "unsigned" | "unsigned int" => "u32".into(),
        "float" => "f32".into(),
        "double" => "f64".into(),
        "i64" | "long long" => "i64".into(),
        other => other.into(),
    }
}

/// Text from `open` (an opening parenthesis) to its closing one.
fn parenthesized(text: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, ch) in text[open..].char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after byte {open}")
}

/// Every `__global__` function of a `.cu` text.
fn cuda_kernels(source: &str) -> Vec<CudaKernel> {
    let text = source.replace("\\\n", " "); // macro line continuations
    let mut out = Vec::new();
    for (at, _) in text.match_indices("__global__") {
        let mut rest = text[at + "__global__".len()..].trim_start();
        rest = rest.strip_prefix("void").unwrap_or(rest).trim_start();
        if rest.starts_with("__launch_bounds__") {
            let open = rest.find('(').unwrap();
            let bounds = parenthesized(rest, open);
            rest = rest[open + bounds.len() + 2..].trim_start();
        }
        let open = rest.find('(').expect("a kernel's parameter list");
        let name = rest[..open].trim().to_string();
        let params = parenthesized(rest, open).split(',').map(str::trim).filter(|p| !p.is_empty()).map(rust_type).collect();
        out.push(CudaKernel { name, params });
    }
    out
}

/// The `.cu` declaration of kernel `name`: the function of that name, or
/// the macro template whose `##` prefix is longest among those it starts with.
fn declaration<'a>(kernels: &'a [CudaKernel], name: &str) -> Option<&'a CudaKernel> {
    if let Some(k) = kernels.iter().find(|k| k.name == name) {
        return Some(k);
    }
    kernels
        .iter()
        .filter_map(|k| k.name.split_once("##").map(|(prefix, _)| (prefix, k)))
        .filter(|(prefix, _)| name.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, k)| k)
}

fn signatures() -> impl Iterator<Item = &'static Signature> {
    KERNELS.iter().flat_map(|sigs| sigs.iter())
}

#[test]
fn kernel_structs_match_cu() {
    let mut checked = 0;
    for sig in signatures() {
        let kernels = cuda_kernels(sig.file.source);
        for name in sig.names {
            let k = declaration(&kernels, name).unwrap_or_else(|| panic!("{name}: no such kernel in {}.cu", sig.file.name));
            assert_eq!(k.params, sig.params, "{name} ({}.cu): CUDA parameters vs the kernel! struct", sig.file.name);
            checked += 1;
        }
    }
    assert!(checked >= 69, "only {checked} kernels checked");
}

#[test]
fn every_kernel_has_a_launcher() {
    for file in FILES {
        let names: Vec<&str> = signatures().filter(|s| s.file.name == file.name).flat_map(|s| s.names.iter().copied()).collect();
        for k in cuda_kernels(file.source) {
            match k.name.split_once("##") {
                // A macro template: some launcher must start with its prefix.
                Some((prefix, _)) => assert!(names.iter().any(|n| n.starts_with(prefix)), "{}.cu: no launcher for {}", file.name, k.name),
                None => assert!(names.contains(&k.name.as_str()), "{}.cu: kernel {} has no kernel! struct", file.name, k.name),
            }
        }
    }
}

#[test]
fn parses_templates_and_launch_bounds() {
    let src = "extern \"C\" __global__ void __launch_bounds__(128) \\\n  f_d##D(const bf16* q, AttnDims a, int Tp) {}\n\
               extern \"C\" __global__ void g_k(float* p, const void* g, int dtg, i64 n, unsigned v, float lr) {}";
    let ks = cuda_kernels(src);
    assert_eq!(ks.len(), 2);
    assert_eq!(declaration(&ks, "f_d64").unwrap().params, ["u64", "AttnDims", "i32"]);
    assert_eq!(declaration(&ks, "g_k").unwrap().params, ["u64", "u64", "i32", "i64", "u32", "f32"]);
    assert!(declaration(&ks, "h_k").is_none());
}
