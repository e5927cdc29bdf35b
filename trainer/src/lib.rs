//! FAV trainer core. Read it in this order:
//! - [`run`]: the one run loop, over a [`tasks::Task`] (toy, image);
//! - [`step`]: the one data-parallel FAV step of spec §6;
//! - [`svgd`]: the FAV math beside spec §2–§4;
//! - [`models`] (generators, by family) and [`rewards`] (feature maps and rewards), each a
//!   trait with a registry and a conformance suite; [`lora`] adapts any model from outside;
//!   [`weights`] is the one importer.
//!
//! It talks to other processes only through `fav_comm::Collective`.

pub mod activation;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
pub mod error;
pub mod gpu;
pub mod lora;
pub mod metrics;
pub mod models;
pub mod noise;
pub mod observe;
pub mod plan;
pub mod plot;
pub mod rewards;
pub mod run;
pub mod step;
pub mod svgd;
pub mod sync;
pub mod tasks;
pub mod tensors;
pub mod weights;

pub use checkpoint::Resume;
pub use error::JobError;
pub use run::{run, run_on, Env, Outcome};
pub use tasks::Report;

/// Refuse a configuration before any work: every value ([`config::Config::validate`]) and every
/// name the registries resolve (families, rewards, what depends on them), naming the key.
pub fn validate(cfg: &config::Config) -> Result<(), config::ConfigError> {
    cfg.validate()?;
    tasks::check(cfg)
}

/// `fav export`: a checkpoint's parts for inference and its model card
/// ([`checkpoint::export`]); for a text-to-image checkpoint also the merged transformer, made
/// now from the base folder the run used (a checkpoint carries only the adapters).
pub fn export(
    url: &str,
    step: Option<u64>,
    out: &std::path::Path,
    source_commit: &str,
) -> Result<checkpoint::Exported, checkpoint::CheckpointError> {
    let mut e = checkpoint::export(url, step, out, source_commit)?;
    if e.config.task == config::Task::T2i {
        let t = &e.config.t2i;
        let lora_file = out.join(tasks::t2i::LORA_FILE);
        let dir = tasks::t2i::export_merged(std::path::Path::new(&t.model), &lora_file, out).map_err(|reason| {
            checkpoint::CheckpointError::Format(format!(
                "the merged transformer (base t2i.model = {:?}): {reason}",
                t.model
            ))
        })?;
        let n = e.files.len() - 1; // before model_card.json
        e.files.insert(n, format!("{}/", dir.file_name().expect("a folder").to_string_lossy()));
    }
    Ok(e)
}
