//! TOML configuration with `--set key=value` overrides, checked before any work: an unknown
//! key, a wrong type or an impossible value is an error naming the file and the key.

use anyhow::{anyhow, bail, Context, Result};
use fav_trainer::config::Config;
use std::path::Path;

/// Read `path` (or the embedded defaults when `None`), apply overrides, type-check, validate.
pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config> {
    let (mut doc, origin) = match path {
        Some(p) => {
            // A FIFO or a device would block or never end: only a regular file is a config.
            let meta = std::fs::metadata(p).with_context(|| format!("cannot read config file {}", p.display()))?;
            if !meta.is_file() {
                bail!("config file {} is not a regular file", p.display());
            }
            let text =
                std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
            let doc: toml::Table = toml::from_str(&text).map_err(|e| anyhow!("config file {}: {e}", p.display()))?;
            (doc, p.display().to_string())
        }
        None => (toml::Table::new(), "embedded defaults".to_string()),
    };
    for ov in overrides {
        apply_override(&mut doc, ov)?;
    }
    let de = toml::Value::Table(doc);
    let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        anyhow!("config ({origin}) key `{key}`: {}", e.into_inner())
    })?;
    fav_trainer::validate(&cfg).map_err(|e| anyhow!("config ({origin}): {e}"))?;
    Ok(cfg)
}

/// `a.b.c=value`: the value is read as a TOML literal (`1e-4`, `true`, `[0.1, 0.2]`, `"x"`),
/// or as a bare string when it is not one (`family=drift`).
fn apply_override(doc: &mut toml::Table, ov: &str) -> Result<()> {
    if ov.contains(['\n', '\r']) {
        bail!("--set {ov:?}: one key=value per --set (this one holds a line break)");
    }
    let (key, raw) = ov.split_once('=').ok_or_else(|| anyhow!("--set {ov:?}: expected key=value"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!("--set {ov:?}: malformed key {key:?}");
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) if t.len() == 1 => t.remove("v").expect("parsed key"),
        Ok(_) => bail!("--set {ov:?}: one key=value per --set"),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let leaf = parts.pop().expect("non-empty key");
    let mut table = doc;
    for (i, p) in parts.iter().enumerate() {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table =
            entry.as_table_mut().ok_or_else(|| anyhow!("--set {key}: `{}` is not a table", parts[..=i].join(".")))?;
    }
    table.insert(leaf.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ovs: &[&str]) -> Result<Config> {
        load(None, &ovs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn overrides_reach_typed_fields() {
        let c = set(&["seed=7", "fav.lr=3e-4", "model.family=drift", "fav.temps_kde=[0.1]"]).unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.fav.lr, 3e-4);
        assert_eq!(c.model.family, "drift");
        assert_eq!(c.fav.temps_kde, vec![0.1]);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = set(&["fav.betta=2"]).unwrap_err().to_string();
        assert!(e.contains("fav.betta") || e.contains("betta"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = set(&["steps=many"]).unwrap_err().to_string();
        assert!(e.contains("`steps`"), "{e}");
    }

    #[test]
    fn impossible_value_is_named() {
        let e = set(&["fav.temps_kde=[-1.0]"]).unwrap_err().to_string();
        assert!(e.contains("fav.temps_kde"), "{e}");
        let e = set(&["model.family=meanflow", "model.sample_steps=0"]).unwrap_err().to_string();
        assert!(e.contains("model.sample_steps"), "{e}");
        let e = set(&["fav.kde_clamp=toy", "fav.temps_kde=[0.1, 0.2]"]).unwrap_err().to_string();
        assert!(e.contains("fav.kde_clamp"), "{e}");
    }

    #[test]
    fn shipped_examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                // Paths in the t2i examples are relative to the repository root (tests run in
                // launch/). The tiny example's files are committed and must load; the published
                // models' are downloads, and their absence must be refused by name.
                let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                let (mut sets, mut missing) = (Vec::new(), Vec::new());
                // A GPU example checked by a build without CUDA: the device is not what is tested.
                if !cfg!(feature = "cuda") && doc.get("device").and_then(|d| d.as_str()).is_some_and(|d| d != "cpu") {
                    sets.push("device=\"cpu\"".to_string());
                }
                for (section, key) in [
                    ("t2i", "model"),
                    ("t2i", "embeddings"),
                    ("t2i", "train_prompts"),
                    ("t2i", "eval_prompts"),
                    ("reward", "model"),
                    ("reward", "model_config"),
                ] {
                    if let Some(v) = doc.get(section).and_then(|t| t.get(key)).and_then(|v| v.as_str()) {
                        let abs = dir.join("..").join(v);
                        if !abs.exists() {
                            missing.push(v.to_string());
                        }
                        sets.push(format!("{section}.{key}=\"{}\"", abs.display()));
                    }
                }
                match load(Some(&p), &sets) {
                    Ok(_) => assert!(missing.is_empty(), "{}: loaded without {missing:?}", p.display()),
                    Err(e) if !missing.is_empty() => {
                        let e = e.to_string();
                        assert!(missing.iter().any(|m| e.contains(m.as_str())), "{}: {e}", p.display());
                    }
                    Err(e) => panic!("{}: {e}", p.display()),
                }
                n += 1;
            }
        }
        assert!(n >= 3, "expected the example configs in {}", dir.display());
    }

    #[test]
    fn toy_vae_example_is_the_embedded_default() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/toy-vae.toml");
        assert_eq!(load(Some(&p), &[]).unwrap(), Config::default());
    }
}
