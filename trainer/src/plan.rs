//! How much memory a job needs, per rank, before any work: the frozen models, the trainable
//! weights with their gradients and optimiser state, the activations the backward pass keeps,
//! the field's gathered sets and kernel tiles, the NES perturbations, the reference pool and the
//! evaluation — each with the config key that sizes it. A job that cannot fit the machine is
//! refused naming the key of its largest part and the estimate; `fav plan` prints the table.
//!
//! The figures are estimates (f32 everywhere; activations counted per layer output from each
//! family's architecture, `Family::ACTIVATION_FLOATS`), good to a small factor: enough to refuse
//! what cannot fit instead of aborting on an allocation hours in.

use crate::config::{err, Config, ConfigError, RewardGrad, Task};
use crate::data::shapes::{CLASSES, PIXELS, SIZE};
use crate::data::Condition;
use crate::lora::{self, Targets};
use crate::models::{self, Family, FamilyVisitor};
use crate::rewards::{self, learned::RewardModel};
use crate::tensors::matrix;
use burn::module::Module;
use burn::tensor::Device;

/// One part of a job's memory.
#[derive(Clone, Debug)]
pub struct Item {
    pub what: &'static str,
    /// The config key that sizes it.
    pub key: &'static str,
    pub bytes: f64,
}

/// The memory of one rank.
#[derive(Clone, Debug)]
pub struct Plan {
    pub ranks: usize,
    pub items: Vec<Item>,
}

const F32: f64 = 4.0;

/// The facts of a family the estimate needs.
struct Facts {
    params: f64,
    trainable: f64,
    noise: f64,
    sample: f64,
    activations: f64,
    /// The largest rank any targeted layer can use (`min(in, out)`), for LoRA.
    max_rank: usize,
}

struct Probe<'a> {
    cfg: &'a Config,
}

impl FamilyVisitor for Probe<'_> {
    type Output = Result<Facts, ConfigError>;
    fn visit<F: Family>(self) -> Self::Output {
        let cfg = self.cfg;
        let dev = Device::flex();
        let g = F::init(cfg, &dev);
        let steps = *F::STEPS.start();
        let cond = if cfg.task == Task::Image { Condition::Class(0) } else { Condition::None };
        let sample = g.sample(matrix(vec![0.0; g.noise_dim()], 1, g.noise_dim(), &dev), cond, steps, None).dims()[1];
        let params = g.num_params() as f64;
        let (trainable, max_rank) = match cfg.task {
            Task::Toy => (params, 0),
            _ => {
                let targets = Targets::parse(&cfg.image.lora_targets, &lora::layers(&g))
                    .map_err(|e| err("image.lora_targets", e))?;
                let shapes = lora::layer_shapes(&g, &targets);
                let r = cfg.image.lora_rank as f64;
                let trainable = shapes.iter().map(|(i, o)| r * (i + o) as f64).sum();
                (trainable, shapes.iter().map(|&(i, o)| i.min(o)).max().unwrap_or(0))
            }
        };
        Ok(Facts {
            params,
            trainable,
            noise: g.noise_dim() as f64,
            sample: sample as f64,
            activations: F::ACTIVATION_FLOATS as f64,
            max_rank,
        })
    }
}

/// The per-rank memory of `cfg` on `ranks` ranks (its names already checked).
pub fn plan(cfg: &Config, ranks: usize) -> Result<Plan, ConfigError> {
    // A layout that cannot be split is refused before anything is sized.
    crate::step::Layout::new(cfg.fav.batch, cfg.fav.conditions, ranks.max(1), 0).map_err(|e| err("fav.batch", e))?;
    if cfg.task == Task::T2i {
        return t2i::plan(cfg, ranks);
    }
    let f = &cfg.fav;
    let family = match cfg.task {
        Task::Toy => models::toy::with_family(&cfg.model.family, Probe { cfg }),
        Task::Image => models::image::with_family(&cfg.image.family, Probe { cfg }),
        Task::T2i => unreachable!("planned above"),
    };
    let facts =
        family.ok_or_else(|| err(if cfg.task == Task::Toy { "model.family" } else { "image.family" }, "unknown"))??;
    if cfg.task == Task::Image && cfg.image.lora_rank > facts.max_rank {
        return Err(err(
            "image.lora_rank",
            format!(
                "{} exceeds what any targeted layer can use (its min(in, out) is at most {}): a larger rank adds \
                 weights, not capacity",
                cfg.image.lora_rank, facts.max_rank
            ),
        ));
    }
    let g = ranks.max(1) as f64;
    let k = f.batch as f64;
    let steps = match cfg.task {
        Task::Toy => cfg.model.sample_steps,
        _ => cfg.image.sample_steps,
    } as f64;
    // The particle space and what φ keeps for backward.
    let (d, phi_acts, reward_params, refs) = match cfg.task {
        Task::Toy => (facts.sample, 0.0, 0.0, f.ref_batch as f64),
        _ => {
            let model = RewardModel::new(&Device::flex());
            let maker = rewards::image_maker(&cfg.image.reward).ok_or_else(|| err("image.reward", "unknown"))?;
            // The learned model is trained for evaluation whichever reward aligns.
            let learned = model.num_params() as f64;
            match maker {
                rewards::Maker::Own(make) => {
                    let r = make(&model);
                    let probe = matrix(vec![0.0; PIXELS], 1, PIXELS, &Device::flex());
                    let d = r.features.features(probe).dims()[1] as f64;
                    (d, r.activation_floats as f64, learned, k)
                }
                rewards::Maker::Published(kind) => {
                    let src =
                        rewards::published_source(kind, &cfg.reward, crate::tasks::image::prompts(), [SIZE, SIZE]);
                    let (d, acts, params) =
                        rewards::clip::score::describe(&src).map_err(|e| err("reward.model", e.to_string()))?;
                    (d as f64, acts as f64, learned + params as f64, k)
                }
                rewards::Maker::Server => (PIXELS as f64, 0.0, learned, k),
            }
        }
    };
    let frozen = match cfg.task {
        // The base, and the trainable copy of it on the autodiff device.
        Task::Toy => 2.0 * facts.params,
        // The base (the reference), the adapted copy, the reward model.
        _ => 2.0 * facts.params + reward_params,
    };
    let mut items =
        vec![Item { what: "frozen models and the trainable copy", key: family_key(cfg), bytes: frozen * F32 }];
    let per_sample = steps * facts.activations + phi_acts + facts.sample + facts.noise + d;
    let key = if cfg.task == Task::Image { "image.lora_rank" } else { "model.family" };
    items.extend(step_items(cfg, ranks, facts.trainable, key, per_sample, d, refs));
    let n = cfg.eval.samples as f64;
    match cfg.task {
        Task::Toy => {
            // The pool (own share and the gathered whole) and a chunk of 10 000 drawn at once.
            let pool = f.ref_pool as f64 * d * (1.0 + 1.0 / g) + 1e4 * (facts.noise + facts.activations);
            items.push(Item { what: "reference pool", key: "fav.ref_pool", bytes: pool * F32 });
            // Noise, samples, target and data sets, the base's tilted pool (50 000), the MMD
            // median's pairwise distances (≤ 2048 points, f64) and one forward of n rows.
            let eval = n * (facts.noise + 3.0 * d + facts.activations) + 5e4 * (facts.noise + d) + 2048.0 * 2047.0;
            items.push(Item { what: "evaluation (rank 0)", key: "eval.samples", bytes: eval * F32 });
        }
        _ => {
            // Base and final pixels, best-of-N's kept set and candidates, and one class's forward.
            let per_class = n / CLASSES.len() as f64;
            let eval = 4.0 * n * facts.sample + per_class * (steps * facts.activations + phi_acts);
            items.push(Item { what: "evaluation and best-of-N (rank 0)", key: "eval.samples", bytes: eval * F32 });
        }
    }
    Ok(Plan { ranks, items })
}

/// What a step holds whatever the task: the trainable weights' gradients and optimiser state,
/// the activations of the own rows of every condition (`per_sample` floats each), the gathered
/// sets, the field's tiles, the NES perturbations.
fn step_items(
    cfg: &Config,
    ranks: usize,
    trainable: f64,
    trainable_key: &'static str,
    per_sample: f64,
    d: f64,
    refs: f64,
) -> Vec<Item> {
    let f = &cfg.fav;
    let k = f.batch as f64;
    let own = (k / ranks.max(1) as f64).ceil();
    let micro = crate::step::Settings::new(cfg, crate::step::Objective::Fav, 1).micro_batch;
    let live = if micro == 0 { own } else { own.min(micro as f64) };
    let tile_rows = (f.tile_elems as f64 / k.max(refs)).clamp(1.0, own);
    let tile = tile_rows * k.max(refs) * if d <= 8.0 { d + 4.0 } else { 5.0 + f.temps_stein.len() as f64 };
    let mut items = vec![
        Item {
            what: "trainable weights' gradients, optimiser state, all-reduce bucket",
            key: trainable_key,
            bytes: 4.0 * trainable * F32,
        },
        // Backward runs condition by condition, chunk by chunk (§6.4): one chunk's graph is
        // alive at a time; the features of the own rows of every condition are small.
        Item {
            what: "activations kept for backward (one chunk of own rows)",
            key: if live < own { "t2i.micro_batch" } else { "fav.batch" },
            bytes: live * per_sample * F32,
        },
        Item {
            what: "gathered particles, scores and references (one condition)",
            key: "fav.batch",
            bytes: (2.0 * k + refs) * d * F32,
        },
        Item { what: "kernel tiles of the field", key: "fav.tile_elems", bytes: tile * F32 },
    ];
    if f.reward_grad == RewardGrad::Nes {
        let bytes = own * 2.0 * f.nes_samples as f64 * d * F32;
        items.push(Item { what: "NES perturbations (own rows)", key: "fav.nes_samples", bytes });
    }
    items
}

fn family_key(cfg: &Config) -> &'static str {
    match cfg.task {
        Task::Toy => "model.family",
        Task::Image => "image.family",
        Task::T2i => "t2i.model",
    }
}

/// The text-to-image job's memory, from the model folder's configs (no weights read: the
/// modules are built with lazy parameters, only their shapes counted).
mod t2i {
    use super::*;
    use crate::models::sana::{self, dc_ae::DcDecoder, SanaTransformer};
    use crate::weights::param_shapes;

    fn count<M: Module>(m: &M) -> f64 {
        param_shapes(m).iter().map(|(_, _, s)| s.iter().product::<usize>() as f64).sum()
    }

    fn read(dir: &std::path::Path, name: &str) -> Result<String, ConfigError> {
        let p = sana::component_dir(dir, name).join("config.json");
        std::fs::read_to_string(&p).map_err(|e| err("t2i.model", format!("{}: {e}", p.display())))
    }

    pub(super) fn plan(cfg: &Config, ranks: usize) -> Result<Plan, ConfigError> {
        let t = &cfg.t2i;
        let dir = std::path::Path::new(&t.model);
        let tc = sana::TransformerConfig::parse(&read(dir, "transformer")?).map_err(|e| err("t2i.model", e))?;
        let ac = sana::dc_ae::DecoderConfig::parse(&read(dir, "vae")?).map_err(|e| err("t2i.model", e))?;
        let dev = Device::flex();
        let transformer = SanaTransformer::new(&tc, &dev);
        // In bf16 the transformer's weights take 2 bytes (all but a fraction of a percent of them).
        let weight_bytes = if cfg.t2i_bf16() { 2.0 } else { F32 };
        let params = count(&transformer) * weight_bytes / F32 + count(&DcDecoder::new(&ac, &dev));
        let targets = sana::lora::attention_targets(&transformer);
        let r = t.lora_rank as f64;
        let trainable: f64 = param_shapes(&transformer)
            .iter()
            .filter(|(p, _, s)| s.len() == 2 && targets.0.iter().any(|l| *p == format!("{l}.weight")))
            .map(|(_, _, s)| r * (s[0] + s[1]) as f64)
            .sum();
        let (prompts, n_train) = crate::tasks::t2i::prompts(cfg)?;
        let n_eval = (prompts.len() - n_train) as f64;
        let (latent, image) = crate::tasks::t2i::shapes(dir).map_err(|e| err("t2i.model", e))?;
        let pixels = (3 * image[0] * image[1]) as f64;
        let (d, phi_acts, reward_params) = match rewards::image_maker(&t.reward) {
            Some(rewards::Maker::Published(kind)) => {
                let src = rewards::published_source(kind, &cfg.reward, prompts, image);
                let (d, acts, params) =
                    rewards::clip::score::describe(&src).map_err(|e| err("reward.model", e.to_string()))?;
                (d as f64, acts as f64, params as f64)
            }
            _ => (pixels, 0.0, 0.0),
        };
        // Per sampling step, per block, roughly 40 token×width tensors (norms, modulation, q/k/v,
        // the linear attention's terms, the Mix-FFN's 2·2.5-wide hidden layers and gates) and the
        // cross-attention's weights and softmax (heads × tokens × 300 prompt tokens, twice).
        let tokens = (latent[1] * latent[2] / (tc.patch_size * tc.patch_size)) as f64;
        let per_step = tc.layers as f64 * tokens * (40.0 * tc.dim() as f64 + 2.0 * (tc.cross_heads * 300) as f64);
        // The decoder, once per sample: per level about 8 tensors of its width per block at its
        // resolution (convs, norms, activations), plus the upsampling's output.
        let levels = ac.levels.len();
        let up = |l: usize| if l + 1 < levels { 2.0 } else { 0.0 };
        // Per level: (its block's activations, every link input kept at it).
        let level = |l: usize| {
            let lv = &ac.levels[l];
            let plane = ((image[0] >> l) * (image[1] >> l) * lv.width) as f64;
            (8.0 * plane, plane * (lv.blocks as f64 + up(l) / 2.0))
        };
        let decoder: f64 = (0..levels).map(|l| level(l).0 / 8.0 * (8.0 * ac.levels[l].blocks as f64 + up(l))).sum();
        let noise = (sana::generator::MAX_STEPS * latent.iter().product::<usize>()) as f64;
        let steps = t.sample_steps as f64;
        let latent_n = latent.iter().product::<usize>() as f64;
        let graph = if !t.gradient_checkpointing && !t.decoder_checkpointing {
            steps * per_step + decoder
        } else {
            // One link alive (a transformer pass or all of them, a decoder block or the whole
            // decoder) and every link's input.
            let (step_link, step_inputs) =
                if t.gradient_checkpointing { (per_step, steps * latent_n) } else { (steps * per_step, latent_n) };
            let (dec_link, dec_inputs) = if t.decoder_checkpointing {
                ((0..levels).map(|l| level(l).0).fold(0.0, f64::max), (0..levels).map(|l| level(l).1).sum::<f64>())
            } else {
                (decoder, latent_n)
            };
            step_link.max(dec_link) + step_inputs + dec_inputs
        };
        let per_sample = graph + phi_acts + pixels + noise + d;
        let mut items = vec![Item {
            what: "frozen models and the trainable copy (transformer, decoder, reward)",
            key: "t2i.model",
            bytes: (2.0 * params + reward_params) * F32,
        }];
        items.extend(step_items(cfg, ranks, trainable, "t2i.lora_rank", per_sample, d, cfg.fav.batch as f64));
        // One micro-batch's sample without a graph (a block's activations at a time), and the
        // grids kept (base and final, `grid` per eval prompt).
        let grid = 2.0 * n_eval * t.grid.min(t.eval_batch) as f64 * pixels;
        let eval = t.micro_batch as f64 * (per_step / tc.layers as f64 + decoder / 4.0 + pixels) + grid;
        items.push(Item { what: "evaluation and grids (rank 0)", key: "t2i.eval_batch", bytes: eval * F32 });
        Ok(Plan { ranks, items })
    }
}

/// Bytes as a short human figure.
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == units.len() - 1 && v >= 1024.0 {
        return format!("{bytes:.2e} B");
    }
    format!("{v:.1} {}", units[u])
}

/// Memory this machine has available now (`MemAvailable` of `/proc/meminfo`), if known.
pub fn available() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

impl Plan {
    /// Bytes one rank needs.
    pub fn total(&self) -> f64 {
        self.items.iter().map(|i| i.bytes).sum()
    }

    /// Refuse a job whose `local_ranks` ranks on this machine need more than `available` bytes,
    /// naming the key of the largest part.
    pub fn check(&self, local_ranks: usize, available: f64) -> Result<(), ConfigError> {
        let need = self.total() * local_ranks.max(1) as f64;
        if need <= available {
            return Ok(());
        }
        let big = self.items.iter().max_by(|a, b| a.bytes.total_cmp(&b.bytes)).expect("a plan has items");
        Err(err(
            big.key,
            format!(
                "the job needs about {} per rank ({} for the {}), {} for the {} rank(s) on this machine, which has {} \
                 available (`fav plan` shows every part)",
                human(self.total()),
                human(big.bytes),
                big.what,
                human(need),
                local_ranks.max(1),
                human(available)
            ),
        ))
    }

    /// The table `fav plan` prints.
    pub fn table(&self) -> String {
        let mut out = format!("memory per rank ({} rank(s)):\n", self.ranks);
        for i in &self.items {
            out += &format!("  {:>10}  {:<62} {}\n", human(i.bytes), i.what, i.key);
        }
        out += &format!("  {:>10}  total per rank\n", human(self.total()));
        out
    }
}
