//! Pretraining the toy base generators (spec §10.6), scaled to a CPU budget: a fixed data set,
//! seeded minibatches, periodic MMD² to the data, and the best EMA-MMD² weights kept. The loop
//! is shared; each family brings its model, optimiser and loss.

use crate::config::Config;
use crate::data::{gaussians, Condition};
use crate::metrics;
use crate::models::Generator;
use crate::noise::{self, Stream};
use crate::observe::{due, Progress};
use crate::tensors::{matrix, read, DeviceError};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use rand::Rng;

/// §10.1: pretraining data size and the fixed reference subset used to pick the best weights.
pub const DATA_POINTS: usize = 500_000;
pub const REFERENCE_POINTS: usize = 10_000;
/// Dimension of the toy data.
pub const DATA_DIM: usize = 2;

/// The pretraining data of a run and its seeded minibatches.
pub struct Data<'a> {
    cfg: &'a Config,
    points: Vec<f32>,
    ad: Device,
}

impl<'a> Data<'a> {
    /// The data of `cfg.seed`; seeds the device generator, from which the models then initialise.
    pub fn new(cfg: &'a Config, device: &Device) -> Self {
        device.seed(noise::rng(cfg.seed, Stream::Init, 0).random());
        Self { cfg, points: gaussians::sample_data(cfg.seed, 0, DATA_POINTS), ad: device.clone().autodiff() }
    }

    /// The autodiff device models train on.
    pub fn device(&self) -> &Device {
        &self.ad
    }

    /// Minibatch of `step`: `pretrain.batch` points drawn uniformly with replacement.
    pub fn batch(&self, step: usize) -> Tensor<2> {
        let n = self.cfg.pretrain.batch;
        let mut r = noise::rng(self.cfg.seed, Stream::Pretrain, step as u64);
        let rows: Vec<f32> = (0..n)
            .flat_map(|_| {
                let i = r.random_range(0..DATA_POINTS);
                [self.points[2 * i], self.points[2 * i + 1]]
            })
            .collect();
        matrix(rows, n, DATA_DIM, &self.ad)
    }

    /// `pretrain.batch × dim` standard normals of `step` (`salt` separates draws).
    pub fn normals(&self, step: usize, salt: u64, dim: usize) -> Tensor<2> {
        let n = self.cfg.pretrain.batch;
        let mut r = noise::rng(self.cfg.seed, Stream::Pretrain, (salt << 40) | step as u64);
        matrix(noise::normal_block(&mut r, n, dim), n, dim, &self.ad)
    }
}

/// Train `model` with `optim` for `pretrain.steps` steps of `loss(model, step)` (the tensor to
/// backpropagate and the loss to report), evaluating the generator `generator(model)` every
/// `pretrain.eval_every` steps; returns the plain generator with the best EMA of MMD² to the
/// data, `None` when `progress` asked to stop, `Err` when the device failed.
pub fn train<M: Module, G: Generator>(
    data: &Data,
    mut model: M,
    mut optim: ModuleOptimizer,
    mut loss: impl FnMut(&M, usize) -> Result<(Tensor<1>, f64), DeviceError>,
    generator: impl Fn(&M) -> G,
    progress: Progress,
) -> Result<Option<G>, DeviceError> {
    let cfg = data.cfg;
    let p = &cfg.pretrain;
    let device = data.ad.clone().without_autodiff();
    let reference = &data.points[..2 * REFERENCE_POINTS.min(DATA_POINTS)];
    let eval_n = cfg.eval.samples.min(REFERENCE_POINTS);
    let mut ema = metrics::EmaBest::default();
    let mut best: Option<G> = None;
    for step in 0..p.steps {
        let (l, reported) = loss(&model, step)?;
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(p.lr, model, grads);
        if progress(step + 1, reported).is_break() {
            return Ok(None);
        }
        if due(step + 1, p.eval_every, p.steps) {
            let net = generator(&model).valid();
            let dim = net.noise_dim();
            let z = noise::normal_rows(cfg.seed, Stream::Eval, 1 << 40..(1 << 40) + eval_n as u64, dim);
            let x = read(&net.sample(matrix(z, eval_n, dim, &device), Condition::None, cfg.model.sample_steps, None))?;
            let mmd = metrics::mmd2(&x, &reference[..2 * eval_n], cfg.seed);
            tracing::debug!(step = step + 1, mmd2 = mmd, "pretrain eval");
            if ema.offer(mmd, step + 1) {
                best = Some(net);
            }
        }
    }
    let ((mmd, at), net) = ema.best().zip(best).expect("pretrain.steps ≥ 1 evaluates at least once");
    tracing::info!(best_step = at, ema_mmd2 = mmd, "pretraining done; keeping the best EMA-MMD² weights");
    Ok(Some(net))
}
