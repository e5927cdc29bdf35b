//! Pretraining the one-step image generator adversarially (hinge-loss GAN with a projection
//! discriminator), on the procedural dataset. Noise and data draws are pure functions of
//! `(seed, step)`.

use super::gan::{ConvGenerator, LATENT};
use crate::config::Config;
use crate::data::shapes::{self, images, one_hot, CLASSES, PIXELS};
use crate::models::Family;
use crate::noise::{self, Stream};
use crate::observe::Progress;
use crate::tensors::{scalar, DeviceError};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{leaky_relu, relu};
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use std::ops::ControlFlow;
use std::ops::RangeInclusive;

impl Family for ConvGenerator {
    const NAME: &'static str = "gan";
    const STEPS: RangeInclusive<usize> = 1..=1;
    // fc 64×4×4, then 32×8×8, 16×16×16, 16×32×32 blocks (upsampled input, conv, norm, SiLU),
    // the RGB output and tanh.
    const ACTIVATION_FLOATS: usize = 3 * 1024 + 4 * (2048 + 4096 + 16384) + 2 * PIXELS;

    fn init(_: &Config, device: &Device) -> Self {
        Self::new(device)
    }

    fn cache_key(cfg: &Config) -> serde_json::Value {
        super::cache_key("conv-gan", cfg, cfg.image.gan_steps, cfg.image.gan_batch)
    }

    fn pretrain_steps(cfg: &Config) -> usize {
        cfg.image.gan_steps
    }

    fn pretrain(cfg: &Config, device: &Device, progress: Progress) -> Result<Option<Self>, DeviceError> {
        let i = &cfg.image;
        tracing::info!(steps = i.gan_steps, "pretraining the base generator (GAN)");
        train(i.pretrain_seed, i.gan_steps, i.gan_batch, device, &mut |s, l| progress(s, l.g))
    }
}

/// Images the generator learns from: indices `0..TRAIN_IMAGES` of the dataset.
pub const TRAIN_IMAGES: u64 = 500_000;

/// Projection discriminator: conv features `h`, score `w·h + ⟨embed(class), h⟩`.
#[derive(Module, Debug)]
pub struct Discriminator {
    pub convs: Vec<Conv2d>,
    pub feat: Linear,
    pub out: Linear,
    pub embed: Linear,
}

impl Discriminator {
    pub fn new(device: &Device) -> Self {
        Self {
            convs: super::downsampling_convs(&[3, 16, 32, 64], device),
            feat: LinearConfig::new(64 * 16, 128).init(device),
            out: LinearConfig::new(128, 1).init(device),
            embed: LinearConfig::new(CLASSES.len(), 128).with_bias(false).init(device),
        }
    }

    /// `x: [n, 3, 32, 32]`, `classes: [n, 10]` one-hot → scores `[n, 1]`.
    pub fn forward(&self, x: Tensor<4>, classes: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for c in &self.convs {
            h = leaky_relu(c.forward(h), 0.2);
        }
        let n = h.dims()[0];
        let h = leaky_relu(self.feat.forward(h.reshape([n, 64 * 16])), 0.2);
        self.out.forward(h.clone()) + (self.embed.forward(classes) * h).sum_dim(1)
    }
}

/// Generator noise for `labels.len()` samples of step `step` (`salt` separates draws).
pub fn noise(seed: u64, step: u64, salt: u64, n: usize, device: &Device) -> Tensor<2> {
    let z = noise::normal_rows(seed, Stream::Pretrain, (0..n as u64).map(|i| (salt << 56) | (step << 20) | i), LATENT);
    Tensor::from_data(TensorData::new(z, [n, LATENT]), device)
}

/// Losses of one step, for progress reports.
#[derive(Clone, Copy, Debug)]
pub struct GanLosses {
    pub d: f64,
    pub g: f64,
}

/// Train a generator for `steps` steps of `batch` images; `progress(step, losses)`, whose `Break`
/// stops it (then `None`); `Err` when the device failed. Parameters
/// are initialised from the device's generator, seeded here: the result is a pure function of
/// `seed` as long as nothing else in the process draws from that device meanwhile.
pub fn train(
    seed: u64,
    steps: usize,
    batch: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, GanLosses) -> ControlFlow<()>,
) -> Result<Option<ConvGenerator>, DeviceError> {
    let ad = device.clone().autodiff();
    device.seed(noise::rng(seed, Stream::Init, 11).random());
    let mut g = ConvGenerator::new(&ad);
    let mut d = Discriminator::new(&ad);
    let adam = || AdamConfig::new().with_beta_1(0.5).with_beta_2(0.999).init();
    let (mut opt_g, mut opt_d) = (adam(), adam());
    let lr = 2e-4;
    for step in 0..steps {
        let mut r = noise::rng(seed, Stream::Pretrain, (1 << 50) | step as u64);
        let idx: Vec<u64> = (0..batch).map(|_| r.random_range(0..TRAIN_IMAGES)).collect();
        let (labels, px, _) = shapes::pick(seed, &idx);
        let real = images(px, batch, &ad);
        let y = one_hot(&labels, &ad);

        // Discriminator: hinge loss on real and (detached) generated images of the same classes.
        let fake = g.forward(noise(seed, step as u64, 1, batch, &ad), y.clone()).detach();
        let d_loss = relu(d.forward(real, y.clone()).neg().add_scalar(1.0)).mean()
            + relu(d.forward(fake, y.clone()).add_scalar(1.0)).mean();
        let dl = scalar(&d_loss)?;
        let grads = GradientsParams::from_grads(d_loss.backward(), &d);
        d = opt_d.step(lr, d, grads);

        // Generator: raise the discriminator's score of fresh samples.
        let fake = g.forward(noise(seed, step as u64, 2, batch, &ad), y.clone());
        let g_loss = d.forward(fake, y).mean().neg();
        let gl = scalar(&g_loss)?;
        let grads = GradientsParams::from_grads(g_loss.backward(), &g);
        g = opt_g.step(lr, g, grads);
        if progress(step + 1, GanLosses { d: dl, g: gl }).is_break() {
            return Ok(None);
        }
    }
    Ok(Some(g.valid()))
}
