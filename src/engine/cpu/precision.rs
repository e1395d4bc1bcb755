//! Training steps on the CPU (candle autograd + candle-nn's AdamW): fp32 against mixed precision
//! (fp32 master weights, bf16/fp16 compute, fp32 norms, softmax and loss, loss scaling for fp16),
//! with the loss after a fixed number of steps compared against fp32 from identical weights and
//! data, so that a numerically broken mode shows.

use std::time::Instant;

use candle_core::{DType, Device as CDevice, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand_distr::Distribution;

use super::{candle_err, memory, CpuEngine};
use crate::case::{Better, Case};
use crate::engine::CaseOutput;
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::metric;
use crate::workload::precision::{Mode, PrecisionModel, PrecisionParams, NUMERICS_STEPS};

pub use crate::engine::PrecisionReference as Reference;

pub fn run(engine: &mut CpuEngine, p: &PrecisionParams, case: &Case) -> Result<CaseOutput, CaseError> {
    let compute = match p.mode {
        Mode::Fp32 => DType::F32,
        Mode::AmpBf16 => DType::BF16,
        Mode::AmpFp16 => DType::F16,
        Mode::Tf32 => {
            return Err(CaseError::skipped(
                "tf32 is a CUDA tensor-core mode; the CPU has no tf32 arithmetic",
            ))
        }
    };
    let tracked = memory::reset_peak();
    let (median, loss, step_times) = measure(p, compute, case)?;
    let mut out = CaseOutput::new("cpu");
    out.step_metrics(p.batch, &step_times);
    if tracked {
        if let Some(peak) = memory::peak_mib() {
            out.metric(metric::PEAK_MEMORY, "MiB", Better::Lower, vec![peak]);
        }
    }
    let key = serde_json::to_string(&p.reference()).map_err(|e| CaseError::Failed(e.into()))?;
    if p.mode == Mode::Fp32 {
        engine.precision_refs.insert(
            key,
            Reference {
                step_median_s: median,
                loss,
            },
        );
    } else {
        let reference = match engine.precision_refs.get(&key) {
            Some(r) => r.clone(),
            None => {
                let (m, l, _) = measure(&p.reference(), DType::F32, case)?;
                let r = Reference {
                    step_median_s: m,
                    loss: l,
                };
                engine.precision_refs.insert(key, r.clone());
                r
            }
        };
        out.versus_fp32(p.mode.as_str(), &reference, median, loss);
    }
    Ok(out)
}

/// Returns (median step seconds, loss after NUMERICS_STEPS steps, step-time samples).
fn measure(p: &PrecisionParams, compute: DType, case: &Case) -> Result<(f64, f64, Vec<f64>), CaseError> {
    // Numerics: a fresh model from the seeded start, fixed data.
    let mut t = Trainer::new(p, compute).map_err(candle_err)?;
    let mut loss = f64::NAN;
    for _ in 0..NUMERICS_STEPS {
        loss = t.step().map_err(candle_err)?;
    }
    // Timing: further steps of the same model.
    let samples = Sampler::new(&case.measure).run(|| -> Result<f64, CaseError> {
        let start = Instant::now();
        t.step().map_err(candle_err)?;
        Ok(start.elapsed().as_secs_f64())
    })?;
    let median = crate::stats::summarize(&samples.values)
        .map(|s| s.median)
        .unwrap_or(f64::NAN);
    Ok((median, loss, samples.values))
}

/// Dynamic loss scaling as torch.amp.GradScaler does it: start high, halve and skip the step on
/// overflow, double after a run of good steps.
struct LossScaler {
    scale: f64,
    good_steps: usize,
}

impl LossScaler {
    const GROWTH_INTERVAL: usize = 2000;

    fn new() -> Self {
        LossScaler {
            scale: 65536.0,
            good_steps: 0,
        }
    }

    /// Records whether the gradients were finite; returns whether to apply the step.
    fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale /= 2.0;
            self.good_steps = 0;
        }
        finite
    }
}

struct Trainer {
    model: PrecisionModel,
    compute: DType,
    heads: usize,
    vars: Vec<(String, Var)>,
    opt: AdamW,
    x: Tensor,
    target: Tensor,
    scaler: Option<LossScaler>,
}

/// Seeded normal values, so every mode starts from the same weights and data.
fn seeded(shape: &[usize], std: f64, seed: u64) -> candle_core::Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0.0f32, std as f32).map_err(candle_core::Error::wrap)?;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &CDevice::Cpu)
}

/// The resnet model is the torch engine's (`PrecisionParams::native_can_run` skips it first).
fn no_resnet() -> candle_core::Error {
    candle_core::Error::Msg("the native CPU engine has no resnet model".into())
}

impl Trainer {
    fn new(p: &PrecisionParams, compute: DType) -> candle_core::Result<Self> {
        let h = p.hidden;
        let mut specs: Vec<(&str, Vec<usize>, f64)> = Vec::new();
        // (name, shape, init std): weights ~ N(0, 1/fan_in), biases small, norms at 1.
        let w = |o: usize, i: usize| (vec![o, i], 1.0 / (i as f64).sqrt());
        match p.model {
            PrecisionModel::Mlp => {
                for (name, (shape, std)) in [("w1", w(4 * h, h)), ("w2", w(h, 4 * h)), ("w3", w(h, h))] {
                    specs.push((name, shape, std));
                }
                for (name, n) in [("b1", 4 * h), ("b2", h), ("b3", h)] {
                    specs.push((name, vec![n], 0.02));
                }
            }
            PrecisionModel::Resnet => return Err(no_resnet()),
            PrecisionModel::TransformerBlock => {
                for (name, (shape, std)) in [
                    ("wq", w(h, h)),
                    ("wk", w(h, h)),
                    ("wv", w(h, h)),
                    ("wo", w(h, h)),
                    ("w_up", w(4 * h, h)),
                    ("w_down", w(h, 4 * h)),
                ] {
                    specs.push((name, shape, std));
                }
            }
        }
        let mut vars = Vec::new();
        for (i, (name, shape, std)) in specs.into_iter().enumerate() {
            let t = seeded(&shape, std, 1000 + i as u64)?;
            vars.push((name.to_string(), Var::from_tensor(&t)?));
        }
        if p.model == PrecisionModel::TransformerBlock {
            // LayerNorm gains start at 1 and biases at 0, as torch initialises them.
            for name in ["ln1_g", "ln2_g"] {
                vars.push((
                    name.to_string(),
                    Var::from_tensor(&Tensor::ones(h, DType::F32, &CDevice::Cpu)?)?,
                ));
            }
            for name in ["ln1_b", "ln2_b"] {
                vars.push((
                    name.to_string(),
                    Var::from_tensor(&Tensor::zeros(h, DType::F32, &CDevice::Cpu)?)?,
                ));
            }
        }
        let (x, target) = match p.model {
            PrecisionModel::Mlp => (seeded(&[p.batch, h], 1.0, 1)?, seeded(&[p.batch, h], 1.0, 2)?),
            PrecisionModel::Resnet => return Err(no_resnet()),
            PrecisionModel::TransformerBlock => (
                seeded(&[p.batch, p.seq, h], 1.0, 1)?,
                seeded(&[p.batch, p.seq, h], 1.0, 2)?,
            ),
        };
        let opt = AdamW::new(
            vars.iter().map(|(_, v)| v.clone()).collect(),
            ParamsAdamW {
                lr: 1e-3,
                ..Default::default()
            },
        )?;
        let scaler = (compute == DType::F16).then(LossScaler::new);
        Ok(Trainer {
            model: p.model,
            compute,
            heads: p.heads,
            vars,
            opt,
            x,
            target,
            scaler,
        })
    }

    fn var(&self, name: &str) -> &Tensor {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor())
            .expect("known parameter")
    }

    /// A weight cast to the compute dtype (autocast casts weights on use, keeping fp32 masters).
    fn cw(&self, name: &str) -> candle_core::Result<Tensor> {
        self.var(name).to_dtype(self.compute)
    }

    fn linear(&self, x: &Tensor, w: &str, b: Option<&str>) -> candle_core::Result<Tensor> {
        let y = x.broadcast_matmul(&self.cw(w)?.t()?)?;
        match b {
            Some(b) => y.broadcast_add(&self.cw(b)?),
            None => Ok(y),
        }
    }

    fn forward(&self) -> candle_core::Result<Tensor> {
        let x = self.x.to_dtype(self.compute)?;
        match self.model {
            PrecisionModel::Resnet => Err(no_resnet()),
            PrecisionModel::Mlp => {
                let h = self.linear(&x, "w1", Some("b1"))?.gelu()?;
                let h = self.linear(&h, "w2", Some("b2"))?.gelu()?;
                self.linear(&h, "w3", Some("b3"))?.to_dtype(DType::F32)
            }
            PrecisionModel::TransformerBlock => {
                let (b, s, h) = self.x.dims3()?;
                let hd = h / self.heads;
                let a = layer_norm(&self.x, self.var("ln1_g"), self.var("ln1_b"))?.to_dtype(self.compute)?;
                let split = |t: Tensor| t.reshape((b, s, self.heads, hd))?.transpose(1, 2)?.contiguous();
                let q = split(self.linear(&a, "wq", None)?)?;
                let k = split(self.linear(&a, "wk", None)?)?;
                let v = split(self.linear(&a, "wv", None)?)?;
                let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.to_dtype(DType::F32)?;
                let mask = causal_mask(s)?;
                let probs = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
                let y = probs
                    .to_dtype(self.compute)?
                    .matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((b, s, h))?;
                let x1 = (&self.x + self.linear(&y, "wo", None)?.to_dtype(DType::F32)?)?;
                let m = layer_norm(&x1, self.var("ln2_g"), self.var("ln2_b"))?.to_dtype(self.compute)?;
                let m = self.linear(&m, "w_up", None)?.gelu()?;
                &x1 + self.linear(&m, "w_down", None)?.to_dtype(DType::F32)?
            }
        }
    }

    /// One step: forward, loss (fp32), backward, AdamW. Returns the loss.
    fn step(&mut self) -> candle_core::Result<f64> {
        let y = self.forward()?;
        let loss = candle_nn::loss::mse(&y, &self.target)?;
        let value = loss.to_scalar::<f32>()? as f64;
        match self.scaler.as_mut() {
            None => {
                let grads = loss.backward()?;
                self.opt.step(&grads)?;
            }
            Some(scaler) => {
                let scale = scaler.scale;
                let mut grads = (&loss * scale)?.backward()?;
                let mut finite = true;
                for (_, v) in &self.vars {
                    if let Some(g) = grads.remove(v.as_tensor()) {
                        let g = (g / scale)?;
                        let m = g.abs()?.max_all()?.to_scalar::<f32>()?;
                        finite &= m.is_finite();
                        grads.insert(v.as_tensor(), g);
                    }
                }
                if scaler.update(finite) {
                    self.opt.step(&grads)?;
                }
            }
        }
        Ok(value)
    }
}

/// LayerNorm over the last dimension from differentiable primitives, in fp32.
fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
    xn.broadcast_mul(g)?.broadcast_add(b)
}

fn causal_mask(s: usize) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..s)
        .flat_map(|i| (0..s).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(v, (s, s), &CDevice::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(model: PrecisionModel, mode: Mode) -> PrecisionParams {
        PrecisionParams {
            model,
            batch: 4,
            hidden: 32,
            seq: 8,
            heads: 4,
            mode,
            parallel: crate::workload::precision::Parallel::None,
            ranks: 1,
            image_size: 8,
            compile: Default::default(),
            warm_cache: false,
        }
    }

    #[test]
    fn training_reduces_loss_and_is_reproducible() {
        for model in [PrecisionModel::Mlp, PrecisionModel::TransformerBlock] {
            let p = params(model, Mode::Fp32);
            let mut a = Trainer::new(&p, DType::F32).unwrap();
            let mut b = Trainer::new(&p, DType::F32).unwrap();
            let first = a.step().unwrap();
            let mut last = first;
            for _ in 0..20 {
                last = a.step().unwrap();
            }
            assert!(last < first, "{model:?}: loss {first} -> {last}");
            // Same seed, same start: identical first loss.
            assert_eq!(b.step().unwrap(), first);
        }
    }

    #[test]
    fn bf16_close_to_fp32() {
        let p = params(PrecisionModel::Mlp, Mode::AmpBf16);
        let mut f = Trainer::new(&p.reference(), DType::F32).unwrap();
        let mut h = Trainer::new(&p, DType::BF16).unwrap();
        let (mut lf, mut lh) = (0.0, 0.0);
        for _ in 0..NUMERICS_STEPS {
            lf = f.step().unwrap();
            lh = h.step().unwrap();
        }
        let rel = ((lh - lf) / lf).abs();
        assert!(rel < 0.05, "bf16 loss {lh} vs fp32 {lf}");
        assert!(rel > 0.0, "bf16 should not be bit-identical to fp32");
    }

    #[test]
    fn scaler_halves_on_overflow() {
        let mut s = LossScaler::new();
        assert!(!s.update(false));
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
    }
}
