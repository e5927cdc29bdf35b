//! Tensors to and from host vectors.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};

/// A `[rows, cols]` tensor from row-major f32 values.
pub fn matrix(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// Row-major f32 values of a tensor.
pub fn to_vec<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_into_vec::<f32>().expect("f32 tensor data")
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
