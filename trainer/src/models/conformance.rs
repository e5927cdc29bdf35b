//! What every generator must do, checked the same way for each: the tests run these over every
//! registered family and over SANA-Sprint loaded from its files (`trainer/tests/models.rs`), as
//! `comm`'s suite runs over every collective. A generator comes from `make(device)` (a family's
//! `init`, or a loader). Each check returns what went wrong instead of panicking, so a failure
//! names the generator and the property.

use super::Generator;
use crate::data::Condition;
use crate::lora::{self, LoraConfig, Targets};
use crate::noise::{self, Stream};
use crate::tensors::{matrix, to_vec};
use burn::tensor::{Device, Tensor};

fn noise<G: Generator>(g: &G, n: usize, key: u64, device: &Device) -> Tensor<2> {
    let dim = g.noise_dim();
    matrix(noise::normal_rows(key, Stream::Eval, 0..n as u64, dim), n, dim, device)
}

fn differ(what: &str, a: &[f32], b: &[f32]) -> Result<(), String> {
    if a == b {
        Ok(())
    } else {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        Err(format!("{what}: not the same bits (largest difference {worst:e})"))
    }
}

/// The same noise and condition give the same samples, bit for bit; other noise other samples;
/// one row per noise row, all finite.
pub fn same_seed_same_sample<G: Generator>(
    make: &dyn Fn(&Device) -> G,
    steps: usize,
    cond: Condition,
) -> Result<(), String> {
    let device = Device::flex();
    let g = make(&device);
    let a = to_vec(&g.sample(noise(&g, 3, 1, &device), cond, steps, None));
    let b = to_vec(&g.sample(noise(&g, 3, 1, &device), cond, steps, None));
    differ("two samples of the same noise", &a, &b)?;
    if a.len() % 3 != 0 || a.iter().any(|v| !v.is_finite()) {
        return Err(format!("{} values for 3 samples, or non-finite ones", a.len()));
    }
    let c = to_vec(&g.sample(noise(&g, 3, 2, &device), cond, steps, None));
    if a == c {
        return Err("other noise gave the same samples".into());
    }
    Ok(())
}

/// Adapters on every layer (LoRA from outside): the adapted model starts as its base, bit for
/// bit, and so does its merge; once the adapters move, the model moves while the base — FAV's
/// reference, the adapters off — stays what it was.
pub fn adapters_start_at_the_base<G: Generator>(
    make: &dyn Fn(&Device) -> G,
    steps: usize,
    cond: Condition,
) -> Result<(), String> {
    let device = Device::flex();
    let base = make(&device);
    let layers = lora::layers(&base);
    if layers.is_empty() {
        return Err("no layer can carry an adapter".into());
    }
    let targets = Targets::parse(&["all".to_string()], &layers)?;
    let z = noise(&base, 4, 3, &device);
    let before = to_vec(&base.sample(z.clone(), cond, steps, None));
    let cfg_lora = LoraConfig { rank: 2, alpha: 4.0, init: lora::LoraInit::Kaiming };
    let adapted = lora::adapt(base.clone(), cfg_lora, &targets, 7, &device);
    differ("adapted at init vs base", &to_vec(&adapted.sample(z.clone(), cond, steps, None)), &before)?;
    differ("merged at init vs base", &to_vec(&lora::merged(&adapted).sample(z.clone(), cond, steps, None)), &before)?;
    let peft = lora::peft_tensors(&adapted).map_err(|e| e.to_string())?;
    if peft.len() != 2 * layers.len() {
        return Err(format!("{} PEFT tensors for {} adapted layers", peft.len(), layers.len()));
    }
    let moved = lora::redraw(adapted, lora::Factor::B, lora::Draw::Constant(0.05));
    let after = to_vec(&moved.sample(z.clone(), cond, steps, None));
    if after == before {
        return Err("moving the adapters does not change the samples".into());
    }
    differ("the base after its adapted copy moved", &to_vec(&base.sample(z, cond, steps, None)), &before)
}

/// Weights written by the project load back into a fresh model and give the same samples, bit
/// for bit; a file of another shape is refused naming the tensor.
pub fn import_round_trip<G: Generator>(
    make: &dyn Fn(&Device) -> G,
    steps: usize,
    cond: Condition,
) -> Result<(), String> {
    let device = Device::flex();
    device.seed(1);
    let a = make(&device);
    device.seed(2);
    let fresh = make(&device);
    let bytes = crate::weights::to_bytes(&a)?;
    let b = crate::weights::from_bytes(fresh, &bytes, "round trip").map_err(|e| e.to_string())?;
    let z = noise(&a, 2, 4, &device);
    differ(
        "samples after a round trip",
        &to_vec(&b.sample(z.clone(), cond, steps, None)),
        &to_vec(&a.sample(z, cond, steps, None)),
    )
}

/// Samples carry the graph: a loss on them gives finite, non-zero gradients to the parameters.
pub fn differentiable<G: Generator>(make: &dyn Fn(&Device) -> G, steps: usize, cond: Condition) -> Result<(), String> {
    let device = Device::flex().autodiff();
    let g = make(&device).train();
    let x = g.sample(noise(&g, 2, 5, &device), cond, steps, None);
    let grads = burn::optim::GradientsParams::from_grads((x.clone() * x).sum().backward(), &g);
    if grads.is_empty() {
        return Err("no parameter got a gradient".into());
    }
    Ok(())
}
