//! MeanFlow (spec §10.6): a network `u(z, r, t)` on input `[z, t, t − r]`, t = 0 data, t = 1 noise.

use super::Mlp;
use burn::tensor::Tensor;

fn input(z: Tensor<2>, t: Tensor<2>, r: Tensor<2>) -> Tensor<2> {
    Tensor::cat(vec![z, t.clone(), t - r], 1)
}

fn column(value: f64, like: &Tensor<2>) -> Tensor<2> {
    Tensor::<2>::ones([like.dims()[0], 1], &like.device()).mul_scalar(value)
}

/// N-step sampling: `t_k = linspace(1, 0, N+1)`, `x ← x − (t_k − t_{k+1}) u(x, r = t_{k+1}, t = t_k)`.
pub fn sample(net: &Mlp, z: Tensor<2>, steps: usize) -> Tensor<2> {
    let mut x = z;
    for k in 0..steps {
        let t = 1.0 - k as f64 / steps as f64;
        let r = 1.0 - (k + 1) as f64 / steps as f64;
        let u = net.forward(input(x.clone(), column(t, &x), column(r, &x)));
        x = x - u.mul_scalar(t - r);
    }
    x
}

/// The pretraining loss at data `x0`, noise `x1` and times `t ≥ r` (each `[B, 1]`):
/// `u_tgt = v − (t − r) du/dt` with the JVP along `(v, 0, 1)`, MSE to `stopgrad(u_tgt)`,
/// adaptively weighted by `1/(stopgrad(ℓ) + 0.01)` on the batch mean.
pub fn loss(net: &Mlp, x0: Tensor<2>, x1: Tensor<2>, t: Tensor<2>, r: Tensor<2>) -> Tensor<1> {
    let one_minus_t = t.clone().neg().add_scalar(1.0);
    let xt = x0.clone() * one_minus_t + x1.clone() * t.clone();
    let v = x1 - x0;
    let inp = input(xt, t.clone(), r.clone());
    // Tangent of [z, t, t − r] along (dz = v, dr = 0, dt = 1) is [v, 1, 1].
    let ones = column(1.0, &v);
    let tangent = Tensor::cat(vec![v.clone(), ones.clone(), ones], 1);
    let (_, dudt) = net.forward_jvp(inp.clone().detach(), tangent.detach());
    let target = (v - dudt * (t - r)).detach();
    let u = net.forward(inp);
    let diff = u - target;
    let l = (diff.clone() * diff).mean();
    let w = l.clone().detach().add_scalar(0.01);
    l / w
}
