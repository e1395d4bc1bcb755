//! Synthetic timings with a known distribution, for the statistics' tests and the end-to-end
//! tests' runs: one generator, so every test draws benchmark noise the same way.

use rand::{rngs::StdRng, Rng};

/// Log-normal timing samples: median `level`, relative spread `cv` (benchmark noise is
/// multiplicative). Box–Muller turns two uniforms into a standard normal.
pub fn lognormal(rng: &mut StdRng, level: f64, cv: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            level * (cv * z).exp()
        })
        .collect()
}
