//! SANA-Sprint's LoRA (spec §11.1): adapters on `to_q`, `to_k`, `to_v` and `to_out` of every
//! attention, in the file layout diffusers writes and reads (`SanaSprintPipeline.save_lora_weights`
//! / `load_lora_weights`): PEFT factors under `transformer.`, `to_out.0`, rank and α in the
//! `lora_adapter_metadata` entry.

use super::SanaTransformer;
use crate::lora::{self, LoraConfig, Targets};
use crate::weights::{self, NameMap, WeightsError};
use std::path::Path;

/// The attention projections of every block.
pub fn attention_targets(model: &SanaTransformer) -> Targets {
    let ends = ["to_q", "to_k", "to_v", "to_out"];
    Targets(
        lora::layers(model)
            .into_iter()
            .filter(|l| l.contains(".attn") && ends.iter().any(|e| l.ends_with(e)))
            .collect(),
    )
}

/// The adapters of an adapted transformer ([`lora::peft_tensors`]) as diffusers' LoRA file.
pub fn diffusers_lora_bytes(peft: Vec<lora::NamedTensor>, cfg: &LoraConfig) -> Result<Vec<u8>, String> {
    let tensors: Vec<lora::NamedTensor> = peft
        .into_iter()
        .map(|(n, s, v)| (format!("transformer.{}", n.replace(".to_out.lora_", ".to_out.0.lora_")), s, v))
        .collect();
    let meta = serde_json::json!({
        "transformer.r": cfg.rank,
        "transformer.lora_alpha": cfg.alpha,
        "transformer.target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
        "transformer.peft_type": "LORA",
        "transformer.bias": "none",
        "transformer.use_dora": false,
        "transformer.lora_dropout": 0.0,
    });
    lora::tensors_bytes_with(&tensors, &[("lora_adapter_metadata", meta.to_string())])
}

/// Load a diffusers LoRA file's factors into a model already adapted with [`attention_targets`]
/// (the base weights stay; every factor in the file must fit).
pub fn load_diffusers_lora(adapted: SanaTransformer, path: &Path) -> Result<SanaTransformer, WeightsError> {
    let map = NameMap::default()
        .partial()
        // PEFT's A [r, in] and B [out, r] are the transposes of burn's factors.
        .transpose(r".*\.lora_[AB]\.weight")
        .rename(r"^transformer\.", "")
        .rename(r"\.to_out\.0\.", ".to_out.")
        .rename(r"\.lora_A\.weight$", ".weight.lora.a")
        .rename(r"\.lora_B\.weight$", ".weight.lora.b");
    weights::load_mapped(adapted, path, &map)
}

/// `model` with a diffusers LoRA file folded in (rank from the factors' shapes, α from the
/// file's `lora_adapter_metadata`, else α = r as diffusers assumes): the plain merged model.
pub fn merge_diffusers_lora(model: SanaTransformer, path: &Path) -> Result<SanaTransformer, WeightsError> {
    let at = |e: String| weights::read_err(path, e);
    let bytes = std::fs::read(path).map_err(|e| at(e.to_string()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| at(format!("not safetensors: {e}")))?;
    let rank = meta
        .tensors()
        .iter()
        .find(|(n, _)| n.ends_with(".lora_A.weight"))
        .map(|(_, info)| info.shape[0])
        .ok_or_else(|| at("no lora_A factors: not a LoRA file".into()))?;
    let adapter: serde_json::Value = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("lora_adapter_metadata"))
        .map(|s| serde_json::from_str(s).map_err(|e| at(format!("lora_adapter_metadata is not JSON: {e}"))))
        .transpose()?
        .unwrap_or_default();
    let alpha = adapter.get("transformer.lora_alpha").and_then(serde_json::Value::as_f64).unwrap_or(rank as f64);
    let cfg = LoraConfig { rank, alpha, init: lora::LoraInit::Gaussian };
    let device = model.proj_out.weight.device();
    let targets = attention_targets(&model);
    let adapted = load_diffusers_lora(lora::adapt(model, cfg, &targets, 0, &device), path)?;
    Ok(lora::merged(&adapted))
}
