//! Simple statistics of token streams.

use std::collections::HashMap;

/// Entropy in nats of the unigram (single-token frequency) distribution.
///
/// This is the loss of the best model that ignores context, so a trained
/// language model's loss should fall well below it; the trainer prints it as
/// a baseline. Returns 0 for an empty stream.
pub fn unigram_entropy(tokens: &[u32]) -> f64 {
    if tokens.is_empty() {
        return 0.0;
    }
    let n = tokens.len() as f64;
    counts(tokens)
        .into_iter()
        .filter(|&c| c > 0)
        .map(|c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// Token counts; a dense table for small vocabularies (fast), a map otherwise.
fn counts(tokens: &[u32]) -> Vec<u64> {
    let max = tokens.iter().copied().max().unwrap_or(0) as usize;
    if max < 1 << 20 {
        let mut c = vec![0u64; max + 1];
        for &t in tokens {
            c[t as usize] += 1;
        }
        c
    } else {
        let mut m: HashMap<u32, u64> = HashMap::new();
        for &t in tokens {
            *m.entry(t).or_default() += 1;
        }
        m.into_values().collect()
    }
}
