//! Golden vectors of spec §15: every case, every output, variants and shards, at each file's own
//! tolerance, on the tensor path (untiled and tiled) and the fused host kernel. The files: the
//! shared `svgd_golden.json` and this crate's stress cases (`tests/data/svgd_stress.json`, made
//! by `scripts/golden/svgd_stress.py`: far particles, every kernel row tiny, near-duplicates,
//! large coordinates, D up to 1024, shards), or the one file `SVGD_GOLDEN` names.

use burn::tensor::{Device, Tensor};
use fav_trainer::svgd::{self, Engine, FieldConfig, KdeClamp, Repulsion};
use fav_trainer::tensors::{matrix, to_vec};
use serde_json::Value;
use std::path::PathBuf;

fn golden_paths() -> Vec<PathBuf> {
    match std::env::var_os("SVGD_GOLDEN") {
        Some(p) => vec![PathBuf::from(p)],
        None => {
            let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            vec![here.join("../../shared/testdata/svgd_golden.json"), here.join("tests/data/svgd_stress.json")]
        }
    }
}

fn load(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read golden file {} (set SVGD_GOLDEN): {e}", path.display()));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("golden file {} is not valid JSON: {e}", path.display()));
    for key in ["tolerance", "cases", "toy_energy_checks", "mmd_checks"] {
        assert!(v.get(key).is_some(), "golden file {} is malformed: no top-level `{key}`", path.display());
    }
    v
}

/// Every golden file with its name.
fn files() -> Vec<(String, Value)> {
    golden_paths().iter().map(|p| (p.file_name().unwrap_or_default().to_string_lossy().into_owned(), load(p))).collect()
}

struct Tol {
    rtol: f64,
    atol_scale: f64,
}

fn field<'a>(v: &'a Value, key: &str, ctx: &str) -> &'a Value {
    v.get(key).unwrap_or_else(|| panic!("golden file is malformed: {ctx} has no `{key}`"))
}

fn mat(v: &Value, ctx: &str) -> (Vec<f64>, usize, usize) {
    let rows = v.as_array().unwrap_or_else(|| panic!("golden {ctx}: expected a matrix"));
    let cols = rows.first().and_then(|r| r.as_array()).map_or(0, |r| r.len());
    let mut out = Vec::with_capacity(rows.len() * cols);
    for r in rows {
        let r = r.as_array().unwrap_or_else(|| panic!("golden {ctx}: expected rows"));
        assert_eq!(r.len(), cols, "golden {ctx}: ragged matrix");
        out.extend(r.iter().map(|x| x.as_f64().unwrap_or_else(|| panic!("golden {ctx}: non-number"))));
    }
    (out, rows.len(), cols)
}

fn tensor(v: &Value, ctx: &str, dev: &Device) -> Tensor<2> {
    let (vals, r, c) = mat(v, ctx);
    matrix(vals.iter().map(|&x| x as f32).collect(), r, c, dev)
}

fn f64s(v: &Value, ctx: &str) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("golden {ctx}: expected a list"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("golden {ctx}: non-number")))
        .collect()
}

/// Every element checked, every miss remembered: a failing run lists all of them at once.
#[derive(Default)]
struct Report {
    misses: Vec<String>,
    /// Worst error / allowance seen (≤ 1 passes), for the margin.
    worst: f64,
}

impl Report {
    /// Elementwise `|got − want| ≤ rtol·|want| + atol_scale·max|want|`.
    fn check(&mut self, got: &[f32], want: &[f64], tol: &Tol, ctx: &str) {
        assert_eq!(got.len(), want.len(), "{ctx}: length {} vs golden {}", got.len(), want.len());
        let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        let mut bad = 0;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let allow = tol.rtol * w.abs() + tol.atol_scale * scale;
            let err = (g as f64 - w).abs();
            // Written so that a NaN fails too.
            let within = err <= allow;
            if !within {
                if bad == 0 {
                    self.misses.push(format!(
                        "{ctx}[{i}]: got {g:e}, want {w:e} (|err| {err:.3e} > allowed {allow:.3e}, {:.1}×)",
                        err / allow
                    ));
                }
                bad += 1;
            } else if allow > 0.0 {
                self.worst = self.worst.max(err / allow);
            }
        }
        if bad > 1 {
            self.misses.push(format!("{ctx}: {bad} elements out of tolerance in all"));
        }
    }

    fn check_scalar(&mut self, got: f64, want: f64, tol: &Tol, ctx: &str) {
        let allow = tol.rtol * want.abs();
        let err = (got - want).abs();
        let within = err <= allow;
        if !within {
            self.misses.push(format!("{ctx}: got {got:e}, want {want:e} (|err| {err:.3e} > {allow:.3e})"));
        } else if allow > 0.0 {
            self.worst = self.worst.max(err / allow);
        }
    }

    fn assert_clean(&self, what: &str) {
        assert!(self.misses.is_empty(), "{what}: {} misses\n{}", self.misses.len(), self.misses.join("\n"));
    }
}

fn cfg_of(
    inputs: &Value,
    clamp: KdeClamp,
    repulsion: Repulsion,
    engine: Engine,
    tile_elems: usize,
    ctx: &str,
) -> FieldConfig {
    FieldConfig {
        beta: field(inputs, "beta", ctx).as_f64().expect("beta"),
        temps_kde: f64s(field(inputs, "temps_kde", ctx), ctx),
        temps_stein: f64s(field(inputs, "temps_stein", ctx), ctx),
        kde_clamp: clamp,
        repulsion,
        tile_elems,
        engine,
    }
}

fn run_case(case: &Value, tol: &Tol, dev: &Device, engine: Engine, tile_elems: usize, rep: &mut Report) {
    let name = field(case, "name", "case").as_str().unwrap_or("?").to_string();
    let inputs = field(case, "inputs", &name);
    let outputs = field(case, "outputs", &name);
    let variants = field(case, "variants", &name);
    let x = tensor(field(inputs, "gen", &name), &format!("{name}.gen"), dev);
    let y = tensor(field(inputs, "ref", &name), &format!("{name}.ref"), dev);
    let g = tensor(field(inputs, "reward_grad", &name), &format!("{name}.reward_grad"), dev);
    let want = |k: &str| mat(field(outputs, k, &name), k).0;

    // Canonical conventions: image clamp, one-sided repulsion.
    let cfg = cfg_of(inputs, KdeClamp::Image, Repulsion::OneSided, engine, tile_elems, &name);
    let step = svgd::transport(&x, &y, &g, &cfg).unwrap();
    for (k, t) in [
        ("prior_score", &step.score.prior),
        ("total_score", &step.score.total),
        ("driving", &step.field.driving),
        ("repulsive", &step.field.repulsive),
        ("velocity", &step.field.velocity),
        ("grad_wrt_gen", &step.grad),
    ] {
        rep.check(&to_vec(t), &want(k), tol, &format!("{name}.{k}"));
    }
    let loss = field(outputs, "loss", &name).as_f64().expect("loss");
    rep.check_scalar(step.loss, loss, tol, &format!("{name}.loss"));

    // Variants: KDE normaliser, two-sided repulsion, toy clamp.
    let z = f64s(field(variants, "kde_normalizer", &name), "kde_normalizer");
    rep.check(&to_vec(&step.score.normalizer), &z, tol, &format!("{name}.kde_normalizer"));
    let clamped: Vec<usize> = field(variants, "clamped_rows", &name)
        .as_array()
        .expect("clamped_rows")
        .iter()
        .map(|v| v.as_u64().expect("row index") as usize)
        .collect();
    let zs = to_vec(&step.score.normalizer);
    for (i, zi) in zs.iter().enumerate() {
        assert_eq!((*zi as f64) < svgd::Z_CLAMP, clamped.contains(&i), "{name}: clamp status of row {i} (Z = {zi})");
    }
    let cfg2 = FieldConfig { repulsion: Repulsion::TwoSided, ..cfg.clone() };
    let two = svgd::velocity(&x, &x, &step.score.total, x.dims()[0], 0, &cfg2).unwrap();
    for (k, t) in [("repulsive_two_sided", &two.repulsive), ("velocity_two_sided", &two.velocity)] {
        let w = mat(field(variants, k, &name), k).0;
        rep.check(&to_vec(t), &w, tol, &format!("{name}.{k}"));
    }
    let toy = field(variants, "prior_score_toy_clamp", &name);
    if !toy.is_null() {
        let cfg3 = FieldConfig { kde_clamp: KdeClamp::Toy, ..cfg.clone() };
        let s = svgd::total_score(&x, &y, &g, &cfg3).unwrap();
        rep.check(&to_vec(&s.prior), &mat(toy, "toy").0, tol, &format!("{name}.prior_score_toy_clamp"));
    } else {
        assert!(cfg.temps_kde.len() != 1, "{name}: toy clamp missing for a single temperature");
    }

    if let Some(shards) = case.get("sharding") {
        run_shards(&name, shards, &x, &y, &g, &cfg, &step, tol, rep);
    }
}

#[allow(clippy::too_many_arguments)]
fn run_shards(
    name: &str,
    shards: &Value,
    x: &Tensor<2>,
    y: &Tensor<2>,
    g: &Tensor<2>,
    cfg: &FieldConfig,
    global: &svgd::Step,
    tol: &Tol,
    rep: &mut Report,
) {
    let n = x.dims()[0];
    let mut layouts = 0;
    for layout in shards.as_array().expect("sharding is a list") {
        layouts += 1;
        let g_ranks = field(layout, "G", name).as_u64().expect("G") as usize;
        let ranks = field(layout, "shards", name).as_array().expect("shards");
        let c_prompts = field(layout, "prompts_per_step_C", name).as_u64().expect("C") as usize;
        let micro = field(layout, "micro_batch_size", name).as_u64().expect("micro") as usize;
        assert_eq!(ranks.len(), g_ranks, "{name}: G = {g_ranks} but {} shards", ranks.len());
        // Step 2 of §6.7: each rank scores its own rows against the full reference set.
        let mut u_parts = Vec::new();
        for (r, shard) in ranks.iter().enumerate() {
            let (a, b) = (r * n / g_ranks, (r + 1) * n / g_ranks);
            let ctx = format!("{name}.G{g_ranks}.r{r}");
            assert_eq!(field(shard, "row_start", &ctx).as_u64(), Some(a as u64), "{ctx}: row_start");
            assert_eq!(field(shard, "row_end", &ctx).as_u64(), Some(b as u64), "{ctx}: row_end");
            let xr = x.clone().slice_dim(0, a..b);
            let gr = g.clone().slice_dim(0, a..b);
            let s = svgd::total_score(&xr, y, &gr, cfg).unwrap();
            let w = mat(field(shard, "total_score", &ctx), "total_score").0;
            rep.check(&to_vec(&s.total), &w, tol, &format!("{ctx}.total_score"));
            u_parts.push(s.total);
        }
        // Step 3: the gathered u equals the global one; step 4: own rows vs the global columns.
        let u_all = Tensor::cat(u_parts, 0);
        for (r, shard) in ranks.iter().enumerate() {
            let (a, b) = (r * n / g_ranks, (r + 1) * n / g_ranks);
            let ctx = format!("{name}.G{g_ranks}.r{r}");
            let xr = x.clone().slice_dim(0, a..b);
            let f = svgd::velocity(&xr, x, &u_all, n, a, cfg).unwrap();
            for (k, t) in [("driving", &f.driving), ("repulsive", &f.repulsive), ("velocity", &f.velocity)] {
                let w = mat(field(shard, k, &ctx), k).0;
                rep.check(&to_vec(t), &w, tol, &format!("{ctx}.{k}"));
            }
            let chunks = field(shard, "chunks", &ctx).as_array().expect("chunks");
            let mut covered = a;
            for (c, chunk) in chunks.iter().enumerate() {
                let cctx = format!("{ctx}.chunk{c}");
                let cs = field(chunk, "row_start", &cctx).as_u64().expect("row_start") as usize;
                let ce = field(chunk, "row_end", &cctx).as_u64().expect("row_end") as usize;
                assert_eq!(cs, covered, "{cctx}: chunks must tile the shard");
                covered = ce;
                let m = ce - cs;
                assert!(m == micro || (m < micro && ce == b), "{cctx}: chunk of {m} rows with micro = {micro}");
                let v = f.velocity.clone().slice_dim(0, cs - a..ce - a);
                let (loss, grad) = svgd::regression_grad(&v, m).unwrap();
                let want_loss = field(chunk, "loss_local", &cctx).as_f64().expect("loss_local");
                rep.check_scalar(loss, want_loss, tol, &format!("{cctx}.loss_local"));
                let gl = mat(field(chunk, "grad_local", &cctx), "grad_local").0;
                rep.check(&to_vec(&grad), &gl, tol, &format!("{cctx}.grad_local"));
                // loss_scale = G·m/(N·C) (§6.4); after ÷G it is the global gradient.
                let scale = (g_ranks * m) as f64 / (n * c_prompts) as f64;
                let ls = field(chunk, "loss_scale", &cctx).as_f64().expect("loss_scale");
                rep.check_scalar(scale, ls, tol, &format!("{cctx}.loss_scale"));
                let scaled = grad.mul_scalar(scale);
                let gs = mat(field(chunk, "grad_scaled", &cctx), "grad_scaled").0;
                rep.check(&to_vec(&scaled), &gs, tol, &format!("{cctx}.grad_scaled"));
                let global_rows = global.grad.clone().slice_dim(0, cs..ce);
                let avg = scaled.div_scalar(g_ranks as f64);
                let gw: Vec<f64> = to_vec(&global_rows).iter().map(|&v| v as f64).collect();
                rep.check(&to_vec(&avg), &gw, tol, &format!("{cctx}.grad_scaled/G"));
            }
            assert_eq!(covered, b, "{ctx}: chunks must cover the shard");
        }
    }
    assert!(layouts > 0, "{name}: sharding lists no layout");
}

fn tolerance(v: &Value) -> Tol {
    let t = field(v, "tolerance", "top level");
    Tol {
        rtol: field(t, "rtol", "tolerance").as_f64().expect("rtol"),
        atol_scale: field(t, "atol_scale", "tolerance").as_f64().expect("atol_scale"),
    }
}

/// Every case of every golden file through the field `engines` (engine, tile size), on
/// `Device::default()`.
fn golden_cases(engines: &[(Engine, usize)]) {
    let dev = Device::default();
    let mut rep = Report::default();
    for (file, v) in files() {
        let tol = tolerance(&v);
        let cases = field(&v, "cases", "top level").as_array().expect("cases is a list");
        assert!(!cases.is_empty(), "golden file {file} lists no case");
        for case in cases {
            for &(engine, tile_elems) in engines {
                let mut one = Report::default();
                run_case(case, &tol, &dev, engine, tile_elems, &mut one);
                eprintln!(
                    "{file}: {:32} {engine:?} tile {:>20}: worst error / allowance = {:.3}{}",
                    case["name"].as_str().unwrap_or("?"),
                    tile_elems,
                    one.worst,
                    if one.misses.is_empty() { String::new() } else { format!(", {} misses", one.misses.len()) }
                );
                rep.worst = rep.worst.max(one.worst);
                rep.misses.extend(one.misses.into_iter().map(|m| format!("{file} {engine:?}/{tile_elems}: {m}")));
            }
        }
    }
    rep.assert_clean("golden cases");
}

/// Tensor ops untiled (one block) and tiled (a few kernel entries per tile). One test apart from
/// the host kernel's: on a GPU the backend's float32 products may run in TF32, which this
/// measures, while the host kernel is what a GPU job's field runs on (`Engine::Auto`).
#[test]
fn golden_svgd_tensor_engine() {
    golden_cases(&[(Engine::Tensor, usize::MAX / 2), (Engine::Tensor, 7)]);
}

/// The fused host kernel.
#[test]
fn golden_svgd_host_engine() {
    golden_cases(&[(Engine::Host, 7)]);
}

#[test]
fn golden_toy_energy() {
    use fav_trainer::data::Condition;
    use fav_trainer::rewards::Reward;
    let dev = Device::default();
    let mut rep = Report::default();
    for (file, v) in files() {
        let tol = tolerance(&v);
        let e = field(&v, "toy_energy_checks", "top level");
        let x = tensor(field(e, "points", "toy_energy_checks"), "points", &dev);
        let reward = fav_trainer::rewards::toy::ClusterReward::new(&dev);
        let (r, grad_r) = reward.value_and_grad_r(&x);
        let want_r = f64s(field(e, "r", "toy_energy_checks"), "r");
        rep.check(&to_vec(&r), &want_r, &tol, &format!("{file} toy.r"));
        rep.check(&to_vec(&reward.value(&x, Condition::None).unwrap()), &want_r, &tol, &format!("{file} toy.value"));
        rep.check(&to_vec(&grad_r), &mat(field(e, "grad_r", "toy"), "grad_r").0, &tol, &format!("{file} toy.grad_r"));
        rep.check(
            &to_vec(&reward.grad(&x, Condition::None).expect("differentiable")),
            &mat(field(e, "grad_log_r", "toy"), "grad_log_r").0,
            &tol,
            &format!("{file} toy.grad_log_r"),
        );
    }
    rep.assert_clean("toy energy");
}

#[test]
fn golden_mmd() {
    let mut rep = Report::default();
    for (file, v) in files() {
        let tol = tolerance(&v);
        let checks = field(&v, "mmd_checks", "top level").as_array().expect("mmd_checks is a list");
        assert!(!checks.is_empty(), "{file} lists no mmd check");
        for (i, c) in checks.iter().enumerate() {
            let ctx = format!("{file} mmd_checks[{i}]");
            let pts = |k: &str| -> Vec<f32> { mat(field(c, k, &ctx), k).0.iter().map(|&v| v as f32).collect() };
            let (x, y) = (pts("x"), pts("y"));
            let sigma = fav_trainer::metrics::median_sigma(&x, &y, 0);
            let want_sigma = field(c, "sigma_median_heuristic", &ctx).as_f64().unwrap();
            rep.check_scalar(sigma, want_sigma, &tol, &format!("{ctx}.sigma"));
            let mmd = fav_trainer::metrics::mmd2(&x, &y, 0);
            rep.check_scalar(mmd, field(c, "mmd2", &ctx).as_f64().unwrap(), &tol, &format!("{ctx}.mmd2"));
            let m1 = fav_trainer::metrics::mmd2_with_sigma(&x, &y, 1.0);
            rep.check_scalar(
                m1,
                field(c, "mmd2_sigma_1", &ctx).as_f64().unwrap(),
                &tol,
                &format!("{ctx}.mmd2_sigma_1"),
            );
        }
    }
    rep.assert_clean("MMD");
}

#[test]
fn missing_or_malformed_golden_file_fails_clearly() {
    // The loader's messages are what a user sees when SVGD_GOLDEN points at a bad file.
    let dir = std::env::temp_dir().join(format!("fav-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"cases\": [").unwrap();
    // This file is also a module of `device.rs`, where the test's name has the module's prefix.
    let test = match module_path!().split_once("::") {
        Some((_, m)) => format!("{m}::golden_svgd_host_engine"),
        None => "golden_svgd_host_engine".into(),
    };
    let err = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--nocapture"])
        .env("SVGD_GOLDEN", &bad)
        .output()
        .unwrap();
    assert!(!err.status.success());
    let text = String::from_utf8_lossy(&err.stdout).to_string() + &String::from_utf8_lossy(&err.stderr);
    assert!(text.contains("is not valid JSON") && text.contains("bad.json"), "{text}");
    let missing = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--nocapture"])
        .env("SVGD_GOLDEN", dir.join("absent.json"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let text = String::from_utf8_lossy(&missing.stdout).to_string() + &String::from_utf8_lossy(&missing.stderr);
    assert!(text.contains("cannot read golden file") && text.contains("absent.json"), "{text}");
}
