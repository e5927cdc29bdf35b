//! Malformed configuration, generated (issue 14): every key of the resolved default config gets
//! wrong types, impossible values, unknown spellings and broken syntax, through `--set` and
//! through config files; a fixed-seed generator picks 240 cases, not a hand-picked list. Each
//! must end `fav config` and a zero-step `fav train` with exit 2 and a message naming the key
//! (or the broken text), never a panic, an abort or a hang.

use std::process::Command;
use std::time::Duration;

mod common;

/// xorshift64*: a small deterministic generator (the corpus is a pure function of the seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

/// One malformed input: how it is given, and what the error must name.
enum Case {
    Set { overrides: Vec<String>, must: String },
    File { text: String, must: String },
}

/// Every leaf key of the resolved default config with its value (`section.key`, value).
fn leaves() -> Vec<(String, toml::Value)> {
    let out = Command::new(env!("CARGO_BIN_EXE_fav"))
        .args(["config", "--set", "task=image", "--set", "eval.samples=320"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let mut v = Vec::new();
    for (k, val) in table {
        match val {
            toml::Value::Table(t) => v.extend(t.into_iter().map(|(kk, vv)| (format!("{k}.{kk}"), vv))),
            other => v.push((k, other)),
        }
    }
    v
}

/// Values of the wrong type for a key holding `value`.
fn wrong_types(value: &toml::Value) -> Vec<String> {
    match value {
        toml::Value::Integer(_) => {
            vec!["\"ten\"".into(), "true".into(), "[1, 2]".into(), "-3".into(), "1.5".into(), "{ a = 1 }".into()]
        }
        toml::Value::Float(_) => vec!["\"x\"".into(), "false".into(), "[0.5]".into(), "{ b = 2 }".into()],
        toml::Value::String(_) => vec!["7".into(), "[\"a\"]".into(), "true".into(), "{ c = \"d\" }".into()],
        toml::Value::Boolean(_) => vec!["\"yes\"".into(), "2".into()],
        toml::Value::Array(_) => vec!["3".into(), "\"list\"".into(), "[\"a\", 1]".into(), "{ e = 1 }".into()],
        _ => vec!["1".into()],
    }
}

/// Values every key of these accepts by type but refuses by meaning.
fn impossible(key: &str) -> Vec<&'static str> {
    match key {
        "fav.batch"
        | "fav.conditions"
        | "fav.ref_pool"
        | "fav.ref_batch"
        | "fav.nes_samples"
        | "pretrain.batch"
        | "pretrain.eval_every"
        | "eval.every"
        | "checkpoint.keep"
        | "checkpoint.timeout_s"
        | "image.lora_rank"
        | "image.gan_batch"
        | "image.meanflow_batch"
        | "image.reward_batch" => vec!["0"],
        "checkpoint.part_size_mib" => vec!["0", "4"],
        "eval.samples" => vec!["0", "1", "13"],
        "fav.lr" | "pretrain.lr" | "fav.nes_sigma" | "image.lora_alpha" | "image.draft_multiplier" => {
            vec!["0.0", "-1e-4", "nan", "inf"]
        }
        "fav.beta" | "fav.max_grad_norm" | "image.weight_decay" => vec!["-1.0", "nan", "-inf"],
        "fav.temps_kde" | "fav.temps_stein" => vec!["[]", "[0.0]", "[-0.5]", "[nan]", "[inf]"],
        "fav.tile_elems" => vec!["0"],
        "pretrain.cache_dir" => vec!["\"\""],
        "image.best_of" => vec!["[0]", "[2, 0]"],
        "image.lora_targets" => vec!["[]", "[\"attention\"]", "[\"convs.9\"]"],
        "image.sample_steps" => vec!["0", "7"],
        "image.draft_k" => vec!["5"],
        "model.sample_steps" => vec!["0", "3"],
        "device" => vec!["\"tpu\"", "\"cuda:x\"", "\"gpu:0\""],
        "comm" | "task" | "fav.kde_clamp" | "fav.repulsion" | "fav.reward_grad" | "fav.nonfinite" | "image.method"
        | "image.lora_init" | "image.family" | "image.reward" => vec!["\"bogus\"", "\"\""],
        _ => vec![],
    }
}

/// A misspelling of `key`'s last part (a key that does not exist).
fn typo(key: &str, rng: &mut Rng) -> String {
    let (section, leaf) = key.rsplit_once('.').map_or(("", key), |(s, l)| (s, l));
    let mut chars: Vec<char> = leaf.chars().collect();
    let i = (rng.next() % chars.len() as u64) as usize;
    chars.insert(i, *rng.pick(&['x', 'q', 'z']));
    let leaf: String = chars.into_iter().collect();
    if section.is_empty() {
        leaf
    } else {
        format!("{section}.{leaf}")
    }
}

fn corpus(n: usize) -> Vec<Case> {
    let mut rng = Rng(0x5eed_f00d_2026_1202);
    let leaves = leaves();
    let mut all = Vec::new();
    for (key, value) in &leaves {
        let base = if key.starts_with("image.") {
            vec!["task=\"image\"".to_string(), "eval.samples=320".into()]
        } else {
            vec![]
        };
        for v in wrong_types(value).into_iter().chain(impossible(key).into_iter().map(String::from)) {
            let mut overrides = base.clone();
            overrides.push(format!("{key}={v}"));
            all.push(Case::Set { overrides: overrides.clone(), must: format!("`{key}`") });
            // The same through a file.
            let (section, leaf) = key.rsplit_once('.').map_or((None, key.as_str()), |(s, l)| (Some(s), l));
            let mut text = if key.starts_with("image.") {
                "task = \"image\"\n[eval]\nsamples = 320\n".to_string()
            } else {
                String::new()
            };
            match section {
                Some(s) => text += &format!("[{s}]\n{leaf} = {v}\n"),
                None => text = format!("{leaf} = {v}\n{text}"),
            }
            all.push(Case::File { text, must: format!("`{key}`") });
        }
        let t = typo(key, &mut rng);
        let name = t.rsplit('.').next().unwrap_or(&t).to_string();
        all.push(Case::Set { overrides: vec![format!("{t}=1")], must: name });
    }
    // Broken override syntax and broken files.
    for (ov, must) in [
        ("noequals", "key=value"),
        ("=5", "malformed key"),
        ("fav..beta=1", "malformed key"),
        ("fav.=1", "malformed key"),
        ("seed=1\nsteps=2", "line break"),
        ("seed.x=1", "seed"),
    ] {
        all.push(Case::Set { overrides: vec![ov.to_string()], must: must.to_string() });
    }
    for (text, must) in [
        ("[fav\nbeta = 1\n", "config file"),
        ("seed = 1\nseed = 2\n", "config file"),
        ("name = \"\\q\"\n", "config file"),
        ("[fav]\nbeta = 1.0\n[fav]\nlr = 1.0\n", "config file"),
        ("steps = 99999999999999999999\n", "config file"),
    ] {
        all.push(Case::File { text: text.to_string(), must: must.to_string() });
    }
    // A fixed-seed shuffle, then the first n.
    for i in (1..all.len()).rev() {
        all.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    all.truncate(n);
    all
}

fn refused(mut c: Command, must: &str, what: &str) {
    let path = std::env::temp_dir().join(format!("fav-fuzz-{}.err", std::process::id()));
    let mut job = c.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&path).unwrap()).spawn().unwrap();
    let status = common::wait_or_kill(&mut job, Duration::from_secs(60), &format!("{what}: still running after 60 s"));
    let err = std::fs::read_to_string(&path).unwrap();
    assert_eq!(status.code(), Some(2), "{what}: exit {:?} (a signal if None): {err}", status.code());
    assert!(err.contains(must), "{what}: the error must name {must:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{what}: {err}");
}

#[test]
fn generated_malformed_configs_are_refused_naming_the_key() {
    let d = common::tmp("fuzz", "cases");
    let cases = corpus(240);
    assert!(cases.len() >= 200, "the generator makes {} cases", cases.len());
    let files = cases.iter().filter(|c| matches!(c, Case::File { .. })).count();
    eprintln!("{} cases: {} through --set, {files} through files", cases.len(), cases.len() - files);
    for (i, case) in cases.iter().enumerate() {
        let (args, must, what): (Vec<String>, &str, String) = match case {
            Case::Set { overrides, must } => (
                overrides.iter().flat_map(|o| ["--set".to_string(), o.clone()]).collect(),
                must,
                format!("case {i}: --set {overrides:?}"),
            ),
            Case::File { text, must } => {
                let path = d.join(format!("case{i}.toml"));
                std::fs::write(&path, text).unwrap();
                (vec![path.display().to_string()], must, format!("case {i}: file {text:?}"))
            }
        };
        let mut config = Command::new(env!("CARGO_BIN_EXE_fav"));
        config.arg("config").args(&args);
        refused(config, must, &format!("fav config, {what}"));
        // A zero-step job with a one-step pretraining, in case a case were wrongly accepted;
        // the case's own values come last and win.
        let mut train = Command::new(env!("CARGO_BIN_EXE_fav"));
        train.arg("train");
        if matches!(case, Case::Set { .. }) {
            train.args(["--set", "steps=0", "--set", "pretrain.steps=1"]);
            train.args(["--set", &format!("pretrain.cache_dir={}", d.join("cache").display())]);
        }
        train.args(&args).arg("--out").arg(d.join(format!("run{i}")));
        refused(train, must, &format!("fav train, {what}"));
    }
}
