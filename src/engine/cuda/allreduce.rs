//! All-reduce through NCCL across the target's GPUs from one process (ncclCommInitAll, one
//! communicator per GPU, calls grouped), the way nccl-tests' `all_reduce_perf -g N` runs:
//! message sizes min..max by a factor (`-b/-e/-f`), out-of-place or in-place, algbw and busbw,
//! and a wrong-element count from a pattern whose reduction is exact.

use std::ffi::c_int;
use std::sync::Arc;

use anyhow::anyhow;
use cudarc::driver::sys::CUevent_flags;

use super::device::{self, DeviceBuf};
use super::ffi::{self, Nccl};
use super::Runtime;
use crate::case::{Better, Case, Dtype, MeasureSettings, Seconds};
use crate::engine::CaseOutput;
use crate::error::CaseError;
use crate::measure::Sampler;
use crate::workload::allreduce::{algbw_gbps, busbw_gbps, sized, AllreduceParams, ReduceOp};
use crate::workload::metric;

/// All-reduces per timed sample (nccl-tests' default `-n 20`): one call of a small message is
/// shorter than the event resolution.
pub const ITERS_PER_SAMPLE: usize = 20;

pub fn nccl_dtype(d: Dtype) -> Option<c_int> {
    match d {
        Dtype::Fp32 => Some(ffi::NCCL_FLOAT32),
        Dtype::Fp16 => Some(ffi::NCCL_FLOAT16),
        Dtype::Bf16 => Some(ffi::NCCL_BFLOAT16),
        Dtype::Tf32 | Dtype::Fp8 => None,
    }
}

pub fn nccl_op(op: ReduceOp) -> c_int {
    match op {
        ReduceOp::Sum => ffi::NCCL_SUM,
        ReduceOp::Prod => ffi::NCCL_PROD,
        ReduceOp::Max => ffi::NCCL_MAX,
        ReduceOp::Min => ffi::NCCL_MIN,
        ReduceOp::Avg => ffi::NCCL_AVG,
    }
}

/// The value rank `rank` contributes at element `i`: small integers (so that sums, products,
/// maxima and minima are exact in fp16 and bf16 for up to 32 ranks), varying with both rank and
/// position so that a misplaced or missing contribution changes the result.
pub fn pattern(op: ReduceOp, rank: usize, i: usize) -> f32 {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => ((rank * 7 + i) % 8) as f32 + 1.0,
        ReduceOp::Prod => {
            if (rank + i) % 3 == 0 {
                2.0
            } else {
                1.0
            }
        }
        ReduceOp::Max | ReduceOp::Min => ((rank * 13 + i * 7) % 61) as f32 - 30.0,
    }
}

/// The reduction of `pattern` over `ranks` at element `i`.
pub fn expected(op: ReduceOp, ranks: usize, i: usize) -> f64 {
    let vals = (0..ranks).map(|r| pattern(op, r, i) as f64);
    match op {
        ReduceOp::Sum => vals.sum(),
        ReduceOp::Avg => vals.sum::<f64>() / ranks as f64,
        ReduceOp::Prod => vals.product(),
        ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
        ReduceOp::Min => vals.fold(f64::INFINITY, f64::min),
    }
}

/// Elements of one rank's result that differ from the expected reduction. Exact ops must match
/// exactly (within the dtype's rounding of the expected value); `avg` divides, so it gets the
/// dtype's relative precision.
pub fn count_wrong(dtype: Dtype, op: ReduceOp, ranks: usize, got: &[f32]) -> u64 {
    let eps = match dtype {
        Dtype::Fp16 => 1.0 / 1024.0,
        Dtype::Bf16 => 1.0 / 128.0,
        _ => 1e-6,
    };
    got.iter()
        .enumerate()
        .filter(|(i, g)| {
            let want = device::encode(dtype, expected(op, ranks, *i) as f32).1 as f64;
            let g = **g as f64;
            let tol = if op == ReduceOp::Avg {
                eps * want.abs().max(1.0)
            } else {
                0.0
            };
            !(g - want).abs().le(&tol)
        })
        .count() as u64
}

/// The measurement budget of one message size: the case's, split across the sizes so that a
/// sweep takes about as long as one case (at least 0.1 s of sampling per size).
pub fn per_size_settings(m: &MeasureSettings, sizes: usize) -> MeasureSettings {
    let n = sizes.max(1) as f64;
    MeasureSettings {
        warmup_s: m.warmup_s / n,
        max_time_s: (m.max_time_s / n).max(0.1),
        min_time_s: m.min_time_s / n,
        ..m.clone()
    }
}

struct Comms {
    nccl: Arc<Nccl>,
    comms: Vec<ffi::Handle>,
}

/// The NCCL calls that tear communicators down, in order (see [`teardown_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    GroupStart,
    Finalize(usize),
    GroupEnd,
    Destroy(usize),
}

/// How `n` communicators of one process are torn down. `ncclCommFinalize` is collective and
/// `ncclCommDestroy` may wait on the other ranks of a node: called one communicator at a time
/// from a single thread, the first call can wait forever for ranks that have not been reached
/// (seen with ≥ 2 GPUs). NCCL's documentation for one thread driving several communicators:
/// finalize them all inside one group, then destroy each.
pub fn teardown_plan(n: usize) -> Vec<Teardown> {
    let mut plan = vec![Teardown::GroupStart];
    plan.extend((0..n).map(Teardown::Finalize));
    plan.push(Teardown::GroupEnd);
    plan.extend((0..n).map(Teardown::Destroy));
    plan
}

impl Drop for Comms {
    fn drop(&mut self) {
        let live: Vec<ffi::Handle> = self.comms.iter().copied().filter(|c| !c.is_null()).collect();
        for step in teardown_plan(live.len()) {
            // SAFETY: each communicator was created by ncclCommInitAll; the plan finalizes each
            // once inside one group and destroys each once afterwards.
            unsafe {
                match step {
                    Teardown::GroupStart => (self.nccl.ncclGroupStart)(),
                    Teardown::Finalize(i) => (self.nccl.ncclCommFinalize)(live[i]),
                    Teardown::GroupEnd => (self.nccl.ncclGroupEnd)(),
                    Teardown::Destroy(i) => (self.nccl.ncclCommDestroy)(live[i]),
                }
            };
        }
    }
}

fn nccl_check(nccl: &Nccl, rc: c_int, what: &str) -> anyhow::Result<()> {
    if rc == ffi::NCCL_SUCCESS {
        Ok(())
    } else {
        Err(anyhow!(
            "{what} failed: {}",
            ffi::c_str(unsafe { (nccl.ncclGetErrorString)(rc) })
        ))
    }
}

pub fn run(rt: &mut Runtime, p: &AllreduceParams, case: &Case) -> Result<CaseOutput, CaseError> {
    let dt = nccl_dtype(p.dtype)
        .ok_or_else(|| CaseError::skipped(format!("NCCL all-reduce of {} is not measured", p.dtype)))?;
    let op = nccl_op(p.op);
    let ranks = if p.ranks == 0 { rt.gpus.len() } else { p.ranks };
    if ranks > rt.gpus.len() {
        return Err(CaseError::skipped(format!(
            "needs {ranks} GPUs; the target has {}",
            rt.gpus.len()
        )));
    }
    let nccl = rt.nccl()?;
    let gpus = &rt.gpus[..ranks];
    let devs: Vec<c_int> = gpus.iter().map(|g| g.ordinal as c_int).collect();
    let mut comms = Comms {
        nccl: nccl.clone(),
        comms: vec![std::ptr::null_mut(); ranks],
    };
    // SAFETY: one communicator slot per device.
    nccl_check(
        &nccl,
        unsafe { (nccl.ncclCommInitAll)(comms.comms.as_mut_ptr(), ranks as c_int, devs.as_ptr()) },
        "ncclCommInitAll",
    )?;
    let sizes = p.sizes();
    let Some(&max_bytes) = sizes.last() else {
        return Err(CaseError::skipped(
            "no message size between min_bytes and max_bytes",
        ));
    };
    let elem = p.dtype.size_bytes();
    let mut send = Vec::new();
    let mut recv: Vec<Option<DeviceBuf>> = Vec::new();
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for g in gpus {
        send.push(g.filled(max_bytes as usize, 0)?);
        recv.push(if p.in_place {
            None
        } else {
            Some(g.filled(max_bytes as usize, 0)?)
        });
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        starts.push(
            g.ctx
                .new_event(flags)
                .map_err(|e| anyhow!("failed to create a CUDA event: {e}"))?,
        );
        ends.push(
            g.ctx
                .new_event(flags)
                .map_err(|e| anyhow!("failed to create a CUDA event: {e}"))?,
        );
    }
    let out_buf = |r: usize| -> &DeviceBuf { recv[r].as_ref().unwrap_or(&send[r]) };
    // One grouped all-reduce of `count` elements on every rank.
    let launch = |count: usize| -> anyhow::Result<()> {
        // SAFETY: buffers hold max_bytes ≥ count·elem; streams belong to the ranks' GPUs.
        unsafe {
            nccl_check(&nccl, (nccl.ncclGroupStart)(), "ncclGroupStart")?;
            for r in 0..ranks {
                let rc = (nccl.ncclAllReduce)(
                    send[r].cptr(),
                    out_buf(r).mptr(),
                    count,
                    dt,
                    op,
                    comms.comms[r],
                    gpus[r].stream_ptr(),
                );
                if rc != ffi::NCCL_SUCCESS {
                    (nccl.ncclGroupEnd)();
                    return nccl_check(&nccl, rc, "ncclAllReduce");
                }
            }
            nccl_check(&nccl, (nccl.ncclGroupEnd)(), "ncclGroupEnd")
        }
    };
    let sync_all = || -> anyhow::Result<()> {
        for g in gpus {
            g.synchronize()?;
        }
        Ok(())
    };

    let g0 = &gpus[0];
    let mut out = CaseOutput::new(if ranks == 1 {
        g0.device_label()
    } else {
        format!(
            "cuda:{}",
            devs.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
        )
    });
    out.gpu_name = g0.name.clone();
    out.gpu_index = Some(g0.ordinal);
    let mut rec = rt.recorder(g0);
    let settings = per_size_settings(&case.measure, sizes.len());
    let mut wrong_total = 0u64;
    let mut wrong_sizes = Vec::new();
    let mut headline = Vec::new();
    for &bytes in &sizes {
        let count = bytes as usize / elem;
        // Verify first (nccl-tests `-c 1`): fresh pattern, one all-reduce, compare every rank.
        for (r, g) in gpus.iter().enumerate() {
            let mut host = Vec::with_capacity(bytes as usize);
            for i in 0..count {
                host.extend_from_slice(&device::encode(p.dtype, pattern(p.op, r, i)).0[..elem]);
            }
            g.write(&send[r], &host)?;
            if let Some(b) = recv[r].as_ref() {
                // Poisoned, so that an element NCCL never wrote counts as wrong.
                g.write(b, &vec![0xffu8; bytes as usize])?;
            }
        }
        sync_all()?;
        launch(count)?;
        sync_all()?;
        let mut wrong = 0;
        for (r, g) in gpus.iter().enumerate() {
            let got = g.download(out_buf(r))?;
            let vals = device::decode_all(p.dtype, &got[..count * elem]);
            wrong += count_wrong(p.dtype, p.op, ranks, &vals);
        }
        if wrong > 0 {
            wrong_sizes.push(format!("{wrong} at {bytes} B"));
        }
        wrong_total += wrong;

        let samples = Sampler::new(&settings).run(|| -> Result<Seconds, CaseError> {
            for (r, g) in gpus.iter().enumerate() {
                starts[r]
                    .record(&g.stream)
                    .map_err(|e| anyhow!("failed to record a CUDA event: {e}"))?;
            }
            for _ in 0..ITERS_PER_SAMPLE {
                launch(count)?;
            }
            let mut worst: f64 = 0.0;
            for (r, g) in gpus.iter().enumerate() {
                ends[r]
                    .record(&g.stream)
                    .map_err(|e| anyhow!("failed to record a CUDA event: {e}"))?;
            }
            for r in 0..ranks {
                let ms = starts[r]
                    .elapsed_ms(&ends[r])
                    .map_err(|e| anyhow!("CUDA error during all-reduce: {e}"))?;
                worst = worst.max(ms as f64 * 1e-3);
            }
            rec.tick();
            Ok(worst / ITERS_PER_SAMPLE as f64)
        })?;
        let t = &samples.values;
        let alg: Vec<f64> = t.iter().map(|s| algbw_gbps(bytes, *s)).collect();
        let bus: Vec<f64> = alg.iter().map(|a| busbw_gbps(*a, ranks)).collect();
        out.metric(
            &sized(metric::TIME_US, bytes),
            "us",
            Better::Lower,
            t.iter().map(|s| s * 1e6).collect(),
        );
        out.metric(&sized(metric::ALGBW, bytes), "GB/s", Better::Higher, alg);
        if bytes == max_bytes {
            headline = bus.clone();
        }
        out.metric(&sized(metric::BUSBW, bytes), "GB/s", Better::Higher, bus);
    }
    out.metric(metric::BUSBW, "GB/s", Better::Higher, headline);
    out.metric(metric::WRONG, "count", Better::Lower, vec![wrong_total as f64]);
    rec.finish(&mut out);
    if ranks == 1 {
        out.warn(
            "all-reduce on 1 GPU: a valid run, but busbw is 0 by definition (nothing crosses a bus; nccl-tests reports 0 too) and algbw is the local copy rate",
        );
    }
    drop(comms);
    if wrong_total > 0 {
        return Err(CaseError::Failed(anyhow!(
            "NCCL all-reduce ({:?}, {}) produced wrong elements: {}",
            p.op,
            p.dtype,
            wrong_sizes.join(", ")
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Avg,
    ];

    #[test]
    fn pattern_reductions_are_exact_in_half_precision() {
        for op in OPS {
            for ranks in [1, 2, 4, 8, 16, 32] {
                for i in 0..64 {
                    let e = expected(op, ranks, i);
                    if op != ReduceOp::Avg {
                        assert_eq!(
                            device::encode(Dtype::Bf16, e as f32).1 as f64,
                            e,
                            "{op:?} {ranks} {i}"
                        );
                    }
                }
            }
        }
        for i in 0..1000 {
            assert_ne!(pattern(ReduceOp::Sum, 0, i), 0.0);
        }
    }

    fn simulate(dtype: Dtype, op: ReduceOp, ranks: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| device::encode(dtype, expected(op, ranks, i) as f32).1)
            .collect()
    }

    #[test]
    fn correct_results_have_no_wrong_elements() {
        for dtype in [Dtype::Fp32, Dtype::Fp16, Dtype::Bf16] {
            for op in OPS {
                for ranks in [1, 2, 3, 8] {
                    let got = simulate(dtype, op, ranks, 257);
                    assert_eq!(count_wrong(dtype, op, ranks, &got), 0, "{dtype} {op:?} {ranks}");
                }
            }
        }
    }

    #[test]
    fn missing_rank_or_garbage_is_counted() {
        // A reduction over 3 of 4 ranks (one contribution lost) differs in most elements.
        let got = simulate(Dtype::Fp32, ReduceOp::Sum, 3, 100);
        assert!(count_wrong(Dtype::Fp32, ReduceOp::Sum, 4, &got) >= 99);
        // Poisoned (unwritten) output is wrong everywhere.
        let poison = device::decode_all(Dtype::Bf16, &[0xff; 200]);
        assert_eq!(count_wrong(Dtype::Bf16, ReduceOp::Max, 2, &poison), 100);
        // One flipped element is one wrong element.
        let mut got = simulate(Dtype::Fp16, ReduceOp::Prod, 8, 64);
        got[10] += 1.0;
        assert_eq!(count_wrong(Dtype::Fp16, ReduceOp::Prod, 8, &got), 1);
        // Shifted data (contributions added at the wrong index) is caught.
        let mut shifted = simulate(Dtype::Fp32, ReduceOp::Sum, 2, 65);
        shifted.rotate_left(1);
        assert!(count_wrong(Dtype::Fp32, ReduceOp::Sum, 2, &shifted[..64]) > 50);
    }

    #[test]
    fn type_and_op_mapping() {
        assert_eq!(nccl_dtype(Dtype::Bf16), Some(ffi::NCCL_BFLOAT16));
        assert_eq!(nccl_dtype(Dtype::Fp8), None);
        assert_eq!(nccl_op(ReduceOp::Avg), ffi::NCCL_AVG);
        assert_eq!(nccl_op(ReduceOp::Sum), ffi::NCCL_SUM);
    }

    #[test]
    fn sweep_budget_and_names() {
        let m = MeasureSettings::default();
        let s = per_size_settings(&m, 10);
        assert!((s.max_time_s - 0.2).abs() < 1e-12);
        assert_eq!(s.min_samples, m.min_samples);
        assert_eq!(per_size_settings(&m, 100).max_time_s, 0.1);
        // nccl-tests arithmetic from workload::allreduce: 8 ranks, 1 GiB in 10 ms.
        let alg = algbw_gbps(1 << 30, 0.01);
        assert!((busbw_gbps(alg, 8) - alg * 1.75).abs() < 1e-9);
    }

    #[test]
    fn communicators_are_finalized_in_one_group_then_destroyed() {
        use Teardown::*;
        assert_eq!(
            teardown_plan(2),
            vec![
                GroupStart,
                Finalize(0),
                Finalize(1),
                GroupEnd,
                Destroy(0),
                Destroy(1)
            ]
        );
        assert_eq!(teardown_plan(0), vec![GroupStart, GroupEnd]);
        // No destroy before the group that finalizes every communicator has ended.
        let p = teardown_plan(8);
        let end = p.iter().position(|s| *s == GroupEnd).unwrap();
        assert!(p[..end].iter().all(|s| !matches!(s, Destroy(_))));
        assert_eq!(p[..end].iter().filter(|s| matches!(s, Finalize(_))).count(), 8);
    }
}
