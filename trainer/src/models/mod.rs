//! Generators: burn modules that turn noise (and a condition) into samples in a few
//! differentiable steps. A model knows nothing of ranks, of FAV or of adapters (LoRA is applied
//! from outside, [`crate::lora`]).
//!
//! Each task has its families, registered in one line of its folder: `toy::families!` (2-D
//! points, spec §10.6) and `image::families!` (class-conditional 32×32 images). Adding a family
//! is a module implementing [`Generator`] and [`Family`] in that folder plus its name in that line.

pub mod conformance;
pub mod image;
pub mod mlp;
pub mod sana;
pub mod toy;

use crate::config::Config;
use crate::data::Condition;
use crate::observe::Progress;
use crate::tensors::DeviceError;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use std::ops::RangeInclusive;

/// Noise (and a condition) to samples.
pub trait Generator: Module + Clone + std::fmt::Debug + Send + 'static {
    /// Noise values per sample.
    fn noise_dim(&self) -> usize;

    /// `noise [n, noise_dim]` → samples `[n, values per sample]` (flattened row-major: points,
    /// or images `[3, H, W]`), all of condition `cond`, in `steps` sampling steps (1 for a
    /// one-step family), differentiable through every step — or, with `grad_steps = Some(k)`,
    /// through the last `k` only (DRaFT-K: the state entering them is detached).
    fn sample(&self, noise: Tensor<2>, cond: Condition, steps: usize, grad_steps: Option<usize>) -> Tensor<2>;

    /// Add to `acc` the parameter gradients of `Σ ⟨sample(noise), c⟩`, with `c = cotangent(x)`
    /// computed from the detached sample `x` itself (off the generator's graph). The default
    /// keeps the whole sample's graph; a generator may instead keep only its steps' inputs and
    /// recompute each in the backward pass (gradient checkpointing: the same gradients up to the
    /// order of sums, one step's activations alive at a time).
    fn accumulate_grads(
        &self,
        noise: Tensor<2>,
        cond: Condition,
        steps: usize,
        grad_steps: Option<usize>,
        cotangent: &dyn Fn(Tensor<2>) -> Tensor<2>,
        acc: &mut GradientsAccumulator<Self>,
    ) {
        whole_graph_grads(self, noise, cond, steps, grad_steps, cotangent, acc);
    }
}

/// [`Generator::accumulate_grads`] keeping the whole sample's graph.
pub fn whole_graph_grads<G: Generator>(
    g: &G,
    noise: Tensor<2>,
    cond: Condition,
    steps: usize,
    grad_steps: Option<usize>,
    cotangent: &dyn Fn(Tensor<2>) -> Tensor<2>,
    acc: &mut GradientsAccumulator<G>,
) {
    let x = g.sample(noise, cond, steps, grad_steps);
    let c = cotangent(x.clone().detach().without_autodiff());
    acc.accumulate(g, GradientsParams::from_grads((x * c.autodiff()).sum().backward(), g));
}

/// A registered generator family: how a base is made when none is named.
pub trait Family: Generator + Sized {
    /// Its name in the config (`model.family`, `image.family`).
    const NAME: &'static str;
    /// The sampling steps it can take.
    const STEPS: RangeInclusive<usize>;
    /// Floats one sample's sampling step keeps for the backward pass (the outputs of its
    /// layers, counted from the architecture): what `fav plan` multiplies by the batch.
    const ACTIVATION_FLOATS: usize;
    /// A freshly initialised generator (initialisation draws from the device generator).
    fn init(cfg: &Config, device: &Device) -> Self;
    /// Everything that shapes a pretrained base: its cache key.
    fn cache_key(cfg: &Config) -> serde_json::Value;
    /// Steps [`Family::pretrain`] takes (for progress reports).
    fn pretrain_steps(cfg: &Config) -> usize;
    /// Train a base from scratch; `None` when `progress` asked to stop, `Err` when the device
    /// failed (its readbacks: the losses, the evaluations).
    fn pretrain(cfg: &Config, device: &Device, progress: Progress) -> Result<Option<Self>, DeviceError>;
}

/// Code generic over the family, run by name through a registry's `with_family`.
pub trait FamilyVisitor {
    type Output;
    fn visit<F: Family>(self) -> Self::Output;
}

/// A task's registry: `NAMES` and `with_family(name, visitor)` over the listed families.
macro_rules! families {
    ($($family:ty),+ $(,)?) => {
        /// The config names of the registered families.
        pub const NAMES: &[&str] = &[$(<$family as $crate::models::Family>::NAME),+];

        /// Run `visitor` with the family called `name`; `None` for an unknown name.
        pub fn with_family<V: $crate::models::FamilyVisitor>(name: &str, visitor: V) -> Option<V::Output> {
            $(if name == <$family as $crate::models::Family>::NAME {
                return Some(visitor.visit::<$family>());
            })+
            None
        }
    };
}
pub(crate) use families;

/// `steps` sampling steps of `t_k = linspace(1, 0, N+1)`: `(t_k, t_{k+1})` pairs, the grid of
/// MeanFlow sampling (§10.6) for every MeanFlow family.
pub fn time_grid(steps: usize) -> impl Iterator<Item = (f64, f64)> {
    (0..steps).map(move |k| (1.0 - k as f64 / steps as f64, 1.0 - (k + 1) as f64 / steps as f64))
}
