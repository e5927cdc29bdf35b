//! Evaluating an image generator on fixed seeds: mean and spread of the reward, within-class
//! diversity and class accuracy of the evaluation encoder, and best-of-N sampling from the base —
//! the same seeds for every model, so before/after grids and numbers compare like with like.

use crate::data::shapes::{images, CLASSES, PIXELS};
use crate::data::Condition;
use crate::models::Generator;
use crate::noise::{self, Stream};
use crate::rewards::learned::RewardModel;
use crate::rewards::ImageReward;
use crate::tensors::{matrix, read, DeviceError};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Reward and diversity of a set of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageEval {
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Mean pairwise Euclidean distance of encoder embeddings within a class, averaged over
    /// classes.
    pub diversity: f64,
    /// Fraction of samples the encoder's class head assigns to the class they were drawn for:
    /// whether alignment kept what the samples are (diversity alone does not see a class turning
    /// into another class's shape).
    #[serde(default)]
    pub class_accuracy: f64,
}

/// Evaluation noise of sample `i` of `class`, candidate `j` (best-of-N draws `j = 0..N`; plain
/// evaluation is `j = 0`): the same for every model, so before/after grids share seeds.
fn eval_latents(seed: u64, class: usize, per_class: usize, j: usize, dim: usize, device: &Device) -> Tensor<2> {
    let keys = (0..per_class as u64).map(|i| ((class as u64) << 40) | ((j as u64) << 20) | i);
    matrix(noise::normal_rows(seed, Stream::Eval, keys, dim), per_class, dim, device)
}

/// What an evaluation needs besides the generator: the reward (its feature map and head), the
/// evaluation encoder, the fixed seeds.
pub struct Judge<'a> {
    pub reward: &'a ImageReward,
    pub encoder: &'a RewardModel,
    pub seed: u64,
    pub per_class: usize,
    pub sample_steps: usize,
    pub device: Device,
}

impl Judge<'_> {
    /// `per_class` images of every class from `gen` (class-major), and their rewards.
    fn sample_all<G: Generator>(&self, gen: &G, j: usize) -> Result<(Vec<f32>, Vec<f32>), DeviceError> {
        let n = self.per_class;
        let mut px = Vec::with_capacity(CLASSES.len() * n * PIXELS);
        let mut r = Vec::with_capacity(CLASSES.len() * n);
        for class in 0..CLASSES.len() {
            let cond = Condition::Class(class);
            let z = eval_latents(self.seed, class, n, j, gen.noise_dim(), &self.device);
            let samples = gen.sample(z, cond, self.sample_steps, None);
            let x = self.reward.features.features(samples.clone());
            r.extend(read(&self.reward.reward.value(&x, cond)?)?);
            px.extend(read(&samples)?);
        }
        Ok((px, r))
    }

    /// Evaluate `gen` on the fixed evaluation seeds: the numbers and the class-major pixels.
    pub fn evaluate<G: Generator>(&self, gen: &G) -> Result<(ImageEval, Vec<f32>), DeviceError> {
        let (px, r) = self.sample_all(gen, 0)?;
        Ok((measure(&px, &r, self.per_class, self.encoder, &self.device)?, px))
    }

    /// Best-of-N sampling from `gen` for each N of `ns`: every evaluation slot keeps the
    /// best-rewarded of its first N candidates. N = 1 is plain evaluation.
    pub fn best_of_n<G: Generator>(&self, gen: &G, ns: &[usize]) -> Result<Vec<(usize, ImageEval)>, DeviceError> {
        let mut best: Option<(Vec<f32>, Vec<f32>)> = None;
        let mut out = Vec::new();
        let max = ns.iter().copied().max().unwrap_or(0);
        for j in 0..max {
            let (px, r) = self.sample_all(gen, j)?;
            best = Some(match best {
                None => (px, r),
                Some((mut bp, mut br)) => {
                    for i in 0..r.len() {
                        if r[i] > br[i] {
                            br[i] = r[i];
                            bp[i * PIXELS..(i + 1) * PIXELS].copy_from_slice(&px[i * PIXELS..(i + 1) * PIXELS]);
                        }
                    }
                    (bp, br)
                }
            });
            if ns.contains(&(j + 1)) {
                let (bp, br) = best.as_ref().expect("drawn");
                out.push((j + 1, measure(bp, br, self.per_class, self.encoder, &self.device)?));
            }
        }
        Ok(out)
    }
}

/// Reward and within-class diversity of class-major `pixels` (`per_class` per class).
pub fn measure(
    pixels: &[f32],
    rewards: &[f32],
    per_class: usize,
    encoder: &RewardModel,
    device: &Device,
) -> Result<ImageEval, DeviceError> {
    let n = rewards.len() as f64;
    let mean = rewards.iter().map(|&r| f64::from(r)).sum::<f64>() / n;
    let var = rewards.iter().map(|&r| (f64::from(r) - mean).powi(2)).sum::<f64>() / n;
    let (mut div, mut hits) = (0.0, 0usize);
    for class in 0..CLASSES.len() {
        let chunk = &pixels[class * per_class * PIXELS..(class + 1) * per_class * PIXELS];
        let features = encoder.features(images(chunk.to_vec(), per_class, device));
        let predicted = encoder.classes.forward(features.clone()).argmax(1);
        let predicted = predicted.try_to_data().map_err(|e| DeviceError(e.to_string()))?.convert::<i64>();
        hits += predicted.as_slice::<i64>().expect("i64").iter().filter(|&&p| p == class as i64).count();
        div += crate::tasks::mean_pairwise_distance(&read(&features)?, per_class);
    }
    Ok(ImageEval {
        reward_mean: mean,
        reward_std: var.sqrt(),
        diversity: div / CLASSES.len() as f64,
        class_accuracy: hits as f64 / n,
    })
}
