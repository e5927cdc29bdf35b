//! What shapes the transport field: temperatures, β, the two convention switches of spec §16.1–2
//! and how the field is evaluated.

use serde::{Deserialize, Serialize};

/// `max(Z, 1e-6)` — the normaliser clamp of §2.3/§2.4.
pub const Z_CLAMP: f64 = 1e-6;

/// Where the KDE normaliser clamp applies (§2.3 vs §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KdeClamp {
    /// Canonical (image / text-to-image): clamp only the summed denominator; far particles fade
    /// to zero prior force.
    Image,
    /// Toy / offline-RL: clamped normaliser in both places; far particles are pulled to the
    /// origin by `−(2/τ)x`. Defined for one temperature only.
    Toy,
}

/// Which kernel entries the repulsion differentiates (§3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Repulsion {
    /// Canonical: columns are the detached gathered set, `(1/N) Σ_t (1/t) Σ_j k (x_i − x_j)`.
    OneSided,
    /// Textbook SVGD (toy, RL): twice the one-sided value.
    TwoSided,
}

impl Repulsion {
    /// 1 for one-sided, 2 for two-sided repulsion (§3.3).
    pub fn factor(self) -> f64 {
        match self {
            Repulsion::OneSided => 1.0,
            Repulsion::TwoSided => 2.0,
        }
    }
}

/// Which implementation evaluates the field. Both compute the same formulas and are checked
/// against the same golden vectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// On a CPU device the fused host kernel for low-dimensional particles, tensor ops otherwise;
    /// on a GPU the host kernel (exact float32 whatever the GPU's matmul precision).
    #[default]
    Auto,
    /// Tiled tensor ops on the particles' device (any burn backend, CUDA included).
    Tensor,
    /// The fused host kernel ([`super::host`]).
    Host,
}

/// Everything that shapes the transport field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldConfig {
    pub beta: f64,
    pub temps_kde: Vec<f64>,
    pub temps_stein: Vec<f64>,
    pub kde_clamp: KdeClamp,
    pub repulsion: Repulsion,
    /// Upper bound on kernel entries materialised at once (rows per tile = this / columns).
    pub tile_elems: usize,
    #[serde(default)]
    pub engine: Engine,
}

impl FieldConfig {
    /// Checks the invariants the formulas need; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.beta.is_finite() || self.beta < 0.0 {
            return Err(format!("beta must be finite and ≥ 0, got {}", self.beta));
        }
        for (name, temps) in [("temps_kde", &self.temps_kde), ("temps_stein", &self.temps_stein)] {
            if temps.is_empty() {
                return Err(format!("{name} must list at least one temperature"));
            }
            if let Some(t) = temps.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
                return Err(format!("{name} entries must be finite and > 0, got {t}"));
            }
        }
        if self.kde_clamp == KdeClamp::Toy && self.temps_kde.len() != 1 {
            return Err(format!(
                "kde_clamp = \"toy\" is defined for one KDE temperature only, got {:?}",
                self.temps_kde
            ));
        }
        if self.tile_elems == 0 {
            return Err("tile_elems must be > 0".into());
        }
        Ok(())
    }

    /// The toy clamp's prior from `Σ_j k_ij (y_j − x_i)` and `Z_i` of one temperature (§2.4),
    /// written so that no term cancels: `(2/τ)(Σ_j k y_j / Zc − x) = (2/τ)(Σ_j k (y_j − x)/Zc −
    /// x (1 − Z/Zc))`, where the second term is exactly 0 unless the clamp is active.
    pub(crate) fn toy_prior(tau: f64, k_diff: f64, z: f64, x: f64) -> f64 {
        let zc = z.max(Z_CLAMP);
        (2.0 / tau) * (k_diff / zc - x * (1.0 - z / zc))
    }
}
