//! The image generator seam: one type over both families, so alignment, evaluation and export
//! do not care which backbone they tune — the one-step GAN generator or the few-step MeanFlow
//! U-Net. Saved weights are the family's own module (plain module-path names, no variant).

use super::flow::{self, FlowGenerator};
use super::generator::{self, ConvGenerator};
use crate::checkpoint::{self, CheckpointError};
use crate::io::{self, WeightsError};
use crate::lora::{LoraConfig, NamedTensor, Targets};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which backbone an image run tunes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFamily {
    /// One-step convolutional generator, pretrained adversarially.
    Gan,
    /// Few-step (1–4) MeanFlow U-Net, pretrained with the MeanFlow objective.
    Meanflow,
}

impl ImageFamily {
    /// The module paths of the layers that can carry adapters.
    pub fn layer_paths(self) -> Vec<String> {
        match self {
            ImageFamily::Gan => ConvGenerator::layer_paths(),
            ImageFamily::Meanflow => FlowGenerator::layer_paths(),
        }
    }
}

/// Noise and a class → an image `[n, 3, 32, 32]`, differentiable through every sampling step.
// A few generators live per process; boxing a variant would take it out of burn's derive.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ImageGenerator {
    Gan(ConvGenerator),
    Flow(FlowGenerator),
}

impl ImageGenerator {
    /// A freshly initialised generator (`steps`: MeanFlow sampling steps).
    pub fn new(family: ImageFamily, steps: usize, device: &Device) -> Self {
        match family {
            ImageFamily::Gan => Self::Gan(ConvGenerator::new(device)),
            ImageFamily::Meanflow => Self::Flow(FlowGenerator::new(steps, device)),
        }
    }

    pub fn family(&self) -> ImageFamily {
        match self {
            Self::Gan(_) => ImageFamily::Gan,
            Self::Flow(_) => ImageFamily::Meanflow,
        }
    }

    /// Noise values per sample.
    pub fn noise_dim(&self) -> usize {
        match self {
            Self::Gan(_) => generator::LATENT,
            Self::Flow(_) => flow::NOISE,
        }
    }

    /// `z: [n, noise_dim]`, `classes: [n, 10]` one-hot → images.
    pub fn forward(&self, z: Tensor<2>, classes: Tensor<2>) -> Tensor<4> {
        match self {
            Self::Gan(g) => g.forward(z, classes),
            Self::Flow(g) => g.forward(z, classes),
        }
    }

    /// Like [`forward`](Self::forward) with gradients through the last `grad_steps` sampling
    /// steps only (DRaFT-K; a one-step generator has one step).
    pub fn forward_last(&self, z: Tensor<2>, classes: Tensor<2>, grad_steps: usize) -> Tensor<4> {
        match self {
            Self::Gan(g) => g.forward(z, classes),
            Self::Flow(g) => g.sample(z, classes, grad_steps),
        }
    }

    /// Freeze the base and attach adapters to `targets`.
    pub fn adapt(self, cfg: LoraConfig, targets: &Targets, device: &Device) -> Self {
        match self {
            Self::Gan(g) => Self::Gan(g.adapt(cfg, targets, device)),
            Self::Flow(g) => Self::Flow(g.adapt(cfg, targets, device)),
        }
    }

    /// Adapters folded into the base weights.
    pub fn merged(&self) -> Self {
        match self {
            Self::Gan(g) => Self::Gan(g.merged()),
            Self::Flow(g) => Self::Flow(g.merged()),
        }
    }

    /// The adapters under PEFT names.
    pub fn lora_tensors(&self) -> Vec<NamedTensor> {
        match self {
            Self::Gan(g) => g.lora_tensors(),
            Self::Flow(g) => g.lora_tensors(),
        }
    }

    /// Adapters on (the aligned model) or off (the reference model).
    pub fn set_adapters(&mut self, on: bool) {
        match self {
            Self::Gan(g) => g.set_adapters(on),
            Self::Flow(g) => g.set_adapters(on),
        }
    }

    /// Save the family's module (names without the variant, as a user's loader expects).
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        match self {
            Self::Gan(g) => io::save(g, path),
            Self::Flow(g) => io::save(g, path),
        }
    }

    /// The family's module as safetensors bytes (plain names), for checkpoints.
    pub fn safetensors(&self) -> Result<bytes::Bytes, CheckpointError> {
        match self {
            Self::Gan(g) => checkpoint::safetensors_bytes(g),
            Self::Flow(g) => checkpoint::safetensors_bytes(g),
        }
    }

    /// Load [`safetensors`](Self::safetensors) bytes into a generator shaped like `self`.
    pub fn from_safetensors(self, bytes: &bytes::Bytes) -> Result<Self, CheckpointError> {
        Ok(match self {
            Self::Gan(g) => Self::Gan(checkpoint::load_safetensors(g, bytes)?),
            Self::Flow(g) => Self::Flow(checkpoint::load_safetensors(g, bytes)?),
        })
    }

    /// Load weights saved by [`save`](Self::save) into a generator shaped like `self`; a file of
    /// another shape or family is an error naming the file and tensors.
    pub fn load(self, path: &Path) -> Result<Self, WeightsError> {
        Ok(match self {
            Self::Gan(g) => Self::Gan(io::load(g, path)?),
            Self::Flow(g) => Self::Flow(io::load(g, path)?),
        })
    }
}
