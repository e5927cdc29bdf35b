//! Keeping ranks in lock-step: gradients as one flat bucket for a single SUM all-reduce,
//! parameters broadcast from rank 0 at start, and a cheap digest that catches divergence.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use bytes::Bytes;
use fav_comm::{Collective, CommError};
use sha2::{Digest, Sha256};

use crate::tensors::{read, DeviceError};

/// Why rows or gradients could not be shared: this device could not give them back, or the
/// collective failed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Trainable parameters only: a LoRA-adapted network's frozen base gets no gradient, must not be
/// sent over the wire and must not reach the optimiser (weight decay would move it).
fn trainable<const D: usize>(p: &Param<Tensor<D>>) -> bool {
    p.val().is_require_grad()
}

/// Values read from a module's tensors in module order, or the first read that failed.
struct Collect(Result<Vec<f32>, DeviceError>);

impl Collect {
    fn push<const D: usize>(&mut self, t: &Tensor<D>) {
        if let Ok(out) = &mut self.0 {
            match read(t) {
                Ok(v) => out.extend(v),
                Err(e) => self.0 = Err(e),
            }
        }
    }
}

struct Flatten<'a> {
    grads: &'a GradientsParams,
    out: Collect,
}

impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if !trainable(p) {
            return;
        }
        match (self.grads.get::<D>(p.id), &mut self.out.0) {
            (Some(g), _) => self.out.push(&g),
            (None, Ok(out)) => out.extend(std::iter::repeat_n(0.0, p.val().shape().num_elements())),
            (None, Err(_)) => {}
        }
    }
}

struct Unflatten<'a> {
    flat: &'a [f32],
    pos: usize,
    grads: GradientsParams,
    device: Device,
}

impl ModuleVisitor for Unflatten<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if !trainable(p) {
            return;
        }
        let dims = p.val().dims();
        let n: usize = dims.iter().product();
        let data = TensorData::new(self.flat[self.pos..self.pos + n].to_vec(), dims);
        self.pos += n;
        self.grads.register::<D>(p.id, Tensor::from_data(data, &self.device));
    }
}

/// The trainable gradients of `module` as one flat buffer in module order.
fn flatten<M: Module>(module: &M, grads: &GradientsParams) -> Result<Vec<f32>, DeviceError> {
    let mut f = Flatten { grads, out: Collect(Ok(Vec::new())) };
    module.visit(&mut f);
    f.out.0
}

fn unflatten<M: Module>(module: &M, flat: &[f32], device: &Device) -> GradientsParams {
    let mut u = Unflatten { flat, pos: 0, grads: GradientsParams::new(), device: device.clone() };
    module.visit(&mut u);
    u.grads
}

/// Sum the gradients of `module` over all ranks with one all-reduce of one flat buffer
/// (parameter order is the module's, identical on every rank), then, when `max_norm > 0`, scale
/// them so that their **global** L2 norm is at most `max_norm` (spec §6.6; burn's own clipping
/// is per tensor). The norm is of the summed gradient, so it is the same on every rank.
/// Returns the gradients and their norm before clipping.
pub fn all_reduce_grads<M: Module>(
    module: &M,
    grads: GradientsParams,
    comm: &dyn Collective,
    device: &Device,
    max_norm: f64,
) -> Result<(GradientsParams, f64), ShareError> {
    let mut flat = flatten(module, &grads)?;
    if comm.size() > 1 {
        comm.all_reduce_sum(&mut flat)?;
    }
    let norm = flat.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let c = (max_norm / norm) as f32;
        flat.iter_mut().for_each(|g| *g *= c);
    } else if comm.size() == 1 {
        return Ok((grads, norm));
    }
    Ok((unflatten(module, &flat, device), norm))
}

/// Whether every trainable parameter of `module` is finite.
pub fn all_finite<M: Module>(module: &M) -> Result<bool, DeviceError> {
    struct Trainable(Collect);
    impl ModuleVisitor for Trainable {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if trainable(p) {
                self.0.push(&p.val());
            }
        }
    }
    let mut v = Trainable(Collect(Ok(Vec::new())));
    module.visit(&mut v);
    Ok(v.0 .0?.iter().all(|v| v.is_finite()))
}

/// SHA-256 of every parameter value in module order (first 8 bytes), one tensor read at a time: a
/// frozen base of billions of parameters never sits on the host whole.
pub fn digest<M: Module>(module: &M) -> Result<[u8; 8], DeviceError> {
    let mut h = Sha256::new();
    crate::tensors::read_each_param(module, |_, v| v.iter().for_each(|x| h.update(x.to_le_bytes())))?;
    Ok(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// Compare parameter digests ([`digest`]) across ranks; `Err` names the ranks that differ from
/// rank 0.
pub fn check_in_sync(mine: [u8; 8], comm: &dyn Collective, step: usize) -> Result<(), String> {
    if comm.size() == 1 {
        return Ok(());
    }
    let as_f32: Vec<f32> = mine.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as f32).collect();
    let all = comm.all_gather(&as_f32).map_err(|e| e.to_string())?;
    let blocks: Vec<&[f32]> = all.chunks(as_f32.len()).collect();
    let differ: Vec<usize> = (1..blocks.len()).filter(|&r| blocks[r] != blocks[0]).collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(format!("parameters diverged at step {step}: ranks {differ:?} differ from rank 0"))
    }
}

/// Make every rank's `module` equal to rank 0's, sent as safetensors bytes.
pub fn broadcast_module<M: Module>(module: M, comm: &dyn Collective) -> Result<M, String> {
    if comm.size() == 1 {
        return Ok(module);
    }
    let mut bytes = if comm.rank() == 0 { crate::weights::to_bytes(&module)? } else { Vec::new() };
    broadcast_bytes(&mut bytes, comm).map_err(|e| e.to_string())?;
    if comm.rank() == 0 {
        return Ok(module);
    }
    crate::weights::from_bytes(module, &bytes, "rank 0's broadcast").map_err(|e| e.to_string())
}

/// Rank 0's `bytes` (any length) on every rank.
fn broadcast_bytes(bytes: &mut Vec<u8>, comm: &dyn Collective) -> Result<(), CommError> {
    let mut len = (bytes.len() as u64).to_le_bytes();
    comm.broadcast(&mut len, 0)?;
    bytes.resize(u64::from_le_bytes(len) as usize, 0);
    comm.broadcast(bytes, 0)
}

/// Send rank 0's optional resume state (step, network record, optimiser state) to every rank.
pub fn share_resume(
    comm: &dyn Collective,
    mine: Option<(usize, &Bytes, &Bytes)>,
) -> Result<Option<(usize, Bytes, Bytes)>, CommError> {
    if comm.size() == 1 {
        return Ok(mine.map(|(s, m, o)| (s, m.clone(), o.clone())));
    }
    let mut step = [mine.map_or(0, |(s, _, _)| s as u64 + 1).to_le_bytes()].concat();
    comm.broadcast(&mut step, 0)?;
    let step = u64::from_le_bytes(step.try_into().expect("8 bytes"));
    if step == 0 {
        return Ok(None);
    }
    let mut model = mine.map_or_else(Vec::new, |(_, m, _)| m.to_vec());
    let mut optim = mine.map_or_else(Vec::new, |(_, _, o)| o.to_vec());
    broadcast_bytes(&mut model, comm)?;
    broadcast_bytes(&mut optim, comm)?;
    Ok(Some((step as usize - 1, Bytes::from(model), Bytes::from(optim))))
}

/// All ranks' rows of a `[K/G, D]` block, in rank order, on `device`.
pub fn gather_rows(own: &Tensor<2>, comm: &dyn Collective, device: &Device) -> Result<Tensor<2>, ShareError> {
    if comm.size() == 1 {
        return Ok(own.clone());
    }
    let [rows, d] = own.dims();
    let all = comm.all_gather(&read(own)?)?;
    Ok(crate::tensors::matrix(all, rows * comm.size(), d, device))
}

/// Whether any rank has `flag` set (a stop was requested): every rank gets the same answer at
/// the same step, so all of them stop together.
pub fn any_rank(flag: bool, comm: &dyn Collective) -> Result<bool, fav_comm::CommError> {
    if comm.size() == 1 {
        return Ok(flag);
    }
    let mut v = [f32::from(u8::from(flag))];
    comm.all_reduce_sum(&mut v)?;
    Ok(v[0] > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::models::toy::VaeDecoder;
    use crate::models::Family;

    /// Rank 0 of a two-rank world whose peer reports `peer` as its digest block.
    struct TwoRanks {
        peer: Option<Vec<f32>>,
    }

    impl Collective for TwoRanks {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
            out[..local.len()].copy_from_slice(local);
            out[local.len()..].copy_from_slice(self.peer.as_deref().unwrap_or(local));
            Ok(())
        }
        fn all_reduce_sum(&self, _: &mut [f32]) -> Result<(), CommError> {
            Ok(())
        }
        fn broadcast(&self, _: &mut [u8], _: usize) -> Result<(), CommError> {
            Ok(())
        }
        fn barrier(&self) -> Result<(), CommError> {
            Ok(())
        }
    }

    #[test]
    fn divergence_is_detected_and_named() {
        let net = VaeDecoder::init(&Config::default(), &Device::flex());
        check_in_sync(digest(&net).unwrap(), &TwoRanks { peer: None }, 10).unwrap();
        let e = check_in_sync(digest(&net).unwrap(), &TwoRanks { peer: Some(vec![1.0; 4]) }, 10).unwrap_err();
        assert!(e.contains("diverged at step 10") && e.contains("[1]"), "{e}");
    }

    #[test]
    fn the_digest_hashes_every_value_in_module_order() {
        // Read tensor by tensor, it must still be the hash of the whole parameter vector.
        let net = VaeDecoder::init(&Config::default(), &Device::flex());
        let mut h = Sha256::new();
        crate::tensors::each_param(&net, |_, _, t| {
            crate::tensors::to_vec(&t).iter().for_each(|x| h.update(x.to_le_bytes()));
        });
        assert_eq!(digest(&net).unwrap()[..], h.finalize()[..8]);
    }

    #[test]
    fn gradient_bucket_round_trips() {
        // Flatten → (identity all-reduce) → unflatten restores every gradient exactly.
        let dev = Device::flex();
        let ad = dev.clone().autodiff();
        let net = VaeDecoder::init(&Config::default(), &ad);
        let x = crate::models::mlp::forward(&net.layers, Tensor::<2>::ones([4, 8], &ad));
        let grads = GradientsParams::from_grads((x.clone() * x).sum().backward(), &net);
        let flat = flatten(&net, &grads).unwrap();
        assert_eq!(flat.len(), net.num_params());
        assert_eq!(flatten(&net, &unflatten(&net, &flat, &dev)).unwrap(), flat);
    }

    #[test]
    fn clipping_bounds_the_global_norm_and_skips_frozen_weights() {
        use crate::lora::{adapt, layers, LoraConfig, LoraInit, Targets};
        let dev = Device::flex();
        let ad = dev.clone().autodiff();
        let base = VaeDecoder { layers: vec![burn::nn::LinearConfig::new(3, 2).init(&ad)] };
        let targets = Targets::parse(&["all".to_string()], &layers(&base)).unwrap();
        let net = adapt(base, LoraConfig { rank: 1, alpha: 1.0, init: LoraInit::Gaussian }, &targets, 1, &dev).train();
        let out = |net: &VaeDecoder| crate::models::mlp::forward(&net.layers, Tensor::<2>::ones([4, 3], &ad));
        let x = out(&net);
        let grads = GradientsParams::from_grads((x.clone() * x).sum().backward(), &net);
        let one = fav_comm::SingleProcess;
        // Only the adapter (A: 3×1, B: 1×2) is in the bucket, not the frozen 3×2 weight and bias.
        assert_eq!(flatten(&net, &grads).unwrap().len(), 5);
        let (_, norm) = all_reduce_grads(&net, grads, &one, &dev, 0.0).unwrap();
        assert!(norm > 0.0);
        let x = out(&net);
        let grads = GradientsParams::from_grads((x.clone() * x).sum().backward(), &net);
        let (clipped, before) = all_reduce_grads(&net, grads, &one, &dev, norm / 4.0).unwrap();
        assert_eq!(before, norm);
        let after = flatten(&net, &clipped).unwrap().iter().map(|&g| f64::from(g).powi(2)).sum::<f64>().sqrt();
        assert!((after - norm / 4.0).abs() < 1e-6 * norm, "global norm {after} after clipping to {}", norm / 4.0);
    }
}
