//! Tensors to and from host vectors.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};

/// A `[rows, cols]` tensor from row-major f32 values.
pub fn matrix(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// The device failed computing a tensor: out of memory, or a kernel that faulted. A GPU runtime
/// (cubecl) attaches such a failure to the buffers the failed work did not write and reports it
/// when one of them is read, so it surfaces at the next readback: [`read`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(pub String);

impl DeviceError {
    /// Whether the device ran out of memory (as cubecl words it), rather than faulted.
    pub fn out_of_memory(&self) -> bool {
        let m = self.0.to_ascii_lowercase();
        m.contains("out of device memory") || m.contains("out-of-memory") || m.contains("out of memory")
    }
}

/// Row-major f32 values of a tensor, or the failure of the device work that made it. The
/// readbacks of a job's step and evaluation use this, so a GPU failure ends the job with an
/// error naming the step rather than a panic.
pub fn read<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>, DeviceError> {
    let data = t.try_to_data().map_err(|e| DeviceError(e.to_string()))?;
    Ok(data.convert::<f32>().try_into_vec::<f32>().expect("f32 tensor data"))
}

/// `f`'s result, or its panic as a [`DeviceError`] naming `what`. For the readbacks a dependency
/// makes itself and panics on (burn's optimiser state, read by `to_record`): a failed device then
/// ends the job with an error instead of an unwinding thread. Any partial state `f` leaves is
/// dropped with the job, which stops on the error.
pub fn catching<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, DeviceError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        DeviceError(format!("{what}: {}", msg.as_deref().unwrap_or("panicked")))
    })
}

/// The value of a one-element tensor (a loss), or the failure of the device work that made it.
pub fn scalar(t: &Tensor<1>) -> Result<f64, DeviceError> {
    Ok(f64::from(read(t)?[0]))
}

/// Row-major f32 values of a tensor; panics where [`read`] fails (tests, CPU-only tools).
pub fn to_vec<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    read(t).unwrap_or_else(|e| panic!("reading a tensor: {e}"))
}

/// [`each_param`] with each tensor read to the host ([`read`]): `f(path, values)` in module order,
/// up to the first device failure, which names the tensor.
pub fn read_each_param<M: Module>(module: &M, mut f: impl FnMut(&str, &[f32])) -> Result<(), DeviceError> {
    let mut failed = None;
    each_param(module, |path, _, t| {
        if failed.is_none() {
            match read(&t) {
                Ok(v) => f(path, &v),
                Err(e) => failed = Some(DeviceError(format!("tensor {path}: {e}"))),
            }
        }
    });
    failed.map_or(Ok(()), Err)
}

/// Call `f(path, dims, values)` for every float parameter of `module` in module order, adapter
/// factors included (`fc.weight.lora.a`), one tensor at a time (flattened, its effective value).
pub fn each_param<M: Module>(module: &M, f: impl FnMut(&str, &[usize], Tensor<1>)) {
    struct Walk<F> {
        path: Vec<String>,
        f: F,
    }
    impl<F: FnMut(&str, &[usize], Tensor<1>)> ModuleVisitor for Walk<F> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let t = p.val();
            let dims = t.dims();
            let n: usize = dims.iter().product();
            (self.f)(&self.path.join("."), &dims, t.reshape([n]));
        }
    }
    module.visit(&mut Walk { path: Vec::new(), f });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catching_turns_a_panic_into_an_error_that_keeps_its_message() {
        assert_eq!(catching("reading", || 7), Ok(7));
        let e = catching("reading the optimiser state", || -> u8 { panic!("CUDA_ERROR_ILLEGAL_ADDRESS at {}", 3) });
        assert_eq!(e, Err(DeviceError("reading the optimiser state: CUDA_ERROR_ILLEGAL_ADDRESS at 3".into())));
        let oom = catching("reading", || -> u8 { std::panic::panic_any("Out of device memory") }).unwrap_err();
        assert!(oom.out_of_memory(), "{oom}");
    }
}
