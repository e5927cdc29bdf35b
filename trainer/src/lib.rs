//! FAV trainer core. Read it in this order:
//! - [`run`]: the one run loop, over a [`tasks::Task`] (toy, image);
//! - [`step`]: the one data-parallel FAV step of spec §6;
//! - [`svgd`]: the FAV math beside spec §2–§4;
//! - [`models`] (generators, by family) and [`rewards`] (feature maps and rewards), each a
//!   trait with a registry and a conformance suite; [`lora`] adapts any model from outside;
//!   [`weights`] is the one importer.
//!
//! It talks to other processes only through `fav_comm::Collective`.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
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
