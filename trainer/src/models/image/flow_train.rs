//! Pretraining the MeanFlow image generator on the procedural dataset (spec §10.6's objective:
//! logistic-normal (t, r) with r = t half the time, JVP target, adaptive weighting; AdamW with
//! betas (0.9, 0.95), global-norm clip 1.0). Data, noise and times are pure functions of
//! `(seed, step)`.

use super::flow::FlowGenerator;
use super::gan_train::TRAIN_IMAGES;
use crate::config::Config;
use crate::data::shapes::{self, images, one_hot, PIXELS, SIZE};
use crate::models::Family;
use crate::noise::{self, Stream};
use crate::observe::Progress;
use crate::sync::ShareError;
use crate::tensors::DeviceError;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use std::ops::RangeInclusive;

impl Family for FlowGenerator {
    const NAME: &'static str = "meanflow";
    const STEPS: RangeInclusive<usize> = 1..=4;
    // Down blocks 32×16×16, 64×8×8, 64×4×4 and up blocks 32×8×8, 16×16×16, 16×32×32 (conv,
    // norm, bias, SiLU each), the skip concatenations and the output.
    const ACTIVATION_FLOATS: usize = 4 * (8192 + 4096 + 1024 + 2048 + 4096 + 16384) + 8192 + 16384 + 19456 + PIXELS;

    fn init(_: &Config, device: &Device) -> Self {
        Self::new(device)
    }

    /// Sampling steps are not weights: one pretrained network serves every step count.
    fn cache_key(cfg: &Config) -> serde_json::Value {
        super::cache_key("meanflow", cfg, cfg.image.meanflow_steps, cfg.image.meanflow_batch)
    }

    fn pretrain_steps(cfg: &Config) -> usize {
        cfg.image.meanflow_steps
    }

    fn pretrain(cfg: &Config, device: &Device, progress: Progress) -> Result<Option<Self>, DeviceError> {
        let i = &cfg.image;
        tracing::info!(steps = i.meanflow_steps, "pretraining the base generator (MeanFlow)");
        train(i.pretrain_seed, i.meanflow_steps, i.meanflow_batch, device, progress)
    }
}

/// Learning rate: higher than the toy's 3e-4 because the budget is thousands of steps, not a
/// million; with the adaptive weight and the clip the loss stays stable at this rate.
const LR: f64 = 1e-3;

/// Train a generator for `steps` steps of `batch` images; `progress(step, unweighted MSE)`,
/// whose `Break` stops it (then `None`); `Err` when the device failed. Initialisation draws from
/// the device generator, seeded here.
pub fn train(
    seed: u64,
    steps: usize,
    batch: usize,
    device: &Device,
    progress: Progress,
) -> Result<Option<FlowGenerator>, DeviceError> {
    let ad = device.clone().autodiff();
    device.seed(noise::rng(seed, Stream::Init, 12).random());
    let mut g = FlowGenerator::new(&ad);
    let mut optim = AdamWConfig::new().with_beta_1(0.9).with_beta_2(0.95).with_weight_decay(0.0).init();
    for step in 0..steps {
        let mut r = noise::rng(seed, Stream::Pretrain, (3 << 50) | step as u64);
        let idx: Vec<u64> = (0..batch).map(|_| r.random_range(0..TRAIN_IMAGES)).collect();
        let (labels, px, _) = shapes::pick(seed, &idx);
        let x0 = images(px, batch, &ad);
        let keys = (0..batch as u64).map(|i| (3 << 56) | ((step as u64) << 20) | i);
        let z = noise::normal_rows(seed, Stream::Pretrain, keys, PIXELS);
        let x1 = Tensor::<4>::from_data(TensorData::new(z, [batch, 3, SIZE, SIZE]), &ad);
        let (t, r) = times(seed, step, batch, equal_fraction(step, steps), &ad);
        let (loss, mse) = g.loss(x0, x1, t, r, one_hot(&labels, &ad))?;
        let grads = GradientsParams::from_grads(loss.backward(), &g);
        let (grads, _) =
            crate::sync::all_reduce_grads(&g, grads, &fav_comm::SingleProcess, device, 1.0).map_err(|e| match e {
                ShareError::Device(e) => e,
                // One process has no peer to fail.
                ShareError::Comm(e) => unreachable!("one process: {e}"),
            })?;
        g = optim.step(LR, g, grads);
        if progress(step + 1, mse).is_break() {
            return Ok(None);
        }
    }
    Ok(Some(g.valid()))
}

/// Probability that r = t (plain flow matching) at `step`: 1 for the first half of training, then
/// down linearly to 0.5 (the spec's fraction) at the end. MeanFlow's target uses the network's
/// own `du/dt`; started from scratch on 3072-dimensional images it feeds its own roughness back
/// (the MSE grew from 5 to 50–300 here), while a flow-matching start gives a consistent field
/// first (the curriculum of AlphaFlow, arXiv 2510.20771).
fn equal_fraction(step: usize, steps: usize) -> f64 {
    let half = steps / 2;
    if step < half {
        1.0
    } else {
        1.0 - 0.5 * (step - half) as f64 / (steps - half).max(1) as f64
    }
}

/// (t, r): two logistic-normal draws `sigmoid(N(−0.4, 1))`, t = max, r = min, and r = t with
/// probability `equal` (§10.6 uses 0.5).
fn times(seed: u64, step: usize, n: usize, equal: f64, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut rng = noise::rng(seed, Stream::Pretrain, (4 << 40) | step as u64);
    let mut t = Vec::with_capacity(n);
    let mut r = Vec::with_capacity(n);
    for _ in 0..n {
        let ab = noise::normal_block(&mut rng, 1, 2);
        let (a, b) = (sigmoid(ab[0] - 0.4), sigmoid(ab[1] - 0.4));
        let same = rng.random::<f64>() < equal;
        t.push(a.max(b));
        r.push(if same { a.max(b) } else { a.min(b) });
    }
    let col = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [n, 1]), device);
    (col(t), col(r))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
