//! Pretraining of the base generators (spec §10.6), scaled to a CPU budget: a fixed data set,
//! seeded minibatches, periodic MMD² to the data, and the best EMA-MMD² weights kept.

use crate::config::Config;
use crate::generators::{drift, meanflow, vae::Vae, Family, Mlp, Sampler, DATA_DIM};
use crate::noise::{self, Stream};
use crate::{metrics, svgd, toy};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{activation::sigmoid, Device, Tensor};
use rand::Rng;
use std::ops::ControlFlow;

/// §10.1: pretraining data size and the fixed reference subset used to pick the best weights.
pub const DATA_POINTS: usize = 500_000;
pub const REFERENCE_POINTS: usize = 10_000;

/// Progress callback: (step, total, last loss); `Break` stops the training (a signal), which then
/// returns nothing.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, f64) -> ControlFlow<()>;

/// Train a base generator network for `sampler` from scratch; returns the plain (no-autodiff)
/// network with the best EMA-MMD² seen, or `None` when `progress` asked to stop.
pub fn pretrain(cfg: &Config, sampler: &Sampler, device: &Device, progress: Progress) -> Option<Mlp> {
    let ad = device.clone().autodiff();
    let p = &cfg.pretrain;
    device.seed(noise::rng(cfg.seed, Stream::Init, 0).random());
    let data = toy::sample_data(cfg.seed, 0, DATA_POINTS);
    let reference = &data[..2 * REFERENCE_POINTS.min(DATA_POINTS)];
    let eval_n = cfg.eval.samples.min(REFERENCE_POINTS);
    let eval_z = noise::normal_rows(cfg.seed, Stream::Eval, 1 << 40..(1 << 40) + eval_n as u64, sampler.noise_dim());

    let batch = |step: usize| -> Tensor<2> {
        let mut r = noise::rng(cfg.seed, Stream::Pretrain, step as u64);
        let rows: Vec<f32> = (0..p.batch)
            .flat_map(|_| {
                let i = r.random_range(0..DATA_POINTS);
                [data[2 * i], data[2 * i + 1]]
            })
            .collect();
        svgd::matrix(rows, p.batch, DATA_DIM, &ad)
    };
    let normals = |step: usize, salt: u64, dim: usize| -> Tensor<2> {
        let mut r = noise::rng(cfg.seed, Stream::Pretrain, (salt << 40) | step as u64);
        svgd::matrix(noise::normal_block(&mut r, p.batch, dim), p.batch, dim, &ad)
    };

    let mut best = Best::default();
    let mut evaluate = |net: &Mlp, step: usize| {
        let z = svgd::matrix(eval_z.clone(), eval_n, sampler.noise_dim(), device);
        let x = svgd::to_vec(&sampler.generate(net, z));
        let mmd = metrics::mmd2(&x, &reference[..2 * eval_n], cfg.seed);
        best.offer(net, mmd, step);
    };

    match sampler.family {
        Family::Vae => {
            let mut vae = Vae::new(sampler.new_net(&ad), &ad);
            let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
            for step in 0..p.steps {
                let loss = vae.loss(batch(step), normals(step, 1, sampler.noise_dim()));
                let lv = loss.clone().into_scalar::<f64>();
                let grads = GradientsParams::from_grads(loss.backward(), &vae);
                vae = optim.step(p.lr, vae, grads);
                progress(step + 1, p.steps, lv).continue_value()?;
                if crate::job::due(step + 1, p.eval_every, p.steps) {
                    evaluate(&vae.decoder.valid(), step + 1);
                }
            }
        }
        Family::Drift => {
            let mut net = sampler.new_net(&ad);
            let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
            for step in 0..p.steps {
                let x = sampler.generate(&net, normals(step, 1, sampler.noise_dim()));
                let xd = x.clone().detach().without_autodiff();
                let v = drift::field(&xd, &batch(step).without_autodiff(), drift::TEMP);
                let (lv, g) = svgd::regression_grad(&v, p.batch);
                let grads = GradientsParams::from_grads((x * g.autodiff()).sum().backward(), &net);
                net = optim.step(p.lr, net, grads);
                progress(step + 1, p.steps, lv).continue_value()?;
                if crate::job::due(step + 1, p.eval_every, p.steps) {
                    evaluate(&net.valid(), step + 1);
                }
            }
        }
        Family::Meanflow => {
            let mut net = sampler.new_net(&ad);
            // AdamW(0.9, 0.95), wd 0, clip 1.0 (§10.6).
            let mut optim = AdamConfig::new()
                .with_beta_2(0.95)
                .with_epsilon(1e-8)
                .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
                .init();
            for step in 0..p.steps {
                let (t, r) = meanflow_times(cfg.seed, step, p.batch, &ad);
                let loss = meanflow::loss(&net, batch(step), normals(step, 1, DATA_DIM), t, r);
                let lv = loss.clone().into_scalar::<f64>();
                let grads = GradientsParams::from_grads(loss.backward(), &net);
                net = optim.step(p.lr, net, grads);
                progress(step + 1, p.steps, lv).continue_value()?;
                if crate::job::due(step + 1, p.eval_every, p.steps) {
                    evaluate(&net.valid(), step + 1);
                }
            }
        }
    }
    let ((mmd, at), net) = best.ema.best().zip(best.net).expect("pretrain.steps ≥ 1 evaluates at least once");
    tracing::info!(best_step = at, ema_mmd2 = mmd, "pretraining done; keeping the best EMA-MMD² weights");
    Some(net)
}

/// (t, r): two logistic-normal draws `sigmoid(N(−0.4, 1))`, t = max, r = min, and r = t with
/// probability 0.5 (§10.6).
pub(crate) fn meanflow_times(seed: u64, step: usize, n: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut rng = noise::rng(seed, Stream::Pretrain, (2 << 40) | step as u64);
    let a = noise::normal_block(&mut rng, n, 2);
    let equal: Vec<f32> = (0..n).map(|_| if rng.random::<f64>() < 0.5 { 1.0 } else { 0.0 }).collect();
    let ab = sigmoid(svgd::matrix(a, n, 2, device).sub_scalar(0.4));
    let (x, y) = (ab.clone().slice_dim(1, 0..1), ab.slice_dim(1, 1..2));
    let t = x.clone().max_pair(y.clone());
    let r = x.min_pair(y);
    let eq = svgd::matrix(equal, n, 1, device);
    let r = r.clone() + (t.clone() - r) * eq;
    (t, r)
}

/// The weights with the best EMA-MMD² so far.
#[derive(Default)]
struct Best {
    ema: metrics::EmaBest,
    net: Option<Mlp>,
}

impl Best {
    fn offer(&mut self, net: &Mlp, mmd: f64, step: usize) {
        tracing::debug!(step, mmd2 = mmd, "pretrain eval");
        if self.ema.offer(mmd, step) {
            self.net = Some(net.clone());
        }
    }
}
