//! SANA-Sprint (spec §7.1), from a diffusers model directory as users download it
//! (`transformer/`: `config.json` + `diffusion_pytorch_model.safetensors`, float32 or bf16).
//! So far: the transformer, checked against diffusers (`scripts/fixtures/sana.py`,
//! `trainer/tests/sana.rs`). To come (issue 16): the DC-AE decoder, the sCM sampler, prompt
//! embeddings from a file, the t2i task.

pub mod config;
pub mod scm;
pub mod transformer;

pub use config::TransformerConfig;
pub use scm::Scm;
pub use transformer::{Conditioning, SanaTransformer};

use crate::weights::{self, NameMap, WeightsError};
use burn::tensor::Device;
use std::path::Path;

/// diffusers' names onto [`SanaTransformer`]'s: only `to_out.0` and the non-guidance timestep
/// embedder's extra level differ; PyTorch's layout is turned into burn's by the importer.
pub fn transformer_names() -> NameMap {
    NameMap::default()
        .pytorch_layout()
        .rename(r"\.to_out\.0\.", ".to_out.")
        .rename(r"^time_embed\.emb\.timestep_embedder\.", "time_embed.timestep_embedder.")
}

/// The weights file of a diffusers model folder.
const WEIGHTS: [&str; 2] = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"];

/// Load the transformer of a diffusers folder (`…/transformer`, or the pipeline folder above it).
pub fn load_transformer(dir: &Path, device: &Device) -> Result<(SanaTransformer, TransformerConfig), WeightsError> {
    let dir = if dir.join("transformer").is_dir() { dir.join("transformer") } else { dir.to_path_buf() };
    let err = |path: &Path, reason: String| WeightsError::Read { path: path.to_path_buf(), reason };
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(&cfg_path, e.to_string()))?;
    let cfg = TransformerConfig::parse(&text).map_err(|e| err(&cfg_path, e))?;
    let file = WEIGHTS
        .iter()
        .map(|w| dir.join(w))
        .find(|p| p.is_file())
        .ok_or_else(|| err(&dir, format!("no weights file: expected one of {WEIGHTS:?}")))?;
    let model = weights::load_mapped(SanaTransformer::new(&cfg, device), &file, &transformer_names())?;
    Ok((model, cfg))
}
