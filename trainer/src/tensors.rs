//! Tensors to and from host vectors.

use burn::tensor::{Device, Tensor, TensorData};

/// A `[rows, cols]` tensor from row-major f32 values.
pub fn matrix(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// Row-major f32 values of a tensor.
pub fn to_vec<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_into_vec::<f32>().expect("f32 tensor data")
}
