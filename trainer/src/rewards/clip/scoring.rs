//! `fav score`: a published reward on image files, for users and for checking a port by hand —
//! one JSON line per image (image, prompt, reward), and optionally the particles (features) and
//! the reward's gradient with respect to the pixels, keyed by image order (`"0"`, `"1"`, …).
//!
//! Images (PNG or JPEG, any size) enter as the generators' samples do: RGB scaled to [−1, 1];
//! the gradient is with respect to those values, `[3, H, W]` per image.

use super::score::{build_parts, Source};
use crate::data::Condition;
use crate::lora::tensors_bytes;
use crate::tensors::{read, DeviceError};
use crate::weights::write_atomic;
use burn::tensor::{Device, Tensor, TensorData};
use std::path::{Path, PathBuf};

/// What to score and where to write.
pub struct ScoreJob {
    pub source: Source,
    pub images: Vec<PathBuf>,
    pub features_out: Option<PathBuf>,
    pub grad_out: Option<PathBuf>,
    /// Where to run ([`crate::gpu::open_here`]).
    pub device: Device,
}

/// One image's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Scored {
    pub image: String,
    pub prompt: Option<String>,
    pub reward: f64,
}

/// An image file as `[3, H, W]` in [−1, 1].
pub fn read_image(path: &Path) -> Result<(Vec<f32>, [usize; 2]), String> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("{}: {e}", path.display()))?
        .decode()
        .map_err(|e| format!("{}: not a readable image: {e}", path.display()))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut chw = vec![0.0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            chw[c * h * w + y as usize * w + x as usize] = f32::from(p[c]) / 127.5 - 1.0;
        }
    }
    Ok((chw, [h, w]))
}

/// The prompt of image `i`: one for all, or one per image.
fn prompt_of(prompts: &[String], i: usize) -> (Condition, Option<String>) {
    match prompts.len() {
        0 => (Condition::None, None),
        1 => (Condition::Prompt(0), Some(prompts[0].clone())),
        _ => (Condition::Prompt(i), Some(prompts[i].clone())),
    }
}

/// Score every image on the job's device; write the features and gradients if asked.
pub fn score(job: &ScoreJob) -> Result<Vec<Scored>, String> {
    let device = &job.device;
    let n_prompts = job.source.prompts.len();
    if n_prompts > 1 && n_prompts != job.images.len() {
        return Err(format!("{n_prompts} prompts for {} images: give one prompt, or one per image", job.images.len()));
    }
    if job.images.is_empty() {
        return Err("no images to score".into());
    }
    // Every image goes through `of_size`, so the feature map's own size is not used here.
    let (phi, reward, _) = build_parts(&job.source, device).map_err(|e| e.to_string())?;
    let (mut out, mut feats, mut grads) = (Vec::new(), Vec::new(), Vec::new());
    for (i, path) in job.images.iter().enumerate() {
        let (chw, [h, w]) = read_image(path)?;
        let (cond, prompt) = prompt_of(&job.source.prompts, i);
        let px = Tensor::<4>::from_data(TensorData::new(chw, [1, 3, h, w]), device);
        let px = if job.grad_out.is_some() { px.autodiff().require_grad() } else { px };
        let f = phi.of_size(px.clone().reshape([1, 3 * h * w]), [h, w]);
        let failed = |e: DeviceError| format!("{}: the device failed: {e}", path.display());
        let v = reward.value(&f, cond).map_err(failed)?;
        let value = f64::from(read(&v).map_err(failed)?[0]);
        if !value.is_finite() {
            return Err(format!("{}: the reward is not finite ({value})", path.display()));
        }
        if job.grad_out.is_some() {
            let g = px.grad(&v.sum().backward()).ok_or("no gradient reaches the pixels")?;
            grads.push((i.to_string(), vec![3, h, w], read(&g).map_err(failed)?));
        }
        let fv = read(&f.detach()).map_err(failed)?;
        feats.push((i.to_string(), vec![fv.len()], fv));
        out.push(Scored { image: path.display().to_string(), prompt, reward: value });
    }
    for (what, dest, tensors) in [("features", &job.features_out, feats), ("gradients", &job.grad_out, grads)] {
        if let Some(p) = dest {
            let bytes = tensors_bytes(&tensors).map_err(|e| format!("{what}: {e}"))?;
            write_atomic(p, &bytes).map_err(|e| format!("cannot write {what} to {}: {e}", p.display()))?;
        }
    }
    Ok(out)
}
