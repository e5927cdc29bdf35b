//! Keeping ranks in lock-step: gradients as one flat bucket for a single SUM all-reduce,
//! parameters broadcast from rank 0 at start, and a cheap digest that catches divergence.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData};
use fav_comm::{Collective, CommError};
use sha2::{Digest, Sha256};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data")
}

struct Flatten<'a> {
    grads: &'a GradientsParams,
    out: Vec<f32>,
}

impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        match self.grads.get::<D>(p.id) {
            Some(g) => self.out.extend(values(g)),
            None => self.out.extend(std::iter::repeat_n(0.0, p.val().shape().num_elements())),
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
        let dims = p.val().dims();
        let n: usize = dims.iter().product();
        let data = TensorData::new(self.flat[self.pos..self.pos + n].to_vec(), dims);
        self.pos += n;
        self.grads.register::<D>(p.id, Tensor::from_data(data, &self.device));
    }
}

/// Sum the gradients of `module` over all ranks with one all-reduce of one flat buffer
/// (parameter order is the module's, identical on every rank).
pub fn all_reduce_grads<M: Module>(
    module: &M,
    grads: GradientsParams,
    comm: &dyn Collective,
    device: &Device,
) -> Result<GradientsParams, CommError> {
    if comm.size() == 1 {
        return Ok(grads);
    }
    let mut f = Flatten { grads: &grads, out: Vec::new() };
    module.visit(&mut f);
    let mut flat = f.out;
    comm.all_reduce_sum(&mut flat)?;
    let mut u = Unflatten { flat: &flat, pos: 0, grads: GradientsParams::new(), device: device.clone() };
    module.visit(&mut u);
    Ok(u.grads)
}

struct Values(Vec<f32>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        self.0.extend(values(p.val()));
    }
}

/// SHA-256 of every parameter value in module order (first 8 bytes).
pub fn digest<M: Module>(module: &M) -> [u8; 8] {
    let mut v = Values(Vec::new());
    module.visit(&mut v);
    let mut h = Sha256::new();
    for x in &v.0 {
        h.update(x.to_le_bytes());
    }
    h.finalize()[..8].try_into().expect("8 bytes")
}

/// Compare parameter digests across ranks; `Err` names the ranks that differ from rank 0.
pub fn check_in_sync<M: Module>(module: &M, comm: &dyn Collective, step: usize) -> Result<(), String> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mine = digest(module);
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
pub fn broadcast_module<M: Module + ModuleSnapshot>(
    module: M,
    comm: &dyn Collective,
) -> Result<M, Box<dyn std::error::Error>> {
    if comm.size() == 1 {
        return Ok(module);
    }
    let mut bytes = Vec::new();
    if comm.rank() == 0 {
        let mut store = SafetensorsStore::from_bytes(None);
        module.save_into(&mut store)?;
        bytes = store.get_bytes()?;
    }
    let mut len = (bytes.len() as u64).to_le_bytes();
    comm.broadcast(&mut len, 0)?;
    bytes.resize(u64::from_le_bytes(len) as usize, 0);
    comm.broadcast(&mut bytes, 0)?;
    if comm.rank() == 0 {
        return Ok(module);
    }
    let mut module = module;
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    module.load_from(&mut store)?;
    Ok(module)
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
    use crate::generators::{Family, Sampler};

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
        let net = Sampler { family: Family::Vae, steps: 1 }.new_net(&Device::flex());
        check_in_sync(&net, &TwoRanks { peer: None }, 10).unwrap();
        let e = check_in_sync(&net, &TwoRanks { peer: Some(vec![1.0; 4]) }, 10).unwrap_err();
        assert!(e.contains("diverged at step 10") && e.contains("[1]"), "{e}");
    }

    #[test]
    fn gradient_bucket_round_trips() {
        // Flatten → (identity all-reduce) → unflatten restores every gradient exactly.
        let dev = Device::flex();
        let ad = dev.clone().autodiff();
        let net = Sampler { family: Family::Vae, steps: 1 }.new_net(&ad);
        let x = net.forward(Tensor::<2>::ones([4, 8], &ad));
        let grads = GradientsParams::from_grads((x.clone() * x).sum().backward(), &net);
        let mut f = Flatten { grads: &grads, out: Vec::new() };
        net.visit(&mut f);
        let flat = f.out;
        assert_eq!(flat.len(), net.num_params());
        let mut u = Unflatten { flat: &flat, pos: 0, grads: GradientsParams::new(), device: dev };
        net.visit(&mut u);
        let mut again = Flatten { grads: &u.grads, out: Vec::new() };
        net.visit(&mut again);
        assert_eq!(again.out, flat);
    }
}
