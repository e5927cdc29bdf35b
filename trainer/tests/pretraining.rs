//! Pretraining every registered family is a pure function of its seed. Its own test binary:
//! burn initialises parameters from the device's random generator, which parallel tests in the
//! same process would also draw from.

use burn::tensor::Device;
use fav_trainer::config::Config;
use fav_trainer::data::Condition;
use fav_trainer::models::{self, Family, FamilyVisitor};
use fav_trainer::noise::{self, Stream};
use fav_trainer::tensors::{matrix, to_vec};
use std::ops::ControlFlow;

/// Pretrains twice with one seed and once with another (a few steps) and compares samples.
struct Twice {
    cfg: Config,
    cond: Condition,
    seed: fn(&mut Config, u64),
}

impl FamilyVisitor for Twice {
    type Output = ();
    fn visit<F: Family>(self) {
        let dev = Device::flex();
        let sample = |seed: u64| {
            let mut cfg = self.cfg.clone();
            (self.seed)(&mut cfg, seed);
            let mut progress = |_, loss: f64| {
                assert!(loss.is_finite(), "{}: loss {loss}", F::NAME);
                ControlFlow::Continue(())
            };
            let g = F::pretrain(&cfg, &dev, &mut progress).unwrap().expect("nothing stops it");
            let dim = g.noise_dim();
            let z = matrix(noise::normal_rows(5, Stream::Eval, 0..2, dim), 2, dim, &dev);
            to_vec(&g.sample(z, self.cond, *F::STEPS.start(), None))
        };
        let a = sample(0);
        assert!(a == sample(0), "{}: same seed, same generator", F::NAME);
        assert!(a != sample(1), "{}: another seed, another generator", F::NAME);
    }
}

#[test]
fn pretraining_is_a_pure_function_of_the_seed() {
    let mut toy = Config::default();
    (toy.pretrain.steps, toy.pretrain.batch, toy.pretrain.eval_every, toy.eval.samples) = (3, 64, 1, 64);
    for name in models::toy::NAMES {
        models::toy::with_family(name, Twice { cfg: toy.clone(), cond: Condition::None, seed: |c, s| c.seed = s });
    }
    let mut image = Config::default();
    (image.image.gan_steps, image.image.gan_batch, image.image.meanflow_steps, image.image.meanflow_batch) =
        (2, 8, 2, 8);
    for name in models::image::NAMES {
        let seed = |c: &mut Config, s| c.image.pretrain_seed = s;
        models::image::with_family(name, Twice { cfg: image.clone(), cond: Condition::Class(3), seed });
    }
}
