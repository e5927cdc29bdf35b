//! Prompt embeddings from a file (SANA conditions on Gemma-2-2B-IT hidden states; computed by
//! `scripts/sana_prompt_embeddings.py` with diffusers' own pipeline): safetensors with
//! `embeddings` `[P, L, caption_channels]` (float32 or bf16), `mask` `[P, L]` (1 = token,
//! 0 = padding) and the prompts in file order as a JSON list under the metadata key `prompts`.
//! A file that does not match the model or the prompt set is refused naming what differs.

use super::scm::Prompts;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Every prompt's embeddings and mask.
#[derive(Clone, Debug)]
pub struct PromptEmbeddings {
    pub prompts: Vec<String>,
    /// Tokens per prompt (L).
    pub len: usize,
    pub channels: usize,
    embeddings: Vec<f32>,
    mask: Vec<f32>,
}

/// A tensor's shape and values.
pub(super) type Shaped = (Vec<usize>, Vec<f32>);

/// Tensor `key` of a safetensors file as f32 (stored F32 or BF16).
pub(super) fn floats(st: &SafeTensors, key: &str) -> Result<Shaped, String> {
    let t = st.tensor(key).map_err(|_| format!("no tensor {key:?}"))?;
    let v = match t.dtype() {
        Dtype::F32 => t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::BF16 => t
            .data()
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        other => return Err(format!("tensor {key:?} is {other:?}; expected F32 or BF16")),
    };
    Ok((t.shape().to_vec(), v))
}

impl PromptEmbeddings {
    /// Read `path`, checking it against the model's `caption_channels`.
    pub fn read(path: &Path, caption_channels: usize) -> Result<Self, String> {
        let at = |e: String| format!("{}: {e}", path.display());
        let bytes = std::fs::read(path).map_err(|e| at(e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| at(format!("not safetensors: {e}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| at(format!("not safetensors: {e}")))?;
        let prompts: Vec<String> = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("prompts"))
            .ok_or_else(|| at("no \"prompts\" metadata (the prompts in file order, a JSON list)".into()))
            .and_then(|s| {
                serde_json::from_str(s)
                    .map_err(|e| at(format!("\"prompts\" metadata is not a JSON list of strings: {e}")))
            })?;
        let (es, embeddings) = floats(&st, "embeddings").map_err(at)?;
        let (ms, mask) = floats(&st, "mask").map_err(at)?;
        let [p, l, c] = es[..] else { return Err(at(format!("embeddings has shape {es:?}; expected [P, L, C]"))) };
        if c != caption_channels {
            return Err(at(format!(
                "embeddings have {c} channels; the model's caption_channels is {caption_channels}"
            )));
        }
        if ms != [p, l] {
            return Err(at(format!("mask has shape {ms:?}; expected [{p}, {l}]")));
        }
        if prompts.len() != p {
            return Err(at(format!("{} prompts in the metadata for {p} embeddings", prompts.len())));
        }
        if embeddings.iter().any(|v| !v.is_finite()) {
            return Err(at("embeddings hold NaN or infinite values".into()));
        }
        Ok(Self { prompts, len: l, channels: c, embeddings, mask })
    }

    /// Refuse a file made for another prompt set.
    pub fn check_prompts(&self, expected: &[String]) -> Result<(), String> {
        if self.prompts != expected {
            let first = self
                .prompts
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(self.prompts.len().min(expected.len()));
            return Err(format!(
                "the embeddings were computed for another prompt set ({} prompts vs {}; first difference at prompt {first})",
                self.prompts.len(),
                expected.len()
            ));
        }
        Ok(())
    }

    /// The embeddings and masks of prompts `idx`, in that order.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Prompts {
        let (l, c) = (self.len, self.channels);
        let ctx: Vec<f32> =
            idx.iter().flat_map(|&i| self.embeddings[i * l * c..(i + 1) * l * c].iter().copied()).collect();
        let mask: Vec<f32> = idx.iter().flat_map(|&i| self.mask[i * l..(i + 1) * l].iter().copied()).collect();
        Prompts {
            ctx: Tensor::from_data(TensorData::new(ctx, [idx.len(), l, c]), device),
            mask: Tensor::from_data(TensorData::new(mask, [idx.len(), l]), device),
        }
    }
}
