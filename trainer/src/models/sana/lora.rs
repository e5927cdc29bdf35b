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

/// The adapters of `adapted` as diffusers' LoRA file.
pub fn diffusers_lora_bytes(adapted: &SanaTransformer, cfg: &LoraConfig) -> Result<Vec<u8>, String> {
    let tensors: Vec<lora::NamedTensor> = lora::peft_tensors(adapted)
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
