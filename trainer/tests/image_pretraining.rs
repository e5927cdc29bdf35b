//! Image pretraining is a pure function of its seed. Its own test binary with one test: burn
//! initialises parameters from the device's random generator, which parallel tests in the same
//! process would also draw from.

use burn::tensor::Device;
use fav_trainer::images::{gan, generator::one_hot, shapes::SIZE};

#[test]
fn gan_training_is_a_pure_function_of_the_seed() {
    let dev = Device::flex();
    let run = |seed| {
        let g = gan::train(seed, 2, 8, &dev, &mut |_, l| {
            assert!(l.d.is_finite() && l.g.is_finite());
            std::ops::ControlFlow::Continue(())
        })
        .expect("nothing stops it");
        let y = one_hot(&[1, 2], &dev);
        fav_trainer::svgd::to_vec(&g.forward(gan::noise(5, 0, 0, 2, &dev), y).reshape([2, 3 * SIZE * SIZE]))
    };
    let a = run(0);
    assert!(a == run(0), "same seed, same generator");
    assert!(a != run(1), "another seed, another generator");
}
