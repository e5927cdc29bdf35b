//! `fav sample`: a SANA-Sprint model (a diffusers pipeline folder with `transformer/` and
//! `vae/`, optionally with a LoRA file folded in) on a prompt-embeddings file — one PNG per prompt and sample, and `images.safetensors`
//! (`images` `[n, 3, H, W]`, the decoder's output in [−1, 1], unclamped as diffusers'
//! `vae.decode` returns it). With `--noise` (`noise` `[n, C, h, w]`, one per prompt in file
//! order, as diffusers' `latents=` takes them; optionally `step_noise` `[steps, n, C, h, w]`, the
//! scheduler's fresh noise per step) a whole pipeline is compared with diffusers given the same
//! noise; with `--seed` all noise is a function of the seed, the prompt and the sample.

use super::prompts::{floats, PromptEmbeddings, Shaped};
use super::scm::Scm;
use super::{load_decoder, load_transformer};
use crate::noise::{self, Stream};
use crate::tensors::read;
use burn::tensor::{Device, Tensor, TensorData};
use std::path::PathBuf;

pub enum NoiseSource {
    Seed { seed: u64, per_prompt: usize },
    File(PathBuf),
}

pub struct SampleJob {
    pub model: PathBuf,
    pub embeddings: PathBuf,
    /// A diffusers LoRA file (what `fav train` writes) folded into the transformer.
    pub lora: Option<PathBuf>,
    pub steps: usize,
    pub guidance: f64,
    pub noise: NoiseSource,
    pub out: PathBuf,
    /// Where to run ([`crate::gpu::open_here`]).
    pub device: Device,
}

/// Latents and step noise read from a file, or drawn from seeds; and which prompt each sample is.
fn noise_of(
    job: &SampleJob,
    prompts: usize,
    shape: [usize; 3],
    device: &Device,
) -> Result<(Tensor<4>, Vec<Tensor<4>>, Vec<usize>), String> {
    let [c, h, w] = shape;
    match &job.noise {
        NoiseSource::Seed { seed, per_prompt } => {
            let n = prompts * per_prompt;
            let which: Vec<usize> = (0..n).map(|i| i / per_prompt).collect();
            let draw = |step: u64| {
                let rows = (0..n as u64).map(|i| (i << 8) | step);
                Tensor::<4>::from_data(
                    TensorData::new(noise::normal_rows(*seed, Stream::Eval, rows, c * h * w), [n, c, h, w]),
                    device,
                )
            };
            Ok((draw(0), (1..=job.steps as u64).map(draw).collect(), which))
        }
        NoiseSource::File(path) => {
            let at = |e: String| format!("{}: {e}", path.display());
            let bytes = std::fs::read(path).map_err(|e| at(e.to_string()))?;
            let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| at(e.to_string()))?;
            let read = |k: &str| -> Result<Option<Shaped>, String> {
                match st.tensor(k) {
                    Err(_) => Ok(None),
                    Ok(_) => floats(&st, k).map(Some).map_err(at),
                }
            };
            let (s, v) = read("noise")?.ok_or_else(|| at("no tensor \"noise\" [n, C, h, w]".into()))?;
            if s.len() != 4 || s[1] != c || s[0] != prompts {
                return Err(at(format!("noise has shape {s:?}; expected [{prompts} prompts, {c} channels, h, w]")));
            }
            let latents = Tensor::from_data(TensorData::new(v, [s[0], s[1], s[2], s[3]]), device);
            let steps = match read("step_noise")? {
                Some((ss, sv)) => {
                    if ss.len() != 5 || ss[0] != job.steps || ss[1..] != s[..] {
                        return Err(at(format!("step_noise has shape {ss:?}; expected [{}, {s:?}…]", job.steps)));
                    }
                    let per: usize = s.iter().product();
                    sv.chunks(per)
                        .map(|ch| Tensor::from_data(TensorData::new(ch.to_vec(), [s[0], s[1], s[2], s[3]]), device))
                        .collect()
                }
                None => (0..job.steps).map(|_| Tensor::zeros([s[0], s[1], s[2], s[3]], device)).collect(),
            };
            Ok((latents, steps, (0..prompts).collect()))
        }
    }
}

/// Run the job; the files written.
pub fn sample(job: &SampleJob) -> Result<Vec<PathBuf>, String> {
    if job.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    let device = job.device.clone();
    let (model, cfg) = load_transformer(&job.model, &device).map_err(|e| e.to_string())?;
    let model = match &job.lora {
        Some(f) => super::lora::merge_diffusers_lora(model, f).map_err(|e| e.to_string())?,
        None => model,
    };
    let (ae, ae_cfg) = load_decoder(&job.model, &device).map_err(|e| e.to_string())?;
    let emb = PromptEmbeddings::read(&job.embeddings, cfg.caption_channels)?;
    let s = cfg.sample_size;
    let (latents, step_noise, which) = noise_of(job, emb.prompts.len(), [cfg.in_channels, s, s], &device)?;
    let prompts = emb.batch(&which, &device);
    let z =
        Scm::default().sample(&model, latents, &prompts, job.guidance * cfg.guidance_embeds_scale, &step_noise, None);
    let images = ae.decoder.forward(z.div_scalar(ae_cfg.scaling_factor));
    let [n, _, h, w] = images.dims();
    let values = read(&images).map_err(|e| format!("the device failed making the samples: {e}"))?;
    std::fs::create_dir_all(&job.out).map_err(|e| format!("{}: {e}", job.out.display()))?;
    let mut written = Vec::new();
    let per_prompt = n / emb.prompts.len().max(1);
    for i in 0..n {
        let img = &values[i * 3 * h * w..(i + 1) * 3 * h * w];
        let png = job.out.join(format!("prompt{:03}_sample{:02}.png", which[i], i % per_prompt.max(1)));
        crate::plot::write_rgb_png(&png, img, h, w).map_err(|e| format!("{}: {e}", png.display()))?;
        written.push(png);
    }
    let file = job.out.join("images.safetensors");
    let bytes = crate::lora::tensors_bytes(&[("images".into(), vec![n, 3, h, w], values)])?;
    crate::weights::write_atomic(&file, &bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    written.push(file);
    Ok(written)
}
