//! The generator conformance suite (`fav_trainer::models::conformance`) over every registered
//! family of every task and over SANA-Sprint loaded from a diffusers folder: same seed same
//! sample, adapters applied from outside start at the base (which stays FAV's reference), import
//! round trip, differentiable samples.

use burn::tensor::Device;
use fav_trainer::config::Config;
use fav_trainer::data::Condition;
use fav_trainer::models::{self, conformance, Family, FamilyVisitor, Generator};

/// Every check on the generators `make` gives: what went wrong, named.
fn run_suite<G: Generator>(name: &str, make: &dyn Fn(&Device) -> G, steps: usize, cond: Condition) -> Vec<String> {
    let results = [
        ("same seed, same sample", conformance::same_seed_same_sample(make, steps, cond)),
        ("adapters start at the base", conformance::adapters_start_at_the_base(make, steps, cond)),
        ("import round trip", conformance::import_round_trip(make, steps, cond)),
        ("differentiable", conformance::differentiable(make, steps, cond)),
    ];
    results.into_iter().filter_map(|(what, r)| r.err().map(|e| format!("{name} / {what}: {e}"))).collect()
}

struct Suite {
    cond: Condition,
}

impl FamilyVisitor for Suite {
    type Output = Vec<String>;
    fn visit<F: Family>(self) -> Vec<String> {
        let cfg = Config::default();
        // The largest step count up to 2: a few-step family shows its steps, cheaply.
        let steps = (*F::STEPS.end()).min(2).max(*F::STEPS.start());
        run_suite(F::NAME, &|d: &Device| F::init(&cfg, d), steps, self.cond)
    }
}

#[test]
fn every_family_conforms() {
    let mut failures = Vec::new();
    for name in models::toy::NAMES {
        failures.extend(models::toy::with_family(name, Suite { cond: Condition::None }).expect("registered"));
    }
    for name in models::image::NAMES {
        failures.extend(models::image::with_family(name, Suite { cond: Condition::Class(2) }).expect("registered"));
    }
    assert!(models::toy::NAMES.len() == 3 && models::image::NAMES.len() == 2, "every family was visited");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// SANA-Sprint as the t2i job loads it (the tiny random pipeline of `examples/tiny-t2i`), sampled
/// in its 4 steps on a prompt of the embeddings file.
#[test]
fn sana_sprint_conforms() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny-t2i");
    let make = |d: &Device| {
        models::sana::SanaSprint::load(&dir.join("pipeline"), &dir.join("embeddings.safetensors"), 4.5, d).unwrap()
    };
    let failures = run_suite("sana_sprint", &make, 4, Condition::Prompt(3));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
