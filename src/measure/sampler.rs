//! Adaptive sampling (nvbench's stdrel criterion applied to the median): keep sampling until the
//! relative half-width of the 95% CI of the median is under the target, after `min_samples`,
//! or until `max_samples` / `max_time_s` is reached.

use std::time::Instant;

use crate::case::{MeasureSettings, Seconds};
use crate::stats::summarize;

/// Why sampling stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The CI reached the target.
    Converged,
    /// `max_samples` reached first.
    MaxSamples,
    /// `max_time_s` ran out first.
    MaxTime,
    /// The host took the samples in batches and released the case (`measure::control`).
    Host,
}

/// Runs a timed closure under a case's measurement settings.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub settings: MeasureSettings,
}

/// The samples of one measurement and why sampling stopped.
#[derive(Debug, Clone)]
pub struct Samples {
    pub values: Vec<Seconds>,
    pub stop: Stop,
    pub warmup_iterations: usize,
}

impl Sampler {
    pub fn new(settings: &MeasureSettings) -> Self {
        Sampler {
            settings: settings.clone(),
        }
    }

    /// Warms up, then samples. `f` runs the operation once and returns how long it took, in
    /// seconds, however the engine measures it (host clock, CUDA events). A failing `f` aborts.
    pub fn run<E>(&self, mut f: impl FnMut() -> Result<Seconds, E>) -> Result<Samples, E> {
        let s = &self.settings;
        let warm_start = Instant::now();
        let mut warmup_iterations = 0;
        // At least one warm-up call: the first call pays for allocation, JIT and cache misses.
        loop {
            f()?;
            warmup_iterations += 1;
            if warm_start.elapsed().as_secs_f64() >= s.warmup_s {
                break;
            }
        }
        let per_call_s = warm_start.elapsed().as_secs_f64() / warmup_iterations as f64;
        if let Some(taken) = super::control::with_paired(|ctl| ctl.sample_on_command(per_call_s, &mut f)) {
            let (values, _) = taken?;
            return Ok(Samples {
                values,
                stop: Stop::Host,
                warmup_iterations,
            });
        }
        let start = Instant::now();
        let mut values = Vec::with_capacity(s.min_samples.max(16));
        let min_samples = s.min_samples.max(1);
        let max_samples = s.max_samples.max(min_samples);
        let stop = loop {
            values.push(f()?);
            let n = values.len();
            let elapsed = start.elapsed().as_secs_f64();
            if n >= max_samples {
                break Stop::MaxSamples;
            }
            // min_samples holds even past max_time_s: a median of fewer samples is not worth a
            // comparison (the case's timeout_s is the hard limit).
            if elapsed >= s.max_time_s && n >= min_samples {
                break Stop::MaxTime;
            }
            // Checking the CI sorts the samples: do it on a geometric schedule past 64 samples so
            // that the check costs O(n log n) amortised, not per sample.
            let check = n >= min_samples && (n < 64 || n.is_power_of_two() || n % 64 == 0);
            if check && elapsed >= s.min_time_s {
                let sum = summarize(&values).expect("finite samples");
                if sum.rel_ci_half_width() <= s.target_rel_ci {
                    break Stop::Converged;
                }
            }
        };
        super::control::add_timed(&values);
        Ok(Samples {
            values,
            stop,
            warmup_iterations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MeasureSettings {
        MeasureSettings {
            warmup_s: 0.0,
            min_samples: 10,
            max_samples: 500,
            min_time_s: 0.0,
            max_time_s: 10.0,
            target_rel_ci: 0.01,
            timeout_s: 60.0,
            rounds: 1,
            max_rounds: 1,
        }
    }

    #[test]
    fn constant_converges_at_min_samples() {
        let r = Sampler::new(&settings()).run(|| Ok::<_, ()>(1.0)).unwrap();
        assert_eq!(r.stop, Stop::Converged);
        assert_eq!(r.values.len(), 10);
        assert!(r.warmup_iterations >= 1);
    }

    #[test]
    fn noisy_runs_to_max_samples() {
        let mut i = 0u64;
        let r = Sampler::new(&settings())
            .run(|| {
                i += 1;
                // Alternating 1 and 3: the median's CI never narrows below 1%.
                Ok::<_, ()>(if i % 2 == 0 { 1.0 } else { 3.0 })
            })
            .unwrap();
        assert_eq!(r.stop, Stop::MaxSamples);
        assert_eq!(r.values.len(), 500);
    }

    #[test]
    fn max_time_stops_after_min_samples() {
        let mut s = settings();
        s.min_samples = 3;
        s.max_time_s = 0.05;
        s.max_samples = usize::MAX;
        let mut i = 0u64;
        let r = Sampler::new(&s)
            .run(|| {
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
                Ok::<_, ()>(if i % 2 == 0 { 1.0 } else { 3.0 })
            })
            .unwrap();
        assert_eq!(r.stop, Stop::MaxTime);
        assert!(r.values.len() >= 3);
        // Slow samples: max_time ran out after the first, but min_samples are still taken.
        let mut s = settings();
        s.max_time_s = 0.0;
        let r = Sampler::new(&s)
            .run(|| Ok::<_, ()>(if r.values.is_empty() { 1.0 } else { 2.0 }))
            .unwrap();
        assert_eq!(r.values.len(), 10);
    }

    #[test]
    fn error_aborts() {
        let r = Sampler::new(&settings()).run(|| Err::<f64, _>("boom"));
        assert_eq!(r.unwrap_err(), "boom");
    }
}
