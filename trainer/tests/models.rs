//! The generator conformance suite (`fav_trainer::models::conformance`) over every registered
//! family of every task: same seed same sample, adapters applied from outside start at the base
//! (which stays FAV's reference), import round trip, differentiable samples.

use fav_trainer::config::Config;
use fav_trainer::data::Condition;
use fav_trainer::models::{self, conformance, Family, FamilyVisitor};

/// One property of a family: config, sampling steps, condition → what went wrong.
type Check = fn(&Config, usize, Condition) -> Result<(), String>;

struct Suite {
    cond: Condition,
}

impl FamilyVisitor for Suite {
    type Output = Vec<String>;
    fn visit<F: Family>(self) -> Vec<String> {
        let cfg = Config::default();
        // The largest step count up to 2: a few-step family shows its steps, cheaply.
        let steps = (*F::STEPS.end()).min(2).max(*F::STEPS.start());
        let checks: [(&str, Check); 4] = [
            ("same seed, same sample", conformance::same_seed_same_sample::<F>),
            ("adapters start at the base", conformance::adapters_start_at_the_base::<F>),
            ("import round trip", conformance::import_round_trip::<F>),
            ("differentiable", conformance::differentiable::<F>),
        ];
        checks
            .iter()
            .filter_map(|(what, check)| {
                check(&cfg, steps, self.cond).err().map(|e| format!("{} / {what}: {e}", F::NAME))
            })
            .collect()
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
