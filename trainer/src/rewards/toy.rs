//! The 8-gaussians cluster reward of spec §10.2, on 2-D points.

use super::Reward;
use crate::data::{gaussians, Condition};
use crate::svgd;
use crate::tensors::{matrix, DeviceError};
use burn::tensor::{activation::softmax, Device, Tensor};

/// Softmax temperature of the cluster reward.
pub const ENERGY_TEMP: f64 = 1.0;
/// `log r` clamps r here (§10.2).
pub const LOG_R_CLAMP: f64 = 1e-10;

/// The cluster reward `r(x) = Σ_k softmax_k(−‖x − c_k‖²/T) ρ_k`, `ρ_k = k/7`, on tensors.
/// SVGD sees `R = log max(r, 1e-10)` (§1 table): [`Reward::grad`] is `∇r / r`, 0 where r < 1e-10.
pub struct ClusterReward {
    centres: Tensor<2>, // [8, 2]
    rho: Tensor<2>,     // [8, 1]
    c_sq: Tensor<2>,    // [1, 8]
}

impl ClusterReward {
    pub fn new(device: &Device) -> Self {
        let c: Vec<f32> = gaussians::centres().iter().flat_map(|p| p.map(|v| v as f32)).collect();
        let centres = matrix(c, 8, 2, device);
        let rho = matrix((0..8).map(|k| k as f32 / 7.0).collect(), 8, 1, device);
        let c_sq = svgd::row_sq_norms(&centres);
        Self { centres, rho, c_sq }
    }

    fn weights(&self, x: &Tensor<2>) -> Tensor<2> {
        let d2 = svgd::sq_dists(x, &self.centres, &self.c_sq);
        softmax(d2.mul_scalar(-1.0 / ENERGY_TEMP), 1)
    }

    /// `(r, ∇r)` as `[N,1]` and `[N,2]`.
    pub fn value_and_grad_r(&self, x: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let w = self.weights(x);
        let r = w.clone().matmul(self.rho.clone());
        // γ_k − γ̄ = 2(c_k − c̄)/T, so ∇r = (2/T)[(w∘ρ)·C − r·c̄] with c̄ = w·C.
        let c_bar = w.clone().matmul(self.centres.clone());
        let wr = w * self.rho.clone().transpose();
        let grad = (wr.matmul(self.centres.clone()) - c_bar * r.clone()).mul_scalar(2.0 / ENERGY_TEMP);
        (r, grad)
    }
}

impl Reward for ClusterReward {
    fn value(&self, x: &Tensor<2>, _: Condition) -> Result<Tensor<2>, DeviceError> {
        Ok(self.weights(x).matmul(self.rho.clone()))
    }

    /// `R = log max(r, 1e-10)`.
    fn tilted(&self, x: &Tensor<2>, cond: Condition) -> Result<Tensor<2>, DeviceError> {
        Ok(self.value(x, cond)?.clamp_min(LOG_R_CLAMP).log())
    }

    fn grad(&self, x: &Tensor<2>, _: Condition) -> Option<Tensor<2>> {
        let (r, grad_r) = self.value_and_grad_r(x);
        let live = r.clone().greater_equal_elem(LOG_R_CLAMP);
        let safe_r = r.clamp_min(LOG_R_CLAMP);
        Some((grad_r / safe_r).mask_fill(live.bool_not(), 0.0))
    }
}
