//! GEMM on the CPU through candle's matmul (the `gemm` crate's kernels).

use std::time::Instant;

use candle_core::Tensor;

use super::{candle_err, cpu_dtype, randn, rotation_count};
use crate::case::Case;
use crate::engine::CaseOutput;
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::gemm::{GemmParams, Layout};
use crate::workload::metric;

pub fn run(p: &GemmParams, case: &Case) -> Result<CaseOutput, CaseError> {
    let dtype = cpu_dtype(p.dtype)?;
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let sets = rotation_count(p.bytes() as usize);
    // Decided before allocating: an allocation that fails aborts the whole worker.
    let needed = crate::workload::memory::gemm_bytes(p, sets);
    if let Some(available) = crate::sys::limits::available_memory_bytes() {
        if let Some(why) = crate::workload::memory::gemm_does_not_fit(needed, sets, available) {
            return Err(CaseError::skipped(why));
        }
    }
    let mut inputs = Vec::with_capacity(sets);
    for _ in 0..sets {
        // Stored shapes follow the layout; the transposes are views, as BLAS's trans flags are.
        let a = match p.layout {
            Layout::Nn | Layout::Nt => randn(&[m, k], dtype),
            Layout::Tn | Layout::Tt => randn(&[k, m], dtype).and_then(|t| t.t()),
        }
        .map_err(candle_err)?;
        let b = match p.layout {
            Layout::Nn | Layout::Tn => randn(&[k, n], dtype),
            Layout::Nt | Layout::Tt => randn(&[n, k], dtype).and_then(|t| t.t()),
        }
        .map_err(candle_err)?;
        inputs.push((a, b));
    }
    check_small(dtype).map_err(candle_err)?;
    let mut i = 0;
    let samples = Sampler::new(&case.measure).run(|| -> Result<f64, CaseError> {
        let (a, b) = &inputs[i % inputs.len()];
        i += 1;
        let t = Instant::now();
        let c = a.matmul(b).map_err(candle_err)?;
        let dt = t.elapsed().as_secs_f64();
        drop(c);
        Ok(dt)
    })?;
    let mut out = CaseOutput::new("cpu");
    out.latency_and_rate(&samples.values, p.flops(), metric::THROUGHPUT, "GFLOP/s", 1e9);
    Ok(out)
}

/// Checks the matmul against a naive reference on a small problem, so that a fast but wrong
/// kernel fails the case instead of reporting a number.
fn check_small(dtype: candle_core::DType) -> candle_core::Result<()> {
    let (m, n, k) = (17, 13, 29);
    let a = randn(&[m, k], dtype)?;
    let b = randn(&[k, n], dtype)?;
    let c = a
        .matmul(&b)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?;
    let a32 = a.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    let b32 = b.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    let tol = match dtype {
        candle_core::DType::F32 => 1e-4,
        _ => 5e-2,
    };
    for i in 0..m {
        for j in 0..n {
            let want: f32 = (0..k).map(|l| a32[i][l] * b32[l][j]).sum();
            let scale = (0..k)
                .map(|l| (a32[i][l] * b32[l][j]).abs())
                .sum::<f32>()
                .max(1.0);
            if (c[i][j] - want).abs() > tol * scale {
                candle_core::bail!("matmul result wrong at ({i},{j}): {} vs {want}", c[i][j]);
            }
        }
    }
    Ok(())
}

/// Used by benches: one matmul of square fp32 inputs.
pub fn square_matmul(n: usize) -> candle_core::Result<Tensor> {
    let a = randn(&[n, n], candle_core::DType::F32)?;
    let b = randn(&[n, n], candle_core::DType::F32)?;
    a.matmul(&b)
}
