//! A reward kept in Python (ImageReward, HPSv3, a VLM judge), served over HTTP: the trainer
//! posts batches of images with their prompts and reads back one reward per image. The reward
//! is a black box to FAV, so its gradient is FAV-B's NES estimate (spec §9) on pixel particles,
//! with the noise seeded as for every black-box reward (all ranks agree).
//!
//! Protocol (version 1), one POST per batch of at most `max_batch` images:
//!
//! ```text
//! request   {"version": 1,
//!            "images": {"shape": [n, 3, H, W], "dtype": "float32", "data": "<base64, little-endian>"},
//!            "prompts": [n strings or nulls],
//!            "features": false}
//! response  {"rewards": [n numbers], "features": [[…], …] (only when asked)}
//! ```
//!
//! Pixels are RGB in [−1, 1], as the generators make them (exact floats, not 8-bit images: NES
//! perturbations are far below 1/255). A response that is not JSON, has the wrong count or a
//! non-finite reward, an HTTP error, a refused connection or a timeout is retried with backoff;
//! after the last retry the error names the server and the cause. In a job, the failed batch
//! reads as NaN rewards, which stop the step before anything is saved (the last good checkpoint
//! stays), after the cause is logged.
//!
//! `examples/reward_server.py` serves any Python `score(images, prompts)` with the standard
//! library only.

use super::{Identity, Reward};
pub use crate::config::ServerConfig;
use crate::data::Condition;
use crate::tensors::{matrix, read, DeviceError};
use base64::Engine;
use burn::tensor::Tensor;
use std::time::Duration;

/// A reward server client for images of one size, with the prompts conditions index.
pub struct Server {
    cfg: ServerConfig,
    agent: ureq::Agent,
    prompts: Vec<String>,
    image: [usize; 2],
}

/// What the server said for a batch.
#[derive(Debug, serde::Deserialize)]
struct Reply {
    rewards: Vec<Option<f64>>,
    #[serde(default)]
    features: Option<Vec<Vec<f32>>>,
}

impl Server {
    pub fn new(cfg: ServerConfig, prompts: Vec<String>, image: [usize; 2]) -> Result<Self, String> {
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
            return Err(format!("reward server url {:?} is not http:// or https://", cfg.url));
        }
        if !(cfg.timeout_s > 0.0 && cfg.timeout_s.is_finite()) || cfg.max_batch == 0 {
            return Err("reward server: timeout_s and max_batch must be positive".into());
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self { cfg, agent, prompts, image })
    }

    /// Rewards (and features, if asked) of `n` images `[n, 3, H, W]` (row-major values) with
    /// their prompts, in batches.
    pub fn score(
        &self,
        pixels: &[f32],
        n: usize,
        size: [usize; 2],
        prompts: &[Option<String>],
        features: bool,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>), String> {
        let per = 3 * size[0] * size[1];
        assert_eq!(pixels.len(), n * per, "pixels of n images");
        let (mut rewards, mut feats) = (Vec::with_capacity(n), Vec::new());
        for start in (0..n).step_by(self.cfg.max_batch) {
            let m = self.cfg.max_batch.min(n - start);
            let bytes: Vec<u8> = pixels[start * per..(start + m) * per].iter().flat_map(|v| v.to_le_bytes()).collect();
            let body = serde_json::json!({
                "version": 1,
                "images": {
                    "shape": [m, 3, size[0], size[1]],
                    "dtype": "float32",
                    "data": base64::engine::general_purpose::STANDARD.encode(bytes),
                },
                "prompts": &prompts[start..start + m],
                "features": features,
            });
            let reply = self.post_with_retries(&serde_json::to_vec(&body).expect("JSON"), m, features)?;
            rewards.extend(reply.rewards.iter().map(|r| r.unwrap_or(f64::NAN) as f32));
            feats.extend(reply.features.unwrap_or_default());
        }
        Ok((rewards, feats))
    }

    fn post_with_retries(&self, body: &[u8], n: usize, features: bool) -> Result<Reply, String> {
        let mut last = String::new();
        for attempt in 0..=self.cfg.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << (attempt - 1).min(6)));
                tracing::warn!(url = %self.cfg.url, attempt, error = %last, "reward server: retrying");
            }
            match self.post(body, n, features) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(format!("reward server {} failed {} time(s); last: {last}", self.cfg.url, self.cfg.retries + 1))
    }

    fn post(&self, body: &[u8], n: usize, features: bool) -> Result<Reply, String> {
        let mut resp = self
            .agent
            .post(&self.cfg.url)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.body_mut().with_config().limit(1 << 30).read_to_string().map_err(|e| e.to_string())?;
        if !status.is_success() {
            let head: String = text.chars().take(300).collect();
            return Err(format!("HTTP {status}: {head}"));
        }
        let reply: Reply = serde_json::from_str(&text).map_err(|e| {
            format!(
                "the response is not {{\"rewards\": [numbers]}}: {e}; it begins {:?}",
                text.chars().take(120).collect::<String>()
            )
        })?;
        if reply.rewards.len() != n {
            return Err(format!("{} rewards for {n} images", reply.rewards.len()));
        }
        if let Some(i) = reply.rewards.iter().position(|r| !r.is_some_and(f64::is_finite)) {
            return Err(format!("reward {i} is {:?}, not a finite number", reply.rewards[i]));
        }
        if features && reply.features.as_ref().map(Vec::len) != Some(n) {
            return Err(format!(
                "features were asked for {n} images; the response has {:?}",
                reply.features.as_ref().map(Vec::len)
            ));
        }
        Ok(reply)
    }

    fn prompt(&self, cond: Condition) -> Option<String> {
        self.prompts.get(cond.prompt_index()).cloned()
    }
}

impl Reward for Server {
    /// Rewards of pixel particles; a server that cannot answer gives NaN (the step stops).
    fn value(&self, x: &Tensor<2>, cond: Condition) -> Result<Tensor<2>, DeviceError> {
        let n = x.dims()[0];
        let prompts = vec![self.prompt(cond); n];
        let r = match self.score(&read(x)?, n, self.image, &prompts, false) {
            Ok((r, _)) => r,
            Err(e) => {
                tracing::error!(error = %e, "reward server: no rewards; the step stops");
                vec![f32::NAN; n]
            }
        };
        Ok(matrix(r, n, 1, &x.device()))
    }

    fn grad(&self, _: &Tensor<2>, _: Condition) -> Option<Tensor<2>> {
        None
    }

    fn black_box(&self) -> bool {
        true
    }
}

/// `server`: pixel particles, the served reward, NES gradients.
pub fn reward(server: Server) -> super::ImageReward {
    super::ImageReward { features: std::rc::Rc::new(Identity), reward: std::rc::Rc::new(server), activation_floats: 0 }
}
