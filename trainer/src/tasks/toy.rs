//! The 8-gaussians job (spec §10): a toy base generator (loaded, cached or pretrained), FAV on
//! the whole network with the toy conventions, and evaluation against the tilted target.
//!
//! Run directory: `metrics.jsonl` (one object per evaluation), `summary.json`,
//! `final.safetensors` (aligned network by module path), `best.safetensors` (the evaluation with
//! the lowest EMA of MMD², spec §10.3), `samples.png` (base | aligned | target), `curves.png`
//! (loss, reward, KL, MMD² over steps).

use super::toy_eval::{Evaluator, Scores};
use super::{Evaluation, Report, RunInfo, Task};
use crate::checkpoint::{ExportSpec, Resumed};
use crate::config::Config;
use crate::data::{gaussians, Condition};
use crate::error::{dir_err, JobError};
use crate::metrics::EmaBest;
use crate::models::Family;
use crate::observe::{pretraining, Observer};
use crate::rewards::{toy::ClusterReward, Identity};
use crate::step::{Aligner, Layout, Objective, RefPool, Reference, Settings, StepStats, Trainer};
use crate::sync::ShareError;
use crate::{plot, weights};
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::Device;
use bytes::Bytes;
use fav_comm::Collective;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;

/// The toy task, for any toy family.
pub(super) struct Toy;

impl super::Maker for Toy {
    fn make<'c, F: Family>(cfg: &Config, device: &Device) -> Box<dyn Task<'c> + 'c> {
        Box::new(ToyTask::<F> {
            cfg: cfg.clone(),
            device: device.clone(),
            base: None,
            base_path: String::new(),
            eval: None,
            aligner: None,
            best: BestWeights::default(),
            base_bytes: None,
        })
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub loss: f64,
    pub kl: f64,
    pub mmd2: f64,
    pub reward_mean: f64,
    pub wall_s: f64,
}

/// `summary.json` of a toy run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// The pretrained generator before alignment, against the tilted target.
    pub base: Scores,
    /// The aligned generator, against the tilted target.
    #[serde(rename = "final")]
    pub final_: Scores,
    /// How well the base generator fits the untilted data.
    pub base_vs_data: Scores,
    /// FAV's own target `p_base · r^β` against the tilted target: where alignment from this base
    /// heads (the amortised generator lands near these scores, not exactly on them).
    pub base_target: Scores,
    /// The evaluation with the lowest EMA of MMD² (spec §10.3), saved as `best.safetensors`.
    pub best: Option<BestEval>,
    pub steps: usize,
    pub seed: u64,
    pub world_size: usize,
    pub wall_s: f64,
    pub pretrain_s: f64,
    pub align_s: f64,
    pub base_checkpoint: String,
    /// The checkpoint step this process resumed from, if it resumed.
    pub resumed_from: Option<usize>,
}

/// Where the best weights were taken, and their scores against the tilted target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BestEval {
    pub step: usize,
    pub ema_mmd2: f64,
    pub kl: f64,
    pub mmd2: f64,
    pub reward_mean: f64,
}

/// Rank 0's best weights so far, kept across restarts: the EMA is replayed from the checkpoint's
/// metric lines and the weights come back from its `best.safetensors` part.
#[derive(Default)]
struct BestWeights {
    ema: EmaBest,
    record: Option<EvalRecord>,
    weights: Option<Bytes>,
}

impl BestWeights {
    const PART: &str = "best.safetensors";

    fn resume(r: &Resumed) -> Self {
        let Some(weights) = r.parts.get(Self::PART) else {
            tracing::warn!("checkpoint has no {}; the best weights are tracked from here on", Self::PART);
            return Self::default();
        };
        let mut best = Self::default();
        for rec in r.state.metrics.iter().filter_map(|l| serde_json::from_str::<EvalRecord>(l).ok()) {
            if best.ema.offer(rec.mmd2, rec.step) {
                best.record = Some(rec);
            }
        }
        best.weights = best.record.is_some().then(|| weights.clone());
        best
    }

    fn offer<M: Module>(&mut self, rec: &EvalRecord, net: &M) -> Result<(), JobError> {
        if self.ema.offer(rec.mmd2, rec.step) {
            self.record = Some(rec.clone());
            self.weights = Some(super::part_bytes(net)?);
        }
        Ok(())
    }

    fn eval(&self) -> Option<BestEval> {
        let (ema_mmd2, step) = self.ema.best()?;
        let r = self.record.as_ref()?;
        Some(BestEval { step, ema_mmd2, kl: r.kl, mmd2: r.mmd2, reward_mean: r.reward_mean })
    }
}

/// Rank 0's evaluation state: the evaluator and the base's scores.
struct Eval {
    evaluator: Evaluator,
    base_x: Vec<f32>,
    base: Scores,
    base_vs_data: Scores,
    base_target: Scores,
}

struct ToyTask<'c, F: Family> {
    cfg: Config,
    device: Device,
    base: Option<F>,
    base_path: String,
    eval: Option<Eval>,
    aligner: Option<Aligner<'c, F>>,
    best: BestWeights,
    base_bytes: Option<Bytes>,
}

impl<F: Family> ToyTask<'_, F> {
    fn aligner(&self) -> &Aligner<'_, F> {
        self.aligner.as_ref().expect("started")
    }
}

impl<'c, F: Family> Task<'c> for ToyTask<'c, F> {
    fn prepare(
        &mut self,
        resumed: Option<&Resumed>,
        obs: &mut dyn Observer,
        stop: &AtomicBool,
    ) -> Result<(), JobError> {
        let cfg = &self.cfg;
        let fresh = F::init(cfg, &self.device);
        let (base, from) = match resumed {
            Some(r) => (super::from_part(fresh, r, "base.safetensors")?, format!("checkpoint step {}", r.state.step)),
            None => super::load_or_train(
                fresh,
                &cfg.model.base,
                super::cache_path(cfg, F::NAME, &F::cache_key(cfg)),
                "base generator",
                || {
                    tracing::info!(family = F::NAME, steps = F::pretrain_steps(cfg), "pretraining the base generator");
                    let mut progress = pretraining(obs, stop, "pretrain", F::pretrain_steps(cfg));
                    F::pretrain(cfg, &self.device, &mut progress)
                },
            )?,
        };
        self.base = Some(base);
        self.base_path = from;
        Ok(())
    }

    fn start(&mut self, comm: &'c dyn Collective) -> Result<(), JobError> {
        let cfg = &self.cfg;
        let base = self.base.take().unwrap_or_else(|| F::init(cfg, &self.device));
        let base = super::share(base, "base generator", comm)?;
        let f = &cfg.fav;
        let layout = Layout::new(f.batch, f.conditions, comm.size(), comm.rank()).map_err(JobError::Layout)?;
        let pool = RefPool::draw(cfg.seed, f.ref_pool, cfg.model.sample_steps, &base, &self.device, comm).map_err(
            |e| match e {
                ShareError::Comm(e) => JobError::Comm(e),
                ShareError::Device(e) => JobError::device("drawing the reference pool")(e),
            },
        )?;
        let net = base.clone().to_device(&self.device.clone().autodiff()).train().set_require_grad(true);
        let settings = Settings::new(cfg, Objective::Fav, cfg.model.sample_steps);
        let conditions = f.conditions;
        self.aligner = Some(Aligner {
            net,
            reference: Reference::Pool { pool, batch: f.ref_batch },
            features: Rc::new(Identity),
            reward: Rc::new(ClusterReward::new(&self.device)),
            schedule: Box::new(move |_| vec![Condition::None; conditions]),
            optim: AdamConfig::new().with_epsilon(1e-8).init(),
            s: settings,
            layout,
            device: self.device.clone(),
            comm,
            skipped: 0,
        });
        if comm.rank() == 0 {
            self.base_bytes = Some(super::part_bytes(&base)?);
        }
        self.base = Some(base);
        Ok(())
    }

    fn baseline(&mut self) -> Result<Vec<String>, JobError> {
        let cfg = &self.cfg;
        let base = self.base.as_ref().expect("started");
        let scored = || {
            let (n, steps) = (cfg.eval.samples, cfg.model.sample_steps);
            let evaluator = Evaluator::new(cfg.seed, n, cfg.fav.beta, base.noise_dim(), steps, &self.device)?;
            let x = evaluator.samples(base)?;
            let (t, d) = (evaluator.score(&x, &evaluator.target)?, evaluator.score(&x, &evaluator.data)?);
            let limit = evaluator.score(&evaluator.base_target(base)?, &evaluator.target)?;
            Ok((evaluator, x, t, d, limit))
        };
        let (evaluator, x, t, d, limit) = scored().map_err(JobError::device("evaluating the base model"))?;
        tracing::info!(
            kl_to_data = d.kl,
            kl = t.kl,
            mmd2 = t.mmd2,
            reward = t.reward_mean,
            "base generator against the tilted target"
        );
        tracing::info!(
            kl = limit.kl,
            mmd2 = limit.mmd2,
            reward = limit.reward_mean,
            "FAV's own target p_base·r^β against the tilted target (where alignment from this base heads)"
        );
        self.eval = Some(Eval { evaluator, base_x: x, base: t, base_vs_data: d, base_target: limit });
        Ok(Vec::new())
    }

    fn resume(&mut self, resumed: &Resumed) {
        self.best = BestWeights::resume(resumed);
    }

    fn trainer(&mut self) -> &mut dyn Trainer {
        self.aligner.as_mut().expect("started")
    }

    fn evaluate(&mut self, step: usize, stats: &StepStats, wall_s: f64) -> Result<Evaluation, JobError> {
        let net = self.aligner().plain();
        let e = &self.eval.as_ref().expect("baseline first").evaluator;
        let s = e.samples(&net).and_then(|x| e.score(&x, &e.target));
        let s = s.map_err(JobError::device(format!("evaluating at step {step}")))?;
        let rec = EvalRecord { step, loss: stats.loss, kl: s.kl, mmd2: s.mmd2, reward_mean: s.reward_mean, wall_s };
        let finite = [rec.kl, rec.mmd2, rec.reward_mean].iter().all(|v| v.is_finite());
        if finite {
            self.best.offer(&rec, &net)?;
        }
        Ok(Evaluation {
            line: serde_json::to_string(&rec).expect("record serialises"),
            display: format!(
                "step {:>6}  kl {:.4}  mmd2 {:.5}  reward {:.4}  loss {:.3e}",
                rec.step, rec.kl, rec.mmd2, rec.reward_mean, rec.loss
            ),
            reward: rec.reward_mean,
            finite,
        })
    }

    fn checkpoint_parts(&mut self) -> Result<Vec<(String, Bytes)>, JobError> {
        let cfg = &self.cfg;
        let base = self.base_bytes.clone().expect("rank 0 keeps the base");
        let mut parts = vec![
            ("base.safetensors".to_string(), base),
            ("model.safetensors".to_string(), super::part_bytes(&self.aligner().plain())?),
            ExportSpec {
                files: vec!["model.safetensors".into()],
                model: serde_json::json!({
                    "family": cfg.model.family,
                    "sample_steps": cfg.model.sample_steps,
                    "weights": "model.safetensors",
                    "lora": null,
                }),
                reward: "8-gaussians cluster reward; FAV tilts by log r (spec §10.2)".into(),
            }
            .part(),
        ];
        if let Some(w) = &self.best.weights {
            parts.push((BestWeights::PART.to_string(), w.clone()));
        }
        Ok(parts)
    }

    fn finish(&mut self, out: &Path, metrics: &[String], run: &RunInfo) -> Result<Report, JobError> {
        let aligned = self.aligner().plain();
        weights::save(&aligned, &out.join("final.safetensors"))?;
        if let Some(w) = &self.best.weights {
            let path = out.join(BestWeights::PART);
            weights::write_atomic(&path, w).map_err(|e| dir_err(&path, e))?;
        }
        let e = self.eval.as_ref().expect("baseline first");
        let scored = e.evaluator.samples(&aligned).and_then(|x| Ok((e.evaluator.score(&x, &e.evaluator.target)?, x)));
        let (last, final_x) = scored.map_err(JobError::device("evaluating the aligned model"))?;
        let png = out.join("samples.png");
        plot::density_panels(
            &[("BASE", &e.base_x), ("ALIGNED", &final_x), ("TARGET", &e.evaluator.target)],
            &gaussians::centres(),
            &png,
        )
        .map_err(|err| dir_err(&png, err))?;
        let panels = [("LOSS", "loss"), ("REWARD", "reward_mean"), ("KL", "kl"), ("MMD2", "mmd2")];
        super::curves(metrics, &panels, &out.join("curves.png"))?;
        let summary = Summary {
            base: e.base,
            final_: last,
            base_vs_data: e.base_vs_data,
            base_target: e.base_target,
            best: self.best.eval(),
            steps: run.steps,
            seed: self.cfg.seed,
            world_size: run.world_size,
            wall_s: run.wall_s,
            pretrain_s: run.pretrain_s,
            align_s: run.align_s,
            base_checkpoint: self.base_path.clone(),
            resumed_from: run.resumed_from,
        };
        let text = format!(
            "base  : kl {:.4}  mmd2 {:.5}  reward {:.4}\nfinal : kl {:.4}  mmd2 {:.5}  reward {:.4}\n\
             {} steps in {:.1}s (pretrain {:.1}s, align {:.1}s) -> {}",
            e.base.kl,
            e.base.mmd2,
            e.base.reward_mean,
            last.kl,
            last.mmd2,
            last.reward_mean,
            run.steps,
            run.wall_s,
            run.pretrain_s,
            run.align_s,
            out.display()
        );
        Ok(Report { summary: serde_json::to_value(&summary).expect("summary serialises"), text })
    }
}
