//! What every feature map and every reward must do, checked the same way for each (the tests
//! run it over every registered reward, as `comm`'s suite runs over every collective).

use super::{nes_grad, FeatureMap, NesKey, Reward};
use crate::data::Condition;
use crate::tensors::{read, to_vec};
use burn::tensor::Tensor;

/// Cosine similarity of two equally long vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(f64::MIN_POSITIVE)
}

/// Values are `[N, 1]`, finite, and the same bits when asked twice; the tilt too.
pub fn values_are_deterministic(reward: &dyn Reward, x: &Tensor<2>, cond: Condition) -> Result<(), String> {
    let n = x.dims()[0];
    let value = || reward.value(x, cond).and_then(|v| Ok((v.dims(), read(&v)?))).map_err(|e| e.to_string());
    let ((dims, a), (_, b)) = (value()?, value()?);
    if dims != [n, 1] {
        return Err(format!("value has shape {dims:?}, expected [{n}, 1]"));
    }
    if a.iter().any(|r| !r.is_finite()) {
        return Err(format!("non-finite values {a:?}"));
    }
    if a != b {
        return Err("two evaluations of the same particles differ".into());
    }
    let t = reward.tilted(x, cond).and_then(|t| read(&t)).map_err(|e| e.to_string())?;
    if t.len() != n || t.iter().any(|r| !r.is_finite()) {
        return Err(format!("tilt {t:?} is not N finite values"));
    }
    Ok(())
}

/// A differentiable reward's gradient agrees in direction with the NES estimate of its tilt
/// (§9.1), particle by particle: cosine above `min_cosine` with `samples` antithetic pairs at
/// scale `sigma`. A black box has no gradient and a finite estimate.
pub fn gradient_matches_nes(
    reward: &dyn Reward,
    x: &Tensor<2>,
    cond: Condition,
    sigma: f64,
    samples: usize,
    min_cosine: f64,
) -> Result<(), String> {
    let [n, d] = x.dims();
    let seeds: Vec<u64> = (0..n as u64).collect();
    let key = NesKey { seed: 11, step: 3, condition: 0 };
    let est = to_vec(&nes_grad(x, &seeds, key, sigma, samples, |p| reward.tilted(p, cond)).map_err(|e| e.to_string())?);
    if est.iter().any(|g| !g.is_finite()) {
        return Err("non-finite NES estimate".into());
    }
    let Some(exact) = reward.grad(x, cond) else { return Ok(()) };
    if exact.dims() != [n, d] {
        return Err(format!("gradient has shape {:?}, expected [{n}, {d}]", exact.dims()));
    }
    let exact = to_vec(&exact);
    for i in 0..n {
        let c = cosine(&exact[i * d..(i + 1) * d], &est[i * d..(i + 1) * d]);
        if c.is_nan() || c < min_cosine {
            return Err(format!("particle {i}: cosine of the NES estimate to the gradient {c:.4} < {min_cosine}"));
        }
    }
    Ok(())
}

/// φ keeps the rows, gives finite features, and passes gradients back to the samples.
pub fn features_are_differentiable(phi: &dyn FeatureMap, samples: &Tensor<2>) -> Result<(), String> {
    let n = samples.dims()[0];
    let s = samples.clone().autodiff().require_grad();
    let f = phi.features(s.clone());
    if f.dims()[0] != n {
        return Err(format!("{n} samples gave {} particles", f.dims()[0]));
    }
    if to_vec(&f).iter().any(|v| !v.is_finite()) {
        return Err("non-finite features".into());
    }
    let weights = Tensor::<2>::ones(f.dims(), &f.device());
    let grads = (f * weights).sum().backward();
    let g = s.grad(&grads).ok_or("no gradient reaches the samples")?;
    let g = to_vec(&g);
    if g.iter().any(|v| !v.is_finite()) || g.iter().all(|v| *v == 0.0) {
        return Err("the samples' gradient is zero or non-finite".into());
    }
    Ok(())
}
