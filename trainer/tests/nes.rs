//! FAV-B's antithetic NES estimator (spec §9.1) on the toy reward `R = log r`.

use burn::tensor::Device;
use fav_trainer::reward::{nes_grad, NesKey, Reward};
use fav_trainer::svgd;
use fav_trainer::toy::ClusterReward;

fn points(dev: &Device) -> burn::tensor::Tensor<2> {
    // Points between clusters, where ∇ log r is large and smooth.
    svgd::matrix(vec![0.5, 2.0, -1.0, 1.5, 2.2, -0.3, 0.0, -1.0], 4, 2, dev)
}

#[test]
fn nes_converges_to_the_exact_gradient() {
    let dev = Device::flex();
    let reward = ClusterReward::new(&dev);
    let x = points(&dev);
    let exact = svgd::to_vec(&reward.grad(&x));
    let key = NesKey { seed: 3, step: 7, condition: 0 };
    // σ = 1e-3 makes the smoothing bias negligible; 20 000 antithetic pairs put the standard
    // error near 1% of |∇R| per component.
    let est = svgd::to_vec(&nes_grad(&x, &[10, 11, 12, 13], key, 1e-3, 20_000, |p| reward.log_value(p)));
    for i in 0..4 {
        let (e, g) = (&exact[2 * i..2 * i + 2], &est[2 * i..2 * i + 2]);
        let err = ((e[0] - g[0]).powi(2) + (e[1] - g[1]).powi(2)).sqrt();
        let norm = (e[0].powi(2) + e[1].powi(2)).sqrt();
        assert!(err < 0.05 * norm, "particle {i}: exact {e:?}, NES {g:?}");
    }
}

#[test]
fn a_particles_estimate_depends_only_on_its_own_identity() {
    let dev = Device::flex();
    let reward = ClusterReward::new(&dev);
    let x = points(&dev);
    let key = NesKey { seed: 3, step: 7, condition: 1 };
    let all = svgd::to_vec(&nes_grad(&x, &[10, 11, 12, 13], key, 0.01, 16, |p| reward.log_value(p)));
    // The same particle estimated alone (as another rank would) gives the same bits.
    let third = x.clone().slice_dim(0, 2..3);
    let alone = svgd::to_vec(&nes_grad(&third, &[12], key, 0.01, 16, |p| reward.log_value(p)));
    assert_eq!(&all[4..6], &alone[..]);
    // Another step, condition or particle seed draws other perturbations.
    for other in [NesKey { step: 8, ..key }, NesKey { condition: 2, ..key }] {
        let g = svgd::to_vec(&nes_grad(&third, &[12], other, 0.01, 16, |p| reward.log_value(p)));
        assert_ne!(g, alone);
    }
    let g = svgd::to_vec(&nes_grad(&third, &[99], key, 0.01, 16, |p| reward.log_value(p)));
    assert_ne!(g, alone);
}
