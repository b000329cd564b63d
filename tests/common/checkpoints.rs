//! Checkpoint helpers shared by the offload tests: the latest checkpoint of
//! a run, and two checkpoints compared tensor by tensor, bit for bit.
#![allow(dead_code)]

use ferrotron::ckpt;
use std::path::Path;

pub fn last_ckpt(run: &Path) -> ckpt::Loaded {
    ckpt::load(&ckpt::latest(run).unwrap().unwrap()).unwrap()
}

/// Every model and optimizer tensor of two checkpoints, bit for bit.
pub fn assert_same_state(a: &ckpt::Loaded, b: &ckpt::Loaded, what: &str) {
    let bits = |d: &[f32]| d.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (x, y) in [(&a.model, &b.model), (&a.optim, &b.optim)] {
        assert_eq!(x.len(), y.len(), "{what}: tensor counts");
        for (s, t) in x.iter().zip(y.iter()) {
            assert_eq!(s.name, t.name);
            assert!(bits(&s.data) == bits(&t.data), "{what}: {} differs", s.name);
        }
    }
    assert_eq!(a.optim_u8.len(), b.optim_u8.len());
    for (s, t) in a.optim_u8.iter().zip(&b.optim_u8) {
        assert!(s.name == t.name && s.data == t.data, "{what}: {} differs", s.name);
    }
    assert_eq!(a.manifest.optimizer, b.manifest.optimizer, "{what}: optimizer meta");
}
