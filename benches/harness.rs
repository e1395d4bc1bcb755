//! The harness's own costs: what the sampler adds per sample, what a sample costs on the wire
//! (worker JSON line out, host parse), and the statistics.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tagbench::case::{Better, MeasureSettings};
use tagbench::measure::Sampler;
use tagbench::protocol::Message;
use tagbench::stats::summarize;

fn settings(n: usize) -> MeasureSettings {
    MeasureSettings {
        warmup_s: 0.0,
        min_samples: n,
        max_samples: n,
        min_time_s: 0.0,
        max_time_s: 1e9,
        target_rel_ci: 1e-12, // never converges: exactly n samples
        timeout_s: 1e9,
        rounds: 1,
        max_rounds: 1,
    }
}

/// Sampler overhead per sample: the timed closure does nothing, so everything measured is the
/// loop, the bookkeeping and the periodic CI checks.
fn sampler_overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("sampler_per_sample");
    for n in [100usize, 1000] {
        g.throughput(Throughput::Elements(n as u64));
        let s = Sampler::new(&settings(n));
        let mut x = 0.0f64;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                s.run(|| {
                    x += 1.0;
                    Ok::<_, ()>(1.0 + (x % 7.0) * 1e-3)
                })
                .unwrap()
            })
        });
    }
    g.finish();
}

/// One sample through the protocol: serialise the worker's line, parse it on the host.
fn protocol_per_sample(c: &mut Criterion) {
    let msg = Message::Sample {
        case: "m=1024,n=1024,k=1024,dtype=fp32".into(),
        workload: "gemm".into(),
        metric: "latency".into(),
        value: 14.4812345,
    };
    c.bench_function("protocol_sample_roundtrip", |b| {
        b.iter(|| {
            let line = serde_json::to_string(black_box(&msg)).unwrap();
            black_box(Message::parse(&line).unwrap())
        })
    });
    let summary = Message::Summary {
        case: "c".into(),
        workload: "gemm".into(),
        metric: "latency".into(),
        unit: "ms".into(),
        better: Better::Lower,
        summary: summarize(&[1.0, 2.0, 3.0]).unwrap(),
        device: "cpu".into(),
        gpu_name: String::new(),
        gpu_index: None,
    };
    c.bench_function("protocol_summary_roundtrip", |b| {
        b.iter(|| Message::parse(&serde_json::to_string(black_box(&summary)).unwrap()).unwrap())
    });
}

fn statistics(c: &mut Criterion) {
    let mut g = c.benchmark_group("summarize");
    for n in [100usize, 1000, 10_000] {
        let v: Vec<f64> = (0..n).map(|i| 1.0 + ((i * 7919) % 1000) as f64 * 1e-4).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &v, |b, v| {
            b.iter(|| summarize(black_box(v)))
        });
    }
    g.finish();
}

criterion_group!(benches, sampler_overhead, protocol_per_sample, statistics);
criterion_main!(benches);
