//! SANA-Sprint (spec §7.1), from a diffusers model directory as users download it
//! (`transformer/`: `config.json` + `diffusion_pytorch_model.safetensors`, float32 or bf16).
//! The transformer, the DC-AE decoder, the sCM sampler and the LoRA file layout, each checked
//! against diffusers (`scripts/fixtures/sana.py`, `trainer/tests/sana.rs`); prompt embeddings from
//! a file; the whole pipeline as a [`Generator`](crate::models::Generator) ([`SanaSprint`]).

pub mod config;
pub mod dc_ae;
pub mod generator;
pub mod lora;
pub mod prompts;
pub mod sample;
pub mod scm;
pub mod transformer;

pub use config::TransformerConfig;
pub use generator::SanaSprint;
pub use scm::Scm;
pub use transformer::{Conditioning, SanaTransformer};

use crate::weights::{self, read_err, NameMap, WeightsError};
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

/// A merged (plain) transformer as diffusers' `diffusion_pytorch_model.safetensors`: the inverse
/// of [`transformer_names`].
pub fn diffusers_transformer_bytes(model: &SanaTransformer) -> Result<Vec<u8>, String> {
    let guidance = model.time_embed.guidance_embedder.is_some();
    let tensors: Vec<crate::lora::NamedTensor> = weights::pytorch_tensors(model)
        .into_iter()
        .map(|(n, s, v)| {
            let n = n.replace(".to_out.", ".to_out.0.");
            let n = match n.strip_prefix("time_embed.timestep_embedder.") {
                Some(rest) if !guidance => format!("time_embed.emb.timestep_embedder.{rest}"),
                _ => n,
            };
            (n, s, v)
        })
        .collect();
    crate::lora::tensors_bytes(&tensors)
}

/// The weights file of a diffusers model folder.
const WEIGHTS: [&str; 2] = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"];

/// The config and weights file of a diffusers component folder (`dir/<component>`, or `dir`
/// itself when it is that folder).
fn component(dir: &Path, name: &str) -> Result<(String, std::path::PathBuf), WeightsError> {
    let dir = component_dir(dir, name);
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| read_err(&cfg_path, e))?;
    let file = WEIGHTS
        .iter()
        .map(|w| dir.join(w))
        .find(|p| p.is_file())
        .ok_or_else(|| read_err(&dir, format!("no weights file: expected one of {WEIGHTS:?}")))?;
    Ok((text, file))
}

/// The folder of component `name` (`dir/<name>`, or `dir` itself when it is that folder).
pub fn component_dir(dir: &Path, name: &str) -> std::path::PathBuf {
    if dir.join(name).is_dir() {
        dir.join(name)
    } else {
        dir.to_path_buf()
    }
}

/// Load the DC-AE decoder of a diffusers folder (`…/vae`, or the pipeline folder above it).
pub fn load_decoder(dir: &Path, device: &Device) -> Result<(dc_ae::DcAe, dc_ae::DecoderConfig), WeightsError> {
    let (text, file) = component(dir, "vae")?;
    let cfg = dc_ae::DecoderConfig::parse(&text).map_err(|e| read_err(&file.with_file_name("config.json"), e))?;
    let ae = dc_ae::DcAe { decoder: dc_ae::DcDecoder::new(&cfg, device) };
    Ok((weights::load_mapped(ae, &file, &dc_ae::decoder_names(&cfg))?, cfg))
}

/// Load the transformer of a diffusers folder (`…/transformer`, or the pipeline folder above it).
pub fn load_transformer(dir: &Path, device: &Device) -> Result<(SanaTransformer, TransformerConfig), WeightsError> {
    let (text, file) = component(dir, "transformer")?;
    let cfg = TransformerConfig::parse(&text).map_err(|e| read_err(&file.with_file_name("config.json"), e))?;
    let model = weights::load_mapped(SanaTransformer::new(&cfg, device), &file, &transformer_names())?;
    Ok((model, cfg))
}
