//! What the host kernels share: a vectorisable `exp` and the run-time choice of the widest
//! vector instructions the CPU has.

/// `exp(x)` for `x ≤ 0` in f32 with ~2e-7 relative error, written branch-free so loops over it
/// vectorise (libm's `expf` does not). Inputs below −87 give ~1e-38 instead of 0.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let x = x.max(-87.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| ≤ ln2/2: Taylor to r⁶ (truncation < 2e-8 relative there).
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ⁿ from the integer n that the rounding left in t's low mantissa bits (t's bits are
    // 0x4B40_0000 + n): integer lanes only, where `n as i32` (saturating, NaN-checked) would
    // leave the loop one lane at a time.
    let two_n = (t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23;
    f32::from_bits(two_n) * p
}

/// Compile `$task` (an `#[inline(always)]` function) twice more, with AVX-512 and with AVX2
/// enabled, and call the widest version the CPU has at run time. The source fixes every
/// operation's order (no reassociation, no fused multiply-add), so all versions give the same
/// bits; only the vector width differs.
macro_rules! dispatch {
    ($name:ident, $task:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $task($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $task($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $task($($arg),*)
        }
    };
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::exp_neg;

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -80.0 {
            let (a, b) = (exp_neg(x) as f64, (x as f64).exp());
            worst = worst.max((a - b).abs() / b);
            x -= 0.00731;
        }
        assert!(worst < 1e-6, "relative error {worst:e}");
        assert!(exp_neg(-200.0) < 1e-37);
    }

    /// 2ⁿ from t's bits is the same number as from `n as i32` on every input the field and
    /// SiLU can give (n ∈ [−126, 0]), so the kernels' bits did not change with it.
    #[test]
    fn two_to_the_n_from_the_rounding_bits() {
        const ROUND: f32 = 12_582_912.0;
        for n in -126i32..=0 {
            let t = n as f32 + ROUND;
            let from_bits = (t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23;
            assert_eq!(from_bits, ((n + 127) << 23) as u32, "n = {n}");
        }
    }
}
