//! SiLU, `x·σ(x)`, as one operation with its own backward pass.
//!
//! burn composes SiLU as `x * sigmoid(x)`: on the CPU backend its sigmoid is a scalar, one-thread
//! loop over libm's `expf`, run again in the backward pass, and the product keeps both factors.
//! For the toy MLPs (three 2048×256 activations per pass) that was a quarter of the step. Here
//! the CPU backend (Flex) gets a fused kernel (vectorised exp, rows over the thread pool) and
//! autodiff one node that keeps only the input; the backward is
//! `g·σ(x)·(1 + x·(1 − σ(x)))`. Other backends (CUDA) and other dtypes keep burn's composition.

use crate::cpu::{dispatch, exp_neg};
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, retro_forward::RetroForward, state::BackwardStates};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, DispatchDevice, Flex, Scalar};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// SiLU and its backward as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait SiluBackend: Backend {
    /// `x·σ(x)`.
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::<Self>(x)
    }

    /// `grad·σ(x)·(1 + x·(1 − σ(x)))`.
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_backward::<Self>(x, grad)
    }
}

fn composed<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(x.clone());
    B::float_mul(x, s)
}

fn composed_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(x.clone());
    let one_minus = B::float_add_scalar(B::float_neg(s.clone()), Scalar::from(1.0));
    let t = B::float_add_scalar(B::float_mul(x, one_minus), Scalar::from(1.0));
    B::float_mul(grad, B::float_mul(s, t))
}

/// SiLU on any tensor: the fused operation on the CPU backend, burn's composition elsewhere.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if matches!(x.device().as_dispatch().clone().inner(), DispatchDevice::Flex(_)) {
        Tensor::from_dispatch(<burn::backend::Dispatch as SiluBackend>::silu(x.into_dispatch()))
    } else {
        burn::tensor::activation::silu(x)
    }
}

/// `σ(x)` as burn's CPU backend writes it (`1/(1 + e^{−x})`, or `e^x/(1 + e^x)` below 0, so
/// nothing overflows), with the vectorisable exp.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_neg(-x.abs());
    let num = if x >= 0.0 { 1.0 } else { e };
    num / (1.0 + e)
}

#[inline(always)]
fn silu_task(x: &[f32], out: &mut [MaybeUninit<f32>]) {
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(v * sigmoid(v));
    }
}

/// `grad ← grad·σ(x)·(1 + x·(1 − σ(x)))`, in place.
#[inline(always)]
fn silu_backward_task(x: &[f32], grad: &mut [f32]) {
    for (g, &v) in grad.iter_mut().zip(x) {
        let s = sigmoid(v);
        *g *= s * (1.0 + v * (1.0 - s));
    }
}

dispatch!(silu_rows, silu_task, (x: &[f32], out: &mut [MaybeUninit<f32>]));
dispatch!(silu_backward_rows, silu_backward_task, (x: &[f32], grad: &mut [f32]));

/// Elements per rayon task: element-wise, so the split changes no bit.
const CHUNK: usize = 1 << 14;

/// `t`, or a contiguous copy of a strided view (a transpose): every f32 input takes the kernel.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The whole storage of `t` when it is f32, contiguous and starts at its first element.
fn whole_f32(t: &FlexTensor) -> Option<&[f32]> {
    t.as_slice::<f32>().filter(|s| s.len() * 4 == t.bytes().len())
}

impl SiluBackend for Flex {
    fn silu(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return composed::<Self>(x);
        }
        let x = contiguous(x);
        let src = x.as_slice::<f32>().expect("contiguous f32");
        let n = src.len();
        let mut out = Vec::with_capacity(n);
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(o, s)| silu_rows(s, o));
        // SAFETY: the kernel wrote every one of the n elements just above.
        unsafe { out.set_len(n) };
        let layout = Layout::contiguous(x.layout().shape().clone());
        FlexTensor::new(burn::tensor::Bytes::from_elems(out), layout, DType::F32)
    }

    fn silu_backward(x: FlexTensor, mut grad: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.layout().shape() != grad.layout().shape() {
            return composed_backward::<Self>(x, grad);
        }
        let x = contiguous(x);
        let src = x.as_slice::<f32>().expect("contiguous f32");
        if whole_f32(&grad).is_none() {
            grad = grad.to_contiguous();
        }
        let run = |g: &mut [f32]| {
            g.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(g, s)| silu_backward_rows(s, g))
        };
        // In place when this node holds the only reference to the incoming gradient.
        if let Some(g) = grad.try_storage_mut::<f32>() {
            run(g);
            return grad;
        }
        let mut out = whole_f32(&grad).expect("whole f32").to_vec();
        run(&mut out);
        FlexTensor::new(
            burn::tensor::Bytes::from_elems(out),
            Layout::contiguous(grad.layout().shape().clone()),
            DType::F32,
        )
    }
}

/// Recomputes the output from the input when a checkpointing strategy dropped it.
#[derive(Debug, Clone)]
struct RetroSilu<B> {
    input: NodeId,
    _backend: PhantomData<B>,
}

impl<B: Backend + SiluBackend> RetroForward for RetroSilu<B> {
    fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
        let x = states.get_state::<FloatTensor<B>>(&self.input);
        states.save(out_node, B::silu(x))
    }
}

/// The autodiff node: keeps the input, nothing else.
#[derive(Debug)]
struct SiluNode;

impl<B: Backend + SiluBackend> Backward<B, 1> for SiluNode {
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let x = checkpointer.retrieve_node_output(ops.state);
        unary::<B, _>(ops.parents, ops.node, grads, |grad| B::silu_backward(x, grad));
    }
}

impl<B: Backend + SiluBackend, C: CheckpointStrategy> SiluBackend for Autodiff<B, C> {
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let retro = RetroSilu::<B> { input: x.id(), _backend: PhantomData };
        match SiluNode.prepare::<C>([x.node()]).memory_bound().retro_forward(retro).parents([&x]).stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::silu(x.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::silu(x.into_primitive())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::silu;
    use crate::tensors::{matrix, to_vec};
    use burn::backend::GradientCheckpointingStrategy;
    use burn::tensor::{DType, Device};

    fn sigmoid64(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// The fused operation against float64, forward and gradient, through autodiff with and
    /// without burn's gradient checkpointing. Tolerances: the exp is within 2e-7 relative and the
    /// division and product add one rounding each, so 5e-7 relative forward (plus 1e-35 where
    /// the exp clamps, below −87); the gradient's `1 − σ(x)` rounds by up to 6e-8 absolute and is
    /// multiplied by x, so 1e-6·(1 + |x|) times the cotangent.
    #[test]
    fn matches_float64_forward_and_gradient() {
        let (rows, cols) = (100, 400);
        let xs: Vec<f32> = (0..rows * cols).map(|i| (i as f32 - 20_000.0) * 0.005).collect(); // [−100, 100)
        let ws: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).cos()).collect();
        for strategy in [GradientCheckpointingStrategy::Disabled, GradientCheckpointingStrategy::Balanced] {
            let ad = Device::flex().autodiff();
            let x = matrix(xs.clone(), rows, cols, &ad).with_gradient_checkpointing_strategy(strategy).require_grad();
            let y = silu(x.clone());
            let w = matrix(ws.clone(), rows, cols, &ad).with_gradient_checkpointing_strategy(strategy);
            let grads = (y.clone() * w).sum().backward();
            let (y, g) = (to_vec(&y), to_vec(&x.grad(&grads).expect("x requires grad")));
            for (i, (&xi, &wi)) in xs.iter().zip(&ws).enumerate() {
                let (x64, w64) = (xi as f64, wi as f64);
                let want = x64 * sigmoid64(x64);
                assert!((y[i] as f64 - want).abs() <= 5e-7 * want.abs() + 1e-35, "silu({xi}) = {} vs {want}", y[i]);
                let s = sigmoid64(x64);
                let want = w64 * s * (1.0 + x64 * (1.0 - s));
                let tol = 1e-6 * (1.0 + x64.abs()) * w64.abs();
                assert!((g[i] as f64 - want).abs() <= tol, "{strategy:?}: grad at {xi} = {} vs {want}", g[i]);
            }
        }
    }

    /// An offset or strided view (the gated halves of a GLU) gives the same bits as its
    /// contiguous copy; bf16 takes burn's composition and stays bf16.
    #[test]
    fn views_and_other_dtypes() {
        let dev = Device::flex();
        let xs: Vec<f32> = (0..64 * 48).map(|i| (i as f32 * 0.71).sin() * 9.0).collect();
        let x = matrix(xs, 64, 48, &dev);
        for view in [x.clone().narrow(1, 24, 24), x.clone().transpose(), x.clone().narrow(0, 5, 30)] {
            let copy = matrix(to_vec(&view), view.dims()[0], view.dims()[1], &dev);
            assert_eq!(to_vec(&silu(view)), to_vec(&silu(copy)));
        }
        let half = x.clone().cast(DType::BF16);
        let y = silu(half.clone());
        assert_eq!(y.dtype(), DType::BF16);
        let want = burn::tensor::activation::silu(half);
        assert_eq!(to_vec(&y.cast(DType::F32)), to_vec(&want.cast(DType::F32)));
    }
}
