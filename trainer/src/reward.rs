//! The reward seam (spec §1): values for reporting, and the per-particle gradient `g_i = ∇R(x_i)`
//! that SVGD multiplies by β. Whether `R` is `r` or `log r` is the adapter's business.

use burn::tensor::Tensor;

pub trait Reward {
    /// The reported reward `r(x_i)`, as `[N, 1]`.
    fn value(&self, x: &Tensor<2>) -> Tensor<2>;
    /// `g_i = ∇R(x_i)` on detached particles, as `[N, D]`.
    fn grad(&self, x: &Tensor<2>) -> Tensor<2>;
}
