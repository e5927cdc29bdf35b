//! The data the project generates itself (no download): the 8-gaussians toy and the procedural
//! 10-class image set, and what a group of particles is conditioned on.

pub mod gaussians;
pub mod shapes;

/// What a group of particles (one SVGD population, spec §6) is conditioned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional (the toy).
    None,
    /// A class label.
    Class(usize),
    /// A prompt, by its index in the task's prompt set.
    Prompt(usize),
}

impl Condition {
    /// The prompt a reward that reads one uses: a prompt by its index, a class by its name's
    /// (the image task's prompts are its class names), the first for an unconditional sample.
    pub fn prompt_index(self) -> usize {
        match self {
            Condition::Prompt(i) | Condition::Class(i) => i,
            Condition::None => 0,
        }
    }
}
