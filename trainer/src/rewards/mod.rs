//! The reward seams (spec §1, §7): a [`FeatureMap`] φ takes a generator's samples to the
//! particles FAV transports (points, embeddings, pixels), differentiably; a [`Reward`] gives, on
//! those particles and given the condition (class, prompt), the reported value `r`, the tilt `R`
//! (`q ∝ p_ref·exp(βR)`) and the per-particle gradient `g_i = ∇R(x_i)` that SVGD multiplies by
//! β — its own where it has one, else the antithetic zeroth-order estimate of §9.1 (FAV-B).
//! Whether `R` is `r` or `log r` is the reward's business; the SVGD core only sees `g` and β.
//!
//! Image rewards register in one place ([`image`]): a name → its feature map and reward.

pub mod clip;
pub mod conformance;
pub mod jpeg;
pub mod learned;
pub mod server;
pub mod toy;

use crate::config::RewardGrad;
use crate::data::Condition;
use crate::noise::{self, Stream};
use crate::tensors::{matrix, read, DeviceError};
use burn::tensor::Tensor;
use rand::Rng;
use rand_distr::StandardNormal;
use std::rc::Rc;

/// φ: samples `[n, values per sample]` (flattened, possibly carrying the generator's graph) →
/// particles `[n, D]`, differentiable: FAV's loss backpropagates through it into the generator.
pub trait FeatureMap {
    fn features(&self, samples: Tensor<2>) -> Tensor<2>;
}

/// φ = identity: the samples are the particles (the toy's points, FAV-B's pixels).
pub struct Identity;

impl FeatureMap for Identity {
    fn features(&self, samples: Tensor<2>) -> Tensor<2> {
        samples
    }
}

/// A reward on particles, given the condition they were generated for.
pub trait Reward {
    /// The reported reward `r(x_i)`, as `[N, 1]`. `Err`: the device failed making `x`, seen by a
    /// reward that reads its particles to the host (a black box: JPEG, a server); a reward
    /// computed on the device leaves a failure to the caller's readback.
    fn value(&self, x: &Tensor<2>, cond: Condition) -> Result<Tensor<2>, DeviceError>;
    /// `R(x_i)`, what the target tilts by (`q ∝ p_ref·exp(βR)`), as `[N, 1]`: `r` unless the
    /// reward says otherwise.
    fn tilted(&self, x: &Tensor<2>, cond: Condition) -> Result<Tensor<2>, DeviceError> {
        self.value(x, cond)
    }
    /// `∇R(x_i)` on detached particles, as `[N, D]`; `None` for a black box, whose gradient is
    /// estimated from [`Reward::tilted`] values instead.
    fn grad(&self, x: &Tensor<2>, cond: Condition) -> Option<Tensor<2>>;
    /// Whether [`Reward::grad`] is `None`: FAV-B must estimate the gradient, DRaFT cannot run.
    fn black_box(&self) -> bool {
        false
    }
}

/// `∇_x Σ_i f(x)_i` on detached particles: a differentiable reward's gradient.
pub fn autodiff_grad(x: &Tensor<2>, f: impl Fn(Tensor<2>) -> Tensor<2>) -> Tensor<2> {
    let v = x.clone().detach().autodiff().require_grad();
    let grads = f(v.clone()).sum().backward();
    v.grad(&grads).expect("the reward depends on its particles")
}

/// A named image reward: its feature map and the reward on those features.
pub struct ImageReward {
    pub features: Rc<dyn FeatureMap>,
    pub reward: Rc<dyn Reward>,
    /// Floats φ keeps per sample for the backward pass (`fav plan`).
    pub activation_floats: usize,
}

/// How a registered image reward is made.
#[derive(Clone, Copy, Debug)]
pub enum Maker {
    /// From the run's learned reward model (the evaluation encoder, which it may use or not).
    Own(fn(&learned::RewardModel) -> ImageReward),
    /// A published model's files (`reward.model`, …): CLIP-family features and a reward on them.
    Published(clip::score::Kind),
    /// The reward server (`reward.server`): pixel particles, a black box.
    Server,
}

impl Maker {
    /// Whether the reward has no gradient of its own (FAV-B estimates it; DRaFT cannot run).
    pub fn black_box(self) -> bool {
        match self {
            Maker::Own(make) => make(&learned::RewardModel::new(&burn::tensor::Device::flex())).reward.black_box(),
            Maker::Published(_) => false,
            Maker::Server => true,
        }
    }
}

/// The image rewards by config name (`image.reward`). One line registers a reward.
const IMAGE: &[(&str, Maker)] = &[
    ("learned", Maker::Own(learned::reward)),
    ("jpeg_compress", Maker::Own(jpeg::compress)),
    ("jpeg_incompress", Maker::Own(jpeg::incompress)),
    ("aesthetic", Maker::Published(clip::score::Kind::Aesthetic)),
    ("hpsv2", Maker::Published(clip::score::Kind::Hpsv2)),
    ("pickscore", Maker::Published(clip::score::Kind::PickScore)),
    ("clip_score", Maker::Published(clip::score::Kind::ClipScore)),
    ("nsfw", Maker::Published(clip::score::Kind::Nsfw)),
    ("server", Maker::Server),
];

/// What an image reward is built from.
pub struct Inputs<'a> {
    pub learned: &'a learned::RewardModel,
    pub cfg: &'a crate::config::RewardConfig,
    /// The prompt of each condition (the image task: its class names).
    pub prompts: Vec<String>,
    /// `[height, width]` of the RGB samples the feature map receives.
    pub image: [usize; 2],
    pub device: &'a burn::tensor::Device,
}

/// How the image reward called `name` is made.
pub fn image_maker(name: &str) -> Option<Maker> {
    IMAGE.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}

/// The published reward `kind` as `cfg` locates its files.
pub fn published_source(
    kind: clip::score::Kind,
    cfg: &crate::config::RewardConfig,
    prompts: Vec<String>,
    image: [usize; 2],
) -> clip::score::Source {
    let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    clip::score::Source {
        kind,
        model: std::path::PathBuf::from(&cfg.model),
        model_config: path(&cfg.model_config),
        head: path(&cfg.head),
        prompts,
        raw_prompts: cfg.raw_prompts,
        image,
    }
}

/// Build the image reward called `name` (`None`: no such reward; `Err`: its files or server
/// could not be used, named).
pub fn image(name: &str, i: &Inputs) -> Option<Result<ImageReward, String>> {
    Some(match image_maker(name)? {
        Maker::Own(make) => Ok(make(i.learned)),
        Maker::Published(kind) => {
            clip::score::build(&published_source(kind, i.cfg, i.prompts.clone(), i.image), i.device)
                .map_err(|e| e.to_string())
        }
        Maker::Server => server::Server::new(i.cfg.server.clone(), i.prompts.clone(), i.image).map(server::reward),
    })
}

/// The names [`image`] knows.
pub fn image_names() -> Vec<&'static str> {
    IMAGE.iter().map(|(n, _)| *n).collect()
}

/// Where each particle's NES noise comes from, and how much of it (§9.1).
#[derive(Clone, Copy, Debug)]
pub struct Nes<'a> {
    /// One seed per row of the particles (their global identity).
    pub particle_seeds: &'a [u64],
    pub key: NesKey,
    pub sigma: f64,
    pub samples: usize,
}

/// `g_i = ∇R(x_i)` for the field: the reward's gradient (`Exact`), or the NES estimate from its
/// values (`Nes`, FAV-B; also usable on a differentiable reward, to check the estimator).
/// Configuration refuses `Exact` for a black-box reward before any work. `Err`: the device failed
/// computing the estimate's values (the reward on `2·n` perturbed copies of every particle).
pub fn field_grad(
    reward: &dyn Reward,
    x: &Tensor<2>,
    cond: Condition,
    how: RewardGrad,
    nes: Nes,
) -> Result<Tensor<2>, DeviceError> {
    match how {
        RewardGrad::Exact => {
            Ok(reward.grad(x, cond).expect("validated: an exact gradient needs a differentiable reward"))
        }
        RewardGrad::Nes => nes_grad(x, nes.particle_seeds, nes.key, nes.sigma, nes.samples, |p| reward.tilted(p, cond)),
    }
}

/// Where each particle's randomness comes from: the run seed and the particle's global identity,
/// so an estimate never depends on which rank computes it or on its batch neighbours.
#[derive(Clone, Copy, Debug)]
pub struct NesKey {
    pub seed: u64,
    pub step: usize,
    pub condition: usize,
}

/// §9.1 antithetic NES estimate of `∇R` for each row of `x`:
/// `ĝ(x) = (1/n) Σ_k [(R(x + σu_k) − R(x − σu_k)) / (2σ)] u_k`, `u_k ~ N(0, I)` unnormalised,
/// with `u_k` of particle `p` drawn from `(seed, step, condition, p, k)`. `value` is the black
/// box (`[m, D] → [m, 1]`), called once on all `2·n·rows` perturbed points. `Err`: the device
/// failed making `x` or the values.
pub fn nes_grad(
    x: &Tensor<2>,
    particle_seeds: &[u64],
    key: NesKey,
    sigma: f64,
    n: usize,
    value: impl Fn(&Tensor<2>) -> Result<Tensor<2>, DeviceError>,
) -> Result<Tensor<2>, DeviceError> {
    let [rows, d] = x.dims();
    assert_eq!(rows, particle_seeds.len(), "one seed per particle");
    let xs = read(x)?;
    let mut u = Vec::with_capacity(rows * n * d);
    for &ps in particle_seeds {
        for k in 0..n {
            let tag = ((key.step as u64) << 40) ^ ((key.condition as u64) << 32) ^ (k as u64);
            let mut r = noise::rng(key.seed ^ ps.rotate_left(17), Stream::Nes, tag);
            u.extend((0..d).map(|_| r.sample::<f32, _>(StandardNormal)));
        }
    }
    // Rows [plus (rows·n) ; minus (rows·n)], particle-major.
    let mut pts = Vec::with_capacity(2 * u.len());
    for sign in [1.0f32, -1.0] {
        for i in 0..rows {
            for k in 0..n {
                let uk = &u[(i * n + k) * d..(i * n + k + 1) * d];
                pts.extend(xs[i * d..(i + 1) * d].iter().zip(uk).map(|(a, b)| a + sign * sigma as f32 * b));
            }
        }
    }
    let vals = read(&value(&matrix(pts, 2 * rows * n, d, &x.device()))?)?;
    let mut g = vec![0.0f32; rows * d];
    for i in 0..rows {
        for k in 0..n {
            let j = i * n + k;
            let w = (vals[j] - vals[rows * n + j]) as f64 / (2.0 * sigma) / n as f64;
            for c in 0..d {
                g[i * d + c] += (w * u[j * d + c] as f64) as f32;
            }
        }
    }
    Ok(matrix(g, rows, d, &x.device()))
}
