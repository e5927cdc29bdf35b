//! The published checkpoint layouts mapped onto [`super::ClipModel`]'s names: transformers
//! (`CLIPModel` and its single-tower variants, `ViTForImageClassification`) and open_clip (packed
//! q/k/v, `x @ P` projections, optionally under `state_dict.` as HPSv2 saves it, or `module.`
//! from a data-parallel wrapper). Each is one [`NameMap`]; the other tower's tensors, buffers and
//! the logit scale (read on its own) are ignored.

use super::config::Layout;
use crate::weights::NameMap;

/// Which towers a reward needs; the file's other tensors are left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Towers {
    pub vision: bool,
    pub text: bool,
}

/// The block-internal renames shared by both towers of a layout, applied after the tower prefix
/// became `vision.blocks.N.` / `text.blocks.N.`.
fn blocks(map: NameMap, pairs: &[(&str, &str)]) -> NameMap {
    pairs
        .iter()
        .fold(map, |m, (from, to)| m.rename(format!(r"^((?:vision|text)\.blocks\.\d+)\.{from}\."), format!("$1.{to}.")))
}

/// The name map of `layout` for the towers wanted.
pub fn name_map(layout: Layout, towers: Towers) -> NameMap {
    match layout {
        Layout::Transformers => transformers(towers),
        Layout::OpenClip => open_clip(towers),
        Layout::Vit => vit(),
    }
}

fn transformers(towers: Towers) -> NameMap {
    let mut m = NameMap::default().pytorch_layout().ignore(r".*position_ids").ignore("logit_scale");
    if !towers.vision {
        m = m.ignore(r"vision_model\..*|visual_projection\..*");
    }
    if !towers.text {
        m = m.ignore(r"text_model\..*|text_projection\..*");
    }
    let m = m
        .rename(r"^vision_model\.embeddings\.patch_embedding\.", "vision.patch.")
        .rename(r"^vision_model\.embeddings\.class_embedding$", "vision.cls")
        .rename(r"^vision_model\.embeddings\.position_embedding\.weight$", "vision.pos")
        .rename(r"^vision_model\.pre_layrnorm\.", "vision.ln_pre.")
        .rename(r"^vision_model\.post_layernorm\.", "vision.ln_post.")
        .rename(r"^visual_projection\.", "vision.proj.")
        .rename(r"^text_model\.embeddings\.token_embedding\.", "text.token.")
        .rename(r"^text_model\.embeddings\.position_embedding\.weight$", "text.pos")
        .rename(r"^text_model\.final_layer_norm\.", "text.ln_final.")
        .rename(r"^text_projection\.", "text.proj.")
        .rename(r"^(vision|text)_model\.encoder\.layers\.", "$1.blocks.");
    blocks(
        m,
        &[
            ("self_attn.q_proj", "q"),
            ("self_attn.k_proj", "k"),
            ("self_attn.v_proj", "v"),
            ("self_attn.out_proj", "out"),
            ("layer_norm1", "ln1"),
            ("layer_norm2", "ln2"),
            ("mlp.fc1", "fc1"),
            ("mlp.fc2", "fc2"),
        ],
    )
}

/// A checkpoint's wrapping of the state dict: HPSv2's `{'state_dict': …}`, DDP's `module.`.
const WRAP: &str = r"(?:state_dict\.|module\.)*";

fn open_clip(towers: Towers) -> NameMap {
    let text = r"token_embedding\..*|positional_embedding|transformer\..*|ln_final\..*|text_projection";
    let mut m = NameMap::default()
        .pytorch_layout()
        .ignore(format!("{WRAP}(?:logit_scale|logit_bias|attn_mask)"))
        .split(
            format!(r"{WRAP}(visual\.transformer|transformer)\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)"),
            &["$1.resblocks.$2.attn.q.$3", "$1.resblocks.$2.attn.k.$3", "$1.resblocks.$2.attn.v.$3"],
        )
        // `x @ P` ([in, out]): transposed to PyTorch's linear layout, which the import turns
        // into burn's.
        .transpose(format!(r"{WRAP}(?:visual\.proj|text_projection)"));
    if !towers.vision {
        m = m.ignore(format!(r"{WRAP}visual\..*"));
    }
    if !towers.text {
        m = m.ignore(format!("{WRAP}(?:{text})"));
    }
    let m = m
        .rename(format!("^{WRAP}"), "")
        .rename(r"^visual\.conv1\.", "vision.patch.")
        .rename(r"^visual\.class_embedding$", "vision.cls")
        .rename(r"^visual\.positional_embedding$", "vision.pos")
        .rename(r"^visual\.ln_pre\.", "vision.ln_pre.")
        .rename(r"^visual\.ln_post\.", "vision.ln_post.")
        .rename(r"^visual\.proj$", "vision.proj.weight")
        .rename(r"^visual\.transformer\.resblocks\.", "vision.blocks.")
        .rename(r"^token_embedding\.", "text.token.")
        .rename(r"^positional_embedding$", "text.pos")
        .rename(r"^ln_final\.", "text.ln_final.")
        .rename(r"^text_projection$", "text.proj.weight")
        .rename(r"^transformer\.resblocks\.", "text.blocks.");
    blocks(
        m,
        &[
            ("attn.q", "q"),
            ("attn.k", "k"),
            ("attn.v", "v"),
            ("attn.out_proj", "out"),
            ("ln_1", "ln1"),
            ("ln_2", "ln2"),
            ("mlp.c_fc", "fc1"),
            ("mlp.c_proj", "fc2"),
        ],
    )
}

fn vit() -> NameMap {
    let m = NameMap::default()
        .pytorch_layout()
        .ignore(r"vit\.pooler\..*")
        .squeeze(r"vit\.embeddings\.(?:cls_token|position_embeddings)")
        .rename(r"^vit\.embeddings\.cls_token$", "vision.cls")
        .rename(r"^vit\.embeddings\.position_embeddings$", "vision.pos")
        .rename(r"^vit\.embeddings\.patch_embeddings\.projection\.", "vision.patch.")
        .rename(r"^vit\.layernorm\.", "vision.ln_post.")
        .rename(r"^vit\.encoder\.layer\.", "vision.blocks.");
    blocks(
        m,
        &[
            ("attention.attention.query", "q"),
            ("attention.attention.key", "k"),
            ("attention.attention.value", "v"),
            ("attention.output.dense", "out"),
            ("layernorm_before", "ln1"),
            ("layernorm_after", "ln2"),
            ("intermediate.dense", "fc1"),
            ("output.dense", "fc2"),
        ],
    )
}
