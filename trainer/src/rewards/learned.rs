//! The learned, differentiable image reward (the analogue of an aesthetic predictor on CLIP
//! features, spec §7): a small convolutional encoder trained by the project on the procedural
//! dataset, whose L2-normalised embedding is the particle space of image FAV, plus a linear
//! scoring head on that embedding. A class head trains the embedding alongside the score, so it
//! carries what a sample is, not only how it scores.

use super::{FeatureMap, ImageReward, Reward};
use crate::activation::silu;
use crate::data::shapes::{self, images, CLASSES};
use crate::data::Condition;
use crate::models::image::downsampling_convs;
use crate::noise::{self, Stream};
use crate::tensors::{read, scalar, DeviceError};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use std::ops::ControlFlow;

/// Embedding width: the dimension of image particles.
pub const EMBED: usize = 64;

#[derive(Module, Debug)]
pub struct RewardModel {
    pub convs: Vec<Conv2d>,
    pub embed: Linear,
    /// Linear scoring head on the normalised embedding: the reward.
    pub score: Linear,
    /// Class logits (training signal for the embedding only).
    pub classes: Linear,
}

impl RewardModel {
    pub fn new(device: &Device) -> Self {
        Self {
            convs: downsampling_convs(&[3, 32, 64, 64], device),
            embed: LinearConfig::new(64 * 4 * 4, EMBED).init(device),
            score: LinearConfig::new(EMBED, 1).init(device),
            classes: LinearConfig::new(EMBED, CLASSES.len()).init(device),
        }
    }

    /// `[n, 3, 32, 32]` in [−1, 1] → L2-normalised embeddings `[n, EMBED]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = x;
        for c in &self.convs {
            h = silu(c.forward(h));
        }
        let n = h.dims()[0];
        let e = self.embed.forward(h.reshape([n, 64 * 4 * 4]));
        let norm = e.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-6);
        e / norm
    }

    /// The reward of embeddings `[n, EMBED]`: `[n, 1]`.
    pub fn reward_of_features(&self, f: Tensor<2>) -> Tensor<2> {
        self.score.forward(f)
    }
}

/// φ of the learned reward (§7): images (flattened `[3, 32, 32]` rows) → the encoder's
/// L2-normalised embedding. The encoder is frozen and plain; gradients pass through it to the
/// images when they carry a graph.
pub struct Embedding(pub RewardModel);

impl FeatureMap for Embedding {
    fn features(&self, samples: Tensor<2>) -> Tensor<2> {
        let n = samples.dims()[0];
        self.0.features(samples.reshape([n, 3, shapes::SIZE, shapes::SIZE]))
    }
}

/// The learned reward on its particles: the linear score head on encoder embeddings,
/// differentiable (65 numbers).
pub struct ScoreHead {
    head: Linear,
}

impl ScoreHead {
    pub fn new(model: &RewardModel) -> Self {
        Self { head: model.score.clone() }
    }
}

impl Reward for ScoreHead {
    fn value(&self, x: &Tensor<2>, _: Condition) -> Result<Tensor<2>, DeviceError> {
        Ok(self.head.forward(x.clone()))
    }

    fn grad(&self, x: &Tensor<2>, _: Condition) -> Option<Tensor<2>> {
        Some(super::autodiff_grad(x, |f| self.head.forward(f)))
    }
}

/// `learned`: the encoder's embedding is the particle (§7), the score head the reward.
pub fn reward(model: &RewardModel) -> ImageReward {
    ImageReward {
        features: std::rc::Rc::new(Embedding(model.clone())),
        reward: std::rc::Rc::new(ScoreHead::new(model)),
        // The encoder's 32×16×16, 64×8×8, 64×4×4 maps (conv and SiLU each) and the embedding.
        activation_floats: 2 * (8192 + 4096 + 1024) + 2 * EMBED,
    }
}

/// How well the trained model does on held-out images.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct RewardFit {
    /// Class accuracy of the embedding's class head.
    pub accuracy: f64,
    /// Fraction of the aesthetic score's variance the reward explains.
    pub r2: f64,
}

/// Train the reward model on the dataset of `seed` (images from index 1 000 000 up, so they never
/// overlap a generator's pretraining images) with Adam; `progress(step, loss)`, whose `Break`
/// stops it (then `None`); `Err` when the device failed.
pub fn train(
    seed: u64,
    steps: usize,
    batch: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, f64) -> ControlFlow<()>,
) -> Result<Option<(RewardModel, RewardFit)>, DeviceError> {
    let ad = device.clone().autodiff();
    device.seed(noise::rng(seed, Stream::Init, 7).random());
    let mut model = RewardModel::new(&ad);
    let mut optim = AdamConfig::new().init();
    let k = CLASSES.len();
    for step in 0..steps {
        let mut r = noise::rng(seed, Stream::Shapes, (1 << 50) | step as u64);
        let idx: Vec<u64> = (0..batch).map(|_| 1_000_000 + r.random_range(0..200_000u64)).collect();
        let (labels, px, scores) = shapes::pick(seed, &idx);
        let x = images(px, batch, &ad);
        let f = model.features(x);
        let pred = model.reward_of_features(f.clone()).reshape([batch]);
        let target = Tensor::<1>::from_data(TensorData::new(scores, [batch]), &ad);
        let mse = (pred - target).powf_scalar(2.0).mean();
        let onehot = Tensor::<1, Int>::from_data(
            TensorData::new(labels.iter().map(|&c| c as i64).collect::<Vec<_>>(), [batch]),
            &ad,
        )
        .one_hot(k)
        .float();
        let ce = (log_softmax(model.classes.forward(f), 1) * onehot).sum().neg().div_scalar(batch as f64);
        let loss = mse.mul_scalar(10.0) + ce;
        let lv = scalar(&loss)?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        if progress(step + 1, lv).is_break() {
            return Ok(None);
        }
    }
    let model = model.valid();
    let fit = evaluate(&model, seed, device)?;
    Ok(Some((model, fit)))
}

/// Accuracy and R² on 1 000 held-out images (indices from 2 000 000).
pub fn evaluate(model: &RewardModel, seed: u64, device: &Device) -> Result<RewardFit, DeviceError> {
    let n = 1000;
    let idx: Vec<u64> = (2_000_000..2_000_000 + n as u64).collect();
    let (labels, px, scores) = shapes::pick(seed, &idx);
    let f = model.features(images(px, n, device));
    let pred = read(&model.reward_of_features(f.clone()))?;
    let logits = read(&model.classes.forward(f))?;
    let k = CLASSES.len();
    let right = (0..n)
        .filter(|&i| {
            let row = &logits[i * k..(i + 1) * k];
            let best = (0..k).max_by(|&a, &b| row[a].total_cmp(&row[b])).expect("classes");
            best == labels[i]
        })
        .count();
    let mean = scores.iter().sum::<f32>() / n as f32;
    let ss_tot: f64 = scores.iter().map(|&s| f64::from((s - mean).powi(2))).sum();
    let ss_res: f64 = scores.iter().zip(&pred).map(|(&s, &p)| f64::from((s - p).powi(2))).sum();
    Ok(RewardFit { accuracy: right as f64 / n as f64, r2: 1.0 - ss_res / ss_tot })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::to_vec;

    /// A short training run already separates classes and predicts the score far above chance
    /// (10 % accuracy, R² 0): the reward is learnable from pixels.
    #[test]
    fn a_short_training_learns_classes_and_scores() {
        let dev = Device::flex();
        let (model, fit) =
            train(0, 800, 64, &dev, &mut |_, _| ControlFlow::Continue(())).unwrap().expect("nothing stops it");
        eprintln!("reward model after 800 steps of 64: {fit:?}");
        assert!(fit.accuracy > 0.5 && fit.r2 > 0.5, "{fit:?}");
        // Embeddings are unit vectors.
        let (_, px) = shapes::batch(0, 0, 4);
        let f = to_vec(&model.features(images(px, 4, &dev)));
        for row in f.chunks(EMBED) {
            let n: f32 = row.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-4, "{n}");
        }
    }
}
