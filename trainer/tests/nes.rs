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
    let exact = svgd::to_vec(&reward.grad(&x).expect("differentiable"));
    let key = NesKey { seed: 3, step: 7, condition: 0 };
    // σ = 1e-3 makes the smoothing bias negligible; 20 000 antithetic pairs put the standard
    // error near 1% of |∇R| per component.
    let est = svgd::to_vec(&nes_grad(&x, &[10, 11, 12, 13], key, 1e-3, 20_000, |p| reward.tilted(p)));
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
    let all = svgd::to_vec(&nes_grad(&x, &[10, 11, 12, 13], key, 0.01, 16, |p| reward.tilted(p)));
    // The same particle estimated alone (as another rank would) gives the same bits.
    let third = x.clone().slice_dim(0, 2..3);
    let alone = svgd::to_vec(&nes_grad(&third, &[12], key, 0.01, 16, |p| reward.tilted(p)));
    assert_eq!(&all[4..6], &alone[..]);
    // Another step, condition or particle seed draws other perturbations.
    for other in [NesKey { step: 8, ..key }, NesKey { condition: 2, ..key }] {
        let g = svgd::to_vec(&nes_grad(&third, &[12], other, 0.01, 16, |p| reward.tilted(p)));
        assert_ne!(g, alone);
    }
    let g = svgd::to_vec(&nes_grad(&third, &[99], key, 0.01, 16, |p| reward.tilted(p)));
    assert_ne!(g, alone);
}

/// The image rewards through the same seam: the learned score head's exact gradient and the NES
/// estimate that `reward_grad = "nes"` would use agree, and JPEG is a black box.
#[test]
fn image_rewards_through_the_reward_seam() {
    use fav_trainer::config::RewardGrad;
    use fav_trainer::images::encoder::{RewardModel, ScoreHead, EMBED};
    use fav_trainer::images::jpeg::Jpeg;
    use fav_trainer::reward::{field_grad, Nes};
    let dev = Device::flex();
    dev.seed(5);
    let head = ScoreHead::new(&RewardModel::new(&dev), &dev);
    let x = svgd::matrix((0..4 * EMBED).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect(), 4, EMBED, &dev);
    let seeds = [1, 2, 3, 4];
    let nes =
        |samples| Nes { particle_seeds: &seeds, key: NesKey { seed: 9, step: 0, condition: 0 }, sigma: 0.01, samples };
    let exact = svgd::to_vec(&field_grad(&head, &x, RewardGrad::Exact, nes(1)));
    let est = svgd::to_vec(&field_grad(&head, &x, RewardGrad::Nes, nes(4096)));
    // The head is linear, so NES has no smoothing bias and ĝ = (1/n)Σ(w·u)u: its cosine to w is
    // about sqrt(n/(n+D+1)) ≈ 0.99 for n = 4096, D = 64, within ±0.003.
    for i in 0..4 {
        let (e, g) = (&exact[i * EMBED..(i + 1) * EMBED], &est[i * EMBED..(i + 1) * EMBED]);
        let dot: f32 = e.iter().zip(g).map(|(a, b)| a * b).sum();
        let cos = dot / (e.iter().map(|a| a * a).sum::<f32>().sqrt() * g.iter().map(|b| b * b).sum::<f32>().sqrt());
        assert!(cos > 0.97, "particle {i}: cosine of NES to the exact gradient {cos}");
    }
    // The same gradient for every row (a linear head), and the reported value is the head's.
    assert!(exact[..EMBED] == exact[EMBED..2 * EMBED]);

    let px = svgd::matrix((0..2 * 3072).map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0).collect(), 2, 3072, &dev);
    assert!(Jpeg::Compress.grad(&px).is_none(), "JPEG has no gradient: FAV-B estimates it");
    let v = svgd::to_vec(&Jpeg::Incompress.value(&px));
    let w = svgd::to_vec(&Jpeg::Compress.value(&px));
    let row = svgd::to_vec(&px);
    assert_eq!(v[0], Jpeg::Incompress.reward(&row[..3072]));
    assert!(v.iter().zip(&w).all(|(a, b)| *a == -*b && *a > 0.0), "{v:?} {w:?}");
}
