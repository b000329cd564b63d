//! Which vector instruction set the hot host kernels (the offloaded
//! optimizer step) are compiled for, chosen once at run time.
//!
//! The binary is built for baseline x86-64 (SSE2) so that it runs on any
//! host; the kernels that bound offloaded training are compiled a second
//! and third time with AVX2 and AVX-512 enabled (`#[target_feature]`) and
//! picked here by CPU detection. Only vector width changes: every variant
//! does the same IEEE operations per element in the same order, and FMA is
//! never enabled (Rust does not contract `a * b + c` anyway), so all
//! variants give the same bits; tests run each one the CPU has against the
//! scalar reference.

use std::sync::OnceLock;

/// Ordered narrowest first: a CPU that runs one variant runs all before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub enum Isa {
    /// Whatever the build target has (SSE2 on x86-64; any other arch).
    Baseline,
    Avx2,
    /// AVX-512 F/BW/DQ/VL (Skylake-SP and later, Zen 4 and later).
    Avx512,
}

impl Isa {
    /// The variant the kernels run: the widest this CPU has, or the one
    /// `FERROTRON_CPU_ISA` (baseline | avx2 | avx512) names, if the CPU has
    /// it (to compare them on a host, or to avoid one slow there).
    /// Decided once.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let available = Isa::available();
            let widest = *available.last().expect("baseline is always available");
            let Ok(name) = std::env::var("FERROTRON_CPU_ISA") else { return widest };
            available.iter().copied().find(|isa| isa.name() == name).unwrap_or_else(|| {
                let names: Vec<_> = available.iter().map(|isa| isa.name()).collect();
                eprintln!("warning: FERROTRON_CPU_ISA={name} is not one this CPU runs ({}); using {}", names.join(", "), widest.name());
                widest
            })
        })
    }

    /// Every variant this CPU runs, narrowest first (tests and benchmarks
    /// compare them).
    pub fn available() -> Vec<Isa> {
        let mut out = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                out.push(Isa::Avx2);
            }
            let avx512 = ["avx512f", "avx512bw", "avx512dq", "avx512vl"];
            if avx512.iter().all(|f| x86_feature(f)) {
                out.push(Isa::Avx512);
            }
        }
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// `is_x86_feature_detected!` wants a literal; this maps the few we use.
#[cfg(target_arch = "x86_64")]
fn x86_feature(name: &str) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match name {
        "avx512f" => has!("avx512f"),
        "avx512bw" => has!("avx512bw"),
        "avx512dq" => has!("avx512dq"),
        "avx512vl" => has!("avx512vl"),
        _ => false,
    }
}

/// Defines `$name(isa, args..)`, which runs `$body(args..)` compiled for
/// `isa`. `$body` must be `#[inline(always)]` so it is compiled into each
/// variant with that variant's instructions.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) => $body:path) => {
        $(#[$m])*
        $vis fn $name(isa: $crate::backend::cpu::isa::Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,avx512f,avx512bw,avx512dq,avx512vl")]
            fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            use $crate::backend::cpu::isa::Isa;
            // A variant the CPU lacks falls back to the best it has, so a
            // caller naming one can never run unsupported instructions.
            let isa = isa.min(Isa::best());
            match isa {
                // SAFETY: `isa` ≤ `Isa::best()`, which CPU detection found.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;
