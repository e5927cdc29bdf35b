//! Noise as a pure function of seeds (spec §6.3): particle `i`'s noise depends only on the run
//! seed, the stream it belongs to and its own particle seed — never on the rank, the batch split
//! or how many draws came before. That is what makes 1, 2 or 4 ranks produce the same particles.

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

/// Independent uses of randomness get distinct streams, so their draws never collide.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Stream {
    /// Generator noise of alignment particles (gen and ref seeds of §6.3).
    Particle = 1,
    /// Pretraining minibatches and their noise.
    Pretrain = 2,
    /// Reference-pool sampling and pool minibatch indices.
    RefPool = 3,
    /// Evaluation samples and the median-heuristic subsample.
    Eval = 4,
    /// Data sets (8-gaussians draws).
    Data = 5,
    /// Parameter initialisation.
    Init = 6,
    /// Black-box (NES) gradient perturbations.
    Nes = 7,
    /// The procedural image dataset.
    Shapes = 8,
    /// The order in which conditions (classes) are visited (spec §6.2).
    Conditions = 9,
}

/// SplitMix64 finaliser: a bijective mix, so distinct inputs give distinct 64-bit keys.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator for `(run seed, stream, key)`.
pub fn rng(seed: u64, stream: Stream, key: u64) -> StdRng {
    StdRng::seed_from_u64(mix(mix(mix(seed) ^ stream as u64) ^ key))
}

/// One standard-normal row of `dim` values per particle seed, concatenated row-major.
pub fn normal_rows(seed: u64, stream: Stream, particle_seeds: impl Iterator<Item = u64>, dim: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for ps in particle_seeds {
        let mut r = rng(seed, stream, ps);
        out.extend((0..dim).map(|_| r.sample::<f32, _>(StandardNormal)));
    }
    out
}

/// `n × dim` standard normals from one generator (for bulk draws that need no per-row identity).
pub fn normal_block(r: &mut StdRng, n: usize, dim: usize) -> Vec<f32> {
    (0..n * dim).map(|_| r.sample::<f32, _>(StandardNormal)).collect()
}
