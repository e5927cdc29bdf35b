//! FAV trainer core: the FAV math ([`svgd`]), generators, rewards, metrics and the training loop.
//! It talks to other processes only through `fav_comm::Collective`.

pub mod align;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod generators;
pub mod images;
pub mod io;
pub mod job;
pub mod lora;
pub mod metrics;
pub mod noise;
pub mod plot;
pub mod pretrain;
pub mod reward;
pub mod svgd;
pub mod svgd_host;
pub mod sync;
pub mod toy;
