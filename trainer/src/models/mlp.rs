//! The toy networks of spec §10.6: Linear layers with SiLU between them (width 256), as free
//! functions over the layer list so every toy model keeps its plain `layers.N.*` names.

use crate::activation::silu;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{activation::sigmoid, Device, Tensor};

/// Fresh layers for `dims = [in, hidden…, out]`.
pub fn linears(dims: &[usize], device: &Device) -> Vec<Linear> {
    dims.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect()
}

pub fn forward(layers: &[Linear], mut x: Tensor<2>) -> Tensor<2> {
    let last = layers.len() - 1;
    for (i, layer) in layers.iter().enumerate() {
        x = layer.forward(x);
        if i < last {
            x = silu(x);
        }
    }
    x
}

/// Forward pass and its forward-mode derivative along the input tangent `dx` (exact JVP):
/// `d(Wx + b) = W dx`, `d silu(h) = σ(h)(1 + h(1 − σ(h))) dh`. burn has reverse mode only,
/// and MeanFlow's target needs `du/dt` (§10.6).
pub fn forward_jvp(layers: &[Linear], mut x: Tensor<2>, mut dx: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let last = layers.len() - 1;
    for (i, layer) in layers.iter().enumerate() {
        x = layer.forward(x);
        dx = dx.matmul(layer.weight.val());
        if i < last {
            let s = sigmoid(x.clone());
            let ds = s.clone() * (x.clone() * (s.clone().neg().add_scalar(1.0))).add_scalar(1.0);
            dx = dx * ds;
            x = x * s;
        }
    }
    (x, dx)
}

/// A plain MLP (the VAE's encoder).
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    pub fn new(dims: &[usize], device: &Device) -> Self {
        Self { layers: linears(dims, device) }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        forward(&self.layers, x)
    }
}
