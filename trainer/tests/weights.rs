//! The one weights importer: published checkpoints are bf16/fp16 (and some f64), safetensors
//! or pickled PyTorch state dicts, named and laid out their own way. Every float dtype loads
//! into the float32 model, names map through a [`NameMap`], PyTorch's linear layout is
//! transposed, and a file that does not fit is refused naming the file and the tensors.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Device;
use fav_trainer::lora;
use fav_trainer::tensors::to_vec;
use fav_trainer::weights::{self, NameMap};
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};

#[derive(Module, Debug)]
struct Net {
    layers: Vec<Linear>,
}

impl Net {
    fn new(device: &Device) -> Self {
        Self { layers: vec![LinearConfig::new(8, 6).init(device), LinearConfig::new(6, 2).init(device)] }
    }

    /// Every parameter by module path, in module order.
    fn values(&self) -> Vec<(String, Vec<f32>)> {
        let names = ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"];
        let vals = self
            .layers
            .iter()
            .flat_map(|l| [to_vec(&l.weight.val()), to_vec(&l.bias.as_ref().expect("bias").val())])
            .collect::<Vec<_>>();
        names.iter().map(|n| n.to_string()).zip(vals).collect()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fav-weights-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A safetensors file of `tensors` (name, shape, f32 values) stored as `dtype`.
fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F64 => v.iter().flat_map(|x| f64::from(*x).to_le_bytes()).collect(),
            Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
            other => panic!("{other:?}"),
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn shaped(net: &Net) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let shapes = [vec![8, 6], vec![6], vec![6, 2], vec![2]];
    net.values().into_iter().zip(shapes).map(|((n, v), s)| (n, s, v)).collect()
}

#[test]
fn every_float_dtype_loads_into_the_float32_model() {
    let dev = Device::flex();
    let original = Net::new(&dev);
    for (dtype, round) in [
        (Dtype::F32, (|x| x) as fn(f32) -> f32),
        (Dtype::F64, |x| x),
        (Dtype::F16, |x| half::f16::from_f32(x).to_f32()),
        (Dtype::BF16, |x| half::bf16::from_f32(x).to_f32()),
    ] {
        let path = tmp(&format!("net-{dtype:?}.safetensors"));
        write(&path, &shaped(&original), dtype);
        let loaded = weights::load(Net::new(&dev), &path).unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        for ((name, want), (_, got)) in original.values().iter().zip(loaded.values()) {
            let want: Vec<f32> = want.iter().map(|&x| round(x)).collect();
            assert_eq!(got, want, "{dtype:?} {name}: the stored numbers, widened exactly");
        }
    }
}

#[test]
fn a_file_that_does_not_fit_is_refused_naming_it() {
    let dev = Device::flex();
    let mut t = shaped(&Net::new(&dev));
    let refused = |tensors: &[(String, Vec<usize>, Vec<f32>)], name: &str, must: &[&str]| {
        let path = tmp(name);
        write(&path, tensors, Dtype::BF16);
        let e = weights::load(Net::new(&dev), &path).unwrap_err().to_string();
        assert!(e.contains(name), "names the file: {e}");
        for m in must {
            assert!(e.contains(m), "names {m}: {e}");
        }
    };
    let missing: Vec<_> = t.iter().filter(|(n, _, _)| n != "layers.1.bias").cloned().collect();
    refused(&missing, "missing.safetensors", &["missing", "layers.1.bias"]);
    let mut extra = t.clone();
    extra.push(("head.weight".into(), vec![2, 2], vec![0.0; 4]));
    refused(&extra, "extra.safetensors", &["head.weight"]);
    t[2] = ("layers.1.weight".into(), vec![2, 6], t[2].2.clone());
    refused(&t, "misshaped.safetensors", &["layers.1.weight"]);
    let e = weights::load(Net::new(&dev), &tmp("absent.safetensors")).unwrap_err().to_string();
    assert!(e.contains("absent.safetensors") && e.contains("no such file"), "{e}");
}

/// The bf16 pickled state dict of `scripts/fixtures/weights_pt.py` (an `nn.Sequential` MLP in
/// PyTorch's layout, `net.0.*`, `net.2.*`) loads through a name map, transposed, equal to the
/// float32 values the script wrote beside it; so does that float32 file.
#[test]
fn a_pytorch_checkpoint_loads_through_a_name_map() {
    let dev = Device::flex();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let map = NameMap::default().rename(r"^net\.0\.(.*)$", "layers.0.$1").rename(r"^net\.2\.(.*)$", "layers.1.$1");
    let net = weights::load_mapped(Net::new(&dev), &data.join("mlp_bf16.pt"), &map).unwrap();
    let expected = std::fs::read(data.join("mlp_expected.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        expected.tensor(name).unwrap().data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    let transpose = |v: Vec<f32>, rows: usize, cols: usize| -> Vec<f32> {
        (0..cols).flat_map(|c| (0..rows).map(move |r| (r, c))).map(|(r, c)| v[r * cols + c]).collect()
    };
    let got = net.values();
    assert_eq!(got[0].1, transpose(f32s("net.0.weight"), 6, 8), "[out, in] → [in, out]");
    assert_eq!(got[1].1, f32s("net.0.bias"));
    assert_eq!(got[2].1, transpose(f32s("net.2.weight"), 2, 6));
    assert_eq!(got[3].1, f32s("net.2.bias"));
    // The same tensors as a float32 safetensors file in PyTorch's layout (as transformers and
    // diffusers ship them) load to the same values.
    let st =
        weights::load_mapped(Net::new(&dev), &data.join("mlp_expected.safetensors"), &map.pytorch_layout()).unwrap();
    assert_eq!(st.values(), got);
    // The same file without the map: every tensor is unexpected, every parameter missing.
    let e = weights::load(Net::new(&dev), &data.join("mlp_bf16.pt")).unwrap_err().to_string();
    assert!(e.contains("mlp_bf16.pt") && e.contains("layers.0.weight"), "{e}");
}

/// Adapted weights merge into a module with the base's names, which the importer loads back.
#[test]
fn merged_adapters_round_trip_through_a_file() {
    let dev = Device::flex();
    let base = Net::new(&dev);
    let targets = lora::Targets::parse(&["all".to_string()], &lora::layers(&base)).unwrap();
    let cfg = lora::LoraConfig { rank: 2, alpha: 2.0, init: lora::LoraInit::Kaiming };
    let merged = lora::merged(&lora::adapt(base, cfg, &targets, 3, &dev));
    let path = tmp("merged.safetensors");
    weights::save(&merged, &path).unwrap();
    let back = weights::load(Net::new(&dev), &path).unwrap();
    assert_eq!(back.values(), merged.values());
}

#[derive(Module, Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    token: burn::module::Param<burn::tensor::Tensor<1>>,
    proj: Linear,
}

/// The layouts published CLIP checkpoints use: open_clip packs q/k/v into one `in_proj_weight`
/// `[3w, w]`, stores the class token as `[1, 1, w]` in some exports and the output projection
/// as a matrix applied `x @ P`; the importer splits, squeezes and transposes them, and drops
/// what the map says is not the model's (here a `logit_scale`).
#[test]
fn packed_projections_split_transpose_and_squeeze() {
    let dev = Device::flex();
    let w = 4;
    let packed: Vec<f32> = (0..3 * w * w).map(|i| i as f32).collect(); // [3w, w], [out, in]
    let bias: Vec<f32> = (0..3 * w).map(|i| 100.0 + i as f32).collect();
    let token: Vec<f32> = (0..w).map(|i| -(i as f32)).collect();
    let proj: Vec<f32> = (0..w * 2).map(|i| 0.5 * i as f32).collect(); // [w, 2], x @ P
    let path = tmp("packed.safetensors");
    let file = [
        ("attn.in_proj_weight".to_string(), vec![3 * w, w], packed.clone()),
        ("attn.in_proj_bias".to_string(), vec![3 * w], bias.clone()),
        ("class_embedding".to_string(), vec![1, 1, w], token.clone()),
        ("proj".to_string(), vec![w, 2], proj.clone()),
        ("logit_scale".to_string(), vec![], vec![4.6]),
    ];
    write(&path, &file, Dtype::BF16);
    let map = NameMap::default()
        .pytorch_layout()
        .ignore("logit_scale")
        .split(r"attn\.in_proj_(weight|bias)", &["q.$1", "k.$1", "v.$1"])
        .squeeze("class_embedding")
        .rename(r"^class_embedding$", "token")
        .transpose("proj")
        .rename(r"^proj$", "proj.weight");
    let model = Attention {
        q: LinearConfig::new(w, w).init(&dev),
        k: LinearConfig::new(w, w).init(&dev),
        v: LinearConfig::new(w, w).init(&dev),
        token: burn::module::Param::from_tensor(burn::tensor::Tensor::zeros([w], &dev)),
        proj: LinearConfig::new(w, 2).with_bias(false).init(&dev),
    };
    let m = weights::load_mapped(model, &path, &map).unwrap();
    // Burn's linear weight is [in, out]: element (i, o) is the file's row o of the part.
    for (part, lin) in [&m.q, &m.k, &m.v].into_iter().enumerate() {
        let want: Vec<f32> = (0..w * w).map(|k| packed[(part * w + k % w) * w + k / w]).collect();
        assert_eq!(to_vec(&lin.weight.val()), want, "part {part} weight");
        assert_eq!(
            to_vec(&lin.bias.as_ref().unwrap().val()),
            bias[part * w..(part + 1) * w].to_vec(),
            "part {part} bias"
        );
    }
    assert_eq!(to_vec(&m.token.val()), token, "[1, 1, w] → [w]");
    assert_eq!(to_vec(&m.proj.weight.val()), proj, "x @ P is burn's own [in, out]");
    // A packed tensor that cannot be split evenly is refused naming it.
    let bad = [("attn.in_proj_weight".to_string(), vec![3 * w + 1, w], vec![0.0; (3 * w + 1) * w])];
    let path = tmp("badsplit.safetensors");
    write(&path, &bad, Dtype::F32);
    let e = weights::load_mapped(Net::new(&dev), &path, &map).unwrap_err().to_string();
    assert!(e.contains("badsplit.safetensors") && e.contains("attn.in_proj_weight"), "{e}");
}
