//! One GPU as the engine uses it (context, stream, the facts benchmarks need) and the helpers every
//! CUDA workload shares: random device buffers, CUDA-event timing, L2 rotation counts.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use rand::{Rng, SeedableRng};

use crate::case::{Dtype, Seconds};

/// What the driver says of a GPU without a context (no memory taken on it): enough for the
/// run's environment and the probe to describe GPUs no case has opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuFacts {
    pub ordinal: usize,
    pub name: String,
    pub uuid: String,
    pub cc: (i32, i32),
    pub sm_count: i32,
    pub l2_bytes: usize,
    pub total_mem_bytes: usize,
}

impl GpuFacts {
    pub fn query(ordinal: usize) -> Result<GpuFacts> {
        use cudarc::driver::result::device;
        let dev = device::get(ordinal as i32).map_err(|e| anyhow!("failed to get GPU {ordinal}: {e}"))?;
        // SAFETY: `dev` is a valid device handle; attributes need no context.
        let attr = |a: CUdevice_attribute| {
            unsafe { device::get_attribute(dev, a) }
                .map_err(|e| anyhow!("failed to read {a:?} of GPU {ordinal}: {e}"))
        };
        use CUdevice_attribute as A;
        Ok(GpuFacts {
            ordinal,
            name: device::get_name(dev).unwrap_or_else(|_| "unknown GPU".into()),
            uuid: device::get_uuid(dev)
                .map(|u| format_uuid(&u.bytes.map(|b| b as u8)))
                .unwrap_or_default(),
            cc: (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            l2_bytes: attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?.max(0) as usize,
            // SAFETY: as above.
            total_mem_bytes: unsafe { device::total_mem(dev) }.unwrap_or(0),
        })
    }
}

/// A GPU: its context and the stream every workload on it uses, and (through `Deref`) its
/// facts (`gpu.name`, `gpu.cc`, ...).
#[derive(Clone)]
pub struct Gpu {
    pub facts: GpuFacts,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
}

impl std::ops::Deref for Gpu {
    type Target = GpuFacts;
    fn deref(&self) -> &GpuFacts {
        &self.facts
    }
}

impl Gpu {
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("failed to create a context on GPU {ordinal}: {e}"))?;
        // Every workload runs on one stream per GPU and synchronises explicitly; cudarc's event
        // tracking would record extra events around each pointer use, inside timed regions.
        // SAFETY: no CudaSlice of this context is used on two streams.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| anyhow!("failed to create a stream on GPU {ordinal}: {e}"))?;
        Ok(Gpu {
            facts: GpuFacts::query(ordinal)?,
            ctx,
            stream,
        })
    }

    /// `cuda:N`, the CSV's device column.
    pub fn device_label(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    pub fn free_mem_bytes(&self) -> usize {
        self.ctx.mem_get_info().map(|(free, _)| free).unwrap_or(0)
    }

    pub fn stream_ptr(&self) -> *mut std::ffi::c_void {
        self.stream.cu_stream() as *mut std::ffi::c_void
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("CUDA error on GPU {}: {e}", self.ordinal))
    }

    /// Copies bytes to a new device buffer.
    pub fn upload(&self, bytes: &[u8]) -> Result<DeviceBuf> {
        let slice = self.stream.clone_htod(bytes).map_err(|e| {
            anyhow!(
                "failed to copy {} bytes to GPU {}: {e}",
                bytes.len(),
                self.ordinal
            )
        })?;
        self.synchronize()?;
        Ok(DeviceBuf::new(slice, &self.stream))
    }

    /// Overwrites the start of a device buffer with `bytes` and waits for the copy.
    pub fn write(&self, buf: &DeviceBuf, bytes: &[u8]) -> Result<()> {
        if bytes.len() > buf.len() {
            return Err(anyhow!(
                "{} bytes do not fit a {}-byte buffer",
                bytes.len(),
                buf.len()
            ));
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("failed to bind GPU {}: {e}", self.ordinal))?;
        // SAFETY: the destination holds at least `bytes.len()` bytes; the host slice outlives the
        // copy because the stream is synchronised before returning.
        unsafe { cudarc::driver::result::memcpy_htod_async(buf.ptr, bytes, self.stream.cu_stream()) }
            .map_err(|e| {
                anyhow!(
                    "failed to copy {} bytes to GPU {}: {e}",
                    bytes.len(),
                    self.ordinal
                )
            })?;
        self.synchronize()
    }

    /// A device buffer of `len` bytes, uninitialised: for buffers filled on the device (weights
    /// generated by a kernel), where a host copy of gigabytes would cost more than the case.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuf> {
        // SAFETY: the contents are unset; every user writes before reading (or poisons first).
        let slice = unsafe { self.stream.alloc::<u8>(len.max(1)) }
            .map_err(|e| anyhow!("failed to allocate {len} bytes on GPU {}: {e}", self.ordinal))?;
        Ok(DeviceBuf::new(slice, &self.stream))
    }

    /// Enqueues a fill of every byte of `buf` with `byte` (poisoning outputs before a check).
    pub fn memset(&self, buf: &DeviceBuf, byte: u8) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("failed to bind GPU {}: {e}", self.ordinal))?;
        // SAFETY: the range is the buffer's own, allocated on this stream.
        unsafe { cudarc::driver::result::memset_d8_async(buf.ptr, byte, buf.len(), self.stream.cu_stream()) }
            .map_err(|e| anyhow!("failed to fill a buffer on GPU {}: {e}", self.ordinal))
    }

    /// A device buffer of `len` bytes filled with `fill` (so that unwritten output is visible).
    pub fn filled(&self, len: usize, fill: u8) -> Result<DeviceBuf> {
        self.upload(&vec![fill; len])
    }

    /// Copies a device buffer back.
    pub fn download(&self, buf: &DeviceBuf) -> Result<Vec<u8>> {
        let v = self
            .stream
            .clone_dtoh(&buf.slice)
            .map_err(|e| anyhow!("failed to copy from GPU {}: {e}", self.ordinal))?;
        self.synchronize()?;
        Ok(v)
    }

    /// A pair of timing events (created once per measurement, recorded per sample).
    pub fn timer(&self) -> Result<EventTimer> {
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .ctx
            .new_event(flags)
            .context("failed to create a CUDA event")?;
        let end = self
            .ctx
            .new_event(flags)
            .context("failed to create a CUDA event")?;
        Ok(EventTimer {
            start,
            end,
            stream: self.stream.clone(),
        })
    }
}

/// Device memory and its raw address (taken once, outside timed regions).
pub struct DeviceBuf {
    pub slice: CudaSlice<u8>,
    pub ptr: u64,
}

impl DeviceBuf {
    fn new(slice: CudaSlice<u8>, stream: &CudaStream) -> DeviceBuf {
        let ptr = {
            let (p, _guard) = slice.device_ptr(stream);
            p
        };
        DeviceBuf { slice, ptr }
    }

    pub fn len(&self) -> usize {
        self.slice.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }

    pub fn cptr(&self) -> *const std::ffi::c_void {
        self.ptr as usize as *const std::ffi::c_void
    }

    pub fn mptr(&self) -> *mut std::ffi::c_void {
        self.ptr as usize as *mut std::ffi::c_void
    }
}

/// CUDA events around device work: the time the GPU spent between them, not the host's.
pub struct EventTimer {
    start: CudaEvent,
    end: CudaEvent,
    stream: Arc<CudaStream>,
}

impl EventTimer {
    /// Records the start event, runs `f` (which enqueues work on the stream), records the end
    /// event, waits for it and returns the elapsed seconds.
    pub fn time<E: From<anyhow::Error>>(&self, f: impl FnOnce() -> Result<(), E>) -> Result<Seconds, E> {
        self.start
            .record(&self.stream)
            .map_err(|e| anyhow!("failed to record a CUDA event: {e}"))?;
        f()?;
        self.end
            .record(&self.stream)
            .map_err(|e| anyhow!("failed to record a CUDA event: {e}"))?;
        let ms = self
            .start
            .elapsed_ms(&self.end)
            .map_err(|e| anyhow!("CUDA error while timing: {e}"))?;
        Ok(ms as f64 * 1e-3)
    }

    /// [`EventTimer::time`] behind a spin of `lead_s` on the same stream: the spin is queued
    /// first, then the start event, `f`'s work and the end event. Returns the GPU time between
    /// the events and the host's time to enqueue `f`'s work (from the spin's launch): when that
    /// is under the lead, the whole batch was waiting when the start event fired.
    pub fn time_behind<E: From<anyhow::Error>>(
        &self,
        spin: &Spin,
        lead_s: Seconds,
        f: impl FnOnce() -> Result<(), E>,
    ) -> Result<(Seconds, Seconds), E> {
        let t0 = std::time::Instant::now();
        spin.launch(&self.stream, lead_s)?;
        let mut host = 0.0;
        let gpu = self.time(|| -> Result<(), E> {
            f()?;
            host = t0.elapsed().as_secs_f64();
            Ok(())
        })?;
        Ok((gpu, host))
    }

    /// An estimate of one call's GPU time and of the host's time to enqueue one call: batches
    /// of 1, 2, 4, ... calls of `f` are timed until one spans a quarter of `target_s`; that
    /// batch's times over its calls (a single call on an idle GPU would overstate it by the
    /// launch latency, and the batch then come out short).
    pub fn per_call<E: From<anyhow::Error>>(
        &self,
        target_s: Seconds,
        mut f: impl FnMut() -> Result<(), E>,
    ) -> Result<(Seconds, Seconds), E> {
        let mut est = (f64::NAN, f64::NAN);
        for n in estimate_batches() {
            let mut host = 0.0;
            let t = self.time(|| -> Result<(), E> {
                let t0 = std::time::Instant::now();
                for _ in 0..n {
                    f()?;
                }
                host = t0.elapsed().as_secs_f64();
                Ok(())
            })?;
            est = (t / n as f64, host / n as f64);
            if t >= target_s / 4.0 {
                break;
            }
        }
        Ok(est)
    }
}

/// The spin kernel ([`super::kernels::SPIN`]) of one GPU, queued before each timed sample.
pub struct Spin {
    func: CudaFunction,
}

impl Spin {
    pub fn new(func: CudaFunction) -> Spin {
        Spin { func }
    }

    /// Enqueues a spin of `seconds` of GPU time on `stream`.
    pub fn launch(&self, stream: &Arc<CudaStream>, seconds: Seconds) -> Result<()> {
        let ns: u64 = (seconds * 1e9).round().max(0.0) as u64;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(&self.func);
        b.arg(&ns);
        // SAFETY: spin_ns(unsigned long long) takes exactly this one argument and touches no
        // memory.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| anyhow!("failed to launch the spin kernel: {e}"))
    }
}

/// The shortest lead a spin gives a sample.
pub const MIN_LEAD_S: Seconds = 20e-6;
/// The longest: a host that needs more than this to enqueue one sample's calls is launch-bound,
/// and its samples say so ([`Batching::starved`]).
pub const MAX_LEAD_S: Seconds = 50e-3;
/// How often a sample whose calls were not all queued in time is taken again, with a longer lead.
pub const MAX_RETAKES: usize = 2;

/// The spin's lead for a sample whose calls take the host `host_s` to enqueue: twice that (the
/// host is sometimes slower than its estimate), within [`MIN_LEAD_S`, `MAX_LEAD_S`].
pub fn lead_for(host_s: Seconds) -> Seconds {
    if host_s.is_nan() {
        return MAX_LEAD_S;
    }
    (2.0 * host_s).clamp(MIN_LEAD_S, MAX_LEAD_S)
}

/// How a case's samples were taken: calls per sample, and with a spin, the lead it ended with,
/// the samples taken again because the host had not queued every call when the GPU started, and
/// those kept although it still had not (launch-bound).
#[derive(Debug, Clone, PartialEq)]
pub struct Batching {
    pub calls: usize,
    pub spin: Result<Seconds, String>,
    pub retaken: usize,
    pub starved: usize,
    pub samples: usize,
}

impl Batching {
    /// One line for the run's environment.
    pub fn describe(&self) -> String {
        match &self.spin {
            Ok(lead) => format!(
                "{} calls per sample, queued behind a {:.0} µs spin; {} of {} samples re-taken, {} launch-bound",
                self.calls,
                lead * 1e6,
                self.retaken,
                self.samples,
                self.starved
            ),
            Err(why) => format!(
                "{} calls per sample, start event on an idle GPU (no spin kernel: {why})",
                self.calls
            ),
        }
    }

    /// Into the case's output: the calls per sample and [`Batching::describe`] in the run's
    /// environment (per case: the worker's env messages merge into one map for the target), and
    /// the launch-bound warning where it applies.
    pub fn record(&self, out: &mut crate::engine::CaseOutput, case: &crate::case::Case) {
        out.env.insert(
            format!("calls_per_sample {}", case.label()),
            self.calls.to_string(),
        );
        out.env
            .insert(format!("gpu_timing {}", case.label()), self.describe());
        if let Some(w) = self.warning() {
            out.warn(w);
        }
    }

    /// A warning for the case when more than a tenth of its samples were launch-bound.
    pub fn warning(&self) -> Option<String> {
        (self.samples > 0 && self.starved * 10 > self.samples).then(|| {
            format!(
                "{} of {} samples are launch-bound: the host could not enqueue {} calls within {:.0} ms, so the GPU may have waited for work inside the timed region",
                self.starved,
                self.samples,
                self.calls,
                MAX_LEAD_S * 1e3
            )
        })
    }
}

/// GPU time one timed sample should span. A sample of one ~100 µs call recorded on an idle GPU
/// carries the launch latency and the host's enqueue time between the start event and the
/// first kernel (5–15% of a 1024³ GEMM); a batch of calls between the two events spreads that
/// over the batch, and from a few milliseconds on it is under the events' ~0.5 µs resolution
/// and the per-call noise (nvbench reaches the same end by queueing a spin kernel before the
/// start event).
pub const SAMPLE_TARGET_S: Seconds = 2e-3;

/// The most calls one sample batches (a 5 µs call at 2 ms is 400).
pub const MAX_CALLS_PER_SAMPLE: usize = 10_000;

/// The sample target in force: [`SAMPLE_TARGET_S`], or `TAGBENCH_CUDA_SAMPLE_MS` (milliseconds)
/// where set, so that `scripts/gpu-validate.sh` can show that the time per call does not depend
/// on the batch size.
pub fn sample_target_s() -> Seconds {
    sample_target_from(std::env::var("TAGBENCH_CUDA_SAMPLE_MS").ok().as_deref())
}

/// [`sample_target_s`] from the variable's value; anything but a positive number is ignored.
pub fn sample_target_from(ms: Option<&str>) -> Seconds {
    match ms.and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(v) if v.is_finite() && v > 0.0 => v * 1e-3,
        _ => SAMPLE_TARGET_S,
    }
}

/// Calls per timed sample so that one sample spans at least `target_s` of GPU work, from an
/// estimate of one call's time; between 1 and [`MAX_CALLS_PER_SAMPLE`]. A sample's value is its
/// time divided by this count.
pub fn calls_per_sample(per_call_s: Seconds, target_s: Seconds) -> usize {
    if per_call_s.is_nan() || per_call_s <= 0.0 || target_s.is_nan() || target_s <= 0.0 {
        return 1;
    }
    // The 1e-9 keeps a ratio that is whole up to rounding (2 ms / 1 µs = 2000.0000000000002)
    // from costing one more call.
    let n = (target_s / per_call_s * (1.0 - 1e-9)).ceil();
    if n >= MAX_CALLS_PER_SAMPLE as f64 {
        MAX_CALLS_PER_SAMPLE
    } else {
        (n as usize).max(1)
    }
}

/// The batch sizes [`EventTimer::per_call`] tries: 1, 2, 4, ... up to the cap.
pub fn estimate_batches() -> impl Iterator<Item = usize> {
    (0..)
        .map(|i| 1usize << i)
        .take_while(|n| *n <= MAX_CALLS_PER_SAMPLE)
}

/// Samples of `next` (one call of the workload, enqueued on the timer's stream) in batches sized
/// by [`calls_per_sample`] for the target in force; each sample is a batch's time over its
/// calls. With `spin` (`Err` says why there is none) each batch is queued behind a spin whose
/// lead covers the host's enqueue time, so the events time back-to-back GPU work; a sample
/// whose calls were not all queued in time is taken again with a longer lead (at most
/// [`MAX_RETAKES`] times, then kept and counted as launch-bound). Telemetry is read between
/// samples.
pub fn sample_batched(
    timer: &EventTimer,
    spin: Result<&Spin, String>,
    settings: &crate::case::MeasureSettings,
    rec: &mut super::telemetry::Recorder,
    mut next: impl FnMut() -> Result<(), crate::error::CaseError>,
) -> Result<(crate::measure::sampler::Samples, Batching), crate::error::CaseError> {
    use crate::error::CaseError;
    let target = sample_target_s();
    next()?;
    let (per_call, host_per_call) = timer.per_call(target, &mut next)?;
    let calls = calls_per_sample(per_call, target);
    let mut lead = lead_for(host_per_call * calls as f64);
    let (mut retaken, mut starved, mut taken) = (0, 0, 0);
    let samples = crate::measure::Sampler::new(settings).run(|| -> Result<Seconds, CaseError> {
        let batch = |next: &mut dyn FnMut() -> Result<(), CaseError>| -> Result<(), CaseError> {
            for _ in 0..calls {
                next()?;
            }
            Ok(())
        };
        taken += 1;
        let t = match &spin {
            Err(_) => timer.time(|| batch(&mut next))?,
            Ok(spin) => {
                let mut attempt = 0;
                loop {
                    let (t, host) = timer.time_behind(spin, lead, || batch(&mut next))?;
                    if host <= lead {
                        // Back towards twice this host's time after a hiccup raised it: the
                        // spin's idle GPU time is kept short, so heavy kernels run at the
                        // clocks a busy GPU holds.
                        lead = (lead * 0.5).max(lead_for(host));
                        break t;
                    }
                    lead = lead_for(host);
                    if attempt == MAX_RETAKES {
                        starved += 1;
                        break t;
                    }
                    attempt += 1;
                    retaken += 1;
                }
            }
        };
        rec.tick();
        Ok(t / calls as f64)
    })?;
    let batching = Batching {
        calls,
        spin: spin.map(|_| lead),
        retaken,
        starved,
        samples: taken,
    };
    Ok((samples, batching))
}

/// [`sample_batched`] over input sets used in turn (rotated past L2): each call of the workload
/// is `launch` on the next set.
pub fn sample_rotating<S>(
    gpu: &Gpu,
    spin: &Result<Spin, String>,
    settings: &crate::case::MeasureSettings,
    rec: &mut super::telemetry::Recorder,
    sets: &[S],
    mut launch: impl FnMut(&S) -> Result<(), crate::error::CaseError>,
) -> Result<(crate::measure::sampler::Samples, Batching), crate::error::CaseError> {
    let timer = gpu.timer()?;
    let mut i = 0usize;
    sample_batched(
        &timer,
        spin.as_ref().map_err(String::clone),
        settings,
        rec,
        || {
            let set = &sets[i % sets.len()];
            i += 1;
            launch(set)
        },
    )
}

/// The UUID as nvidia-smi prints it: `GPU-` and 8-4-4-4-12 hex digits.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// How many input sets to rotate through so that consecutive calls never find their inputs in
/// L2: together the sets span at least twice the L2 size (nvbench flushes L2 for the same
/// reason), capped by a quarter of the free memory and at 64 sets.
pub fn rotation_sets(bytes_per_set: usize, l2_bytes: usize, free_bytes: usize) -> usize {
    let per = bytes_per_set.max(1);
    let want = (2 * l2_bytes).div_ceil(per).max(1);
    let fit = (free_bytes / 4 / per).max(1);
    want.min(fit).min(64)
}

/// Random values in [-1, 1) stored as `dtype` (fp8 as e4m3 bytes), and their exact values as
/// f32 (after rounding to the dtype) for reference checks. Never zeros: zero inputs run faster
/// than real data and hide unwritten outputs.
pub fn random_values(dtype: Dtype, len: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut bytes = Vec::with_capacity(len * dtype.size_bytes());
    let mut vals = Vec::with_capacity(len);
    for _ in 0..len {
        match dtype {
            Dtype::Fp8 => {
                let b = random_e4m3(&mut rng);
                bytes.push(b);
                vals.push(e4m3_to_f32(b));
            }
            _ => {
                let mut x: f32 = rng.random_range(-1.0..1.0);
                if x == 0.0 {
                    x = 0.5;
                }
                let (b, v) = encode(dtype, x);
                bytes.extend_from_slice(&b[..dtype.size_bytes()]);
                vals.push(v);
            }
        }
    }
    (bytes, vals)
}

/// Random bytes of `dtype` for large buffers (no f32 copy kept).
pub fn random_bytes(dtype: Dtype, len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut bytes = Vec::with_capacity(len * dtype.size_bytes());
    for _ in 0..len {
        match dtype {
            Dtype::Fp8 => bytes.push(random_e4m3(&mut rng)),
            _ => {
                let x: f32 = rng.random_range(-1.0..1.0);
                let (b, _) = encode(dtype, if x == 0.0 { 0.5 } else { x });
                bytes.extend_from_slice(&b[..dtype.size_bytes()]);
            }
        }
    }
    bytes
}

/// `x` stored as `dtype` (little-endian bytes, first `size_bytes` valid) and its stored value.
pub fn encode(dtype: Dtype, x: f32) -> ([u8; 4], f32) {
    match dtype {
        Dtype::Fp32 | Dtype::Tf32 => (x.to_le_bytes(), x),
        Dtype::Fp16 => {
            let h = half::f16::from_f32(x);
            let b = h.to_le_bytes();
            ([b[0], b[1], 0, 0], h.to_f32())
        }
        Dtype::Bf16 => {
            let h = half::bf16::from_f32(x);
            let b = h.to_le_bytes();
            ([b[0], b[1], 0, 0], h.to_f32())
        }
        Dtype::Fp8 => {
            let b = f32_to_e4m3(x);
            ([b, 0, 0, 0], e4m3_to_f32(b))
        }
    }
}

/// Reads stored elements of `dtype` back as f32.
pub fn decode_all(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::Fp32 | Dtype::Tf32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::Fp16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::Fp8 => bytes.iter().map(|&b| e4m3_to_f32(b)).collect(),
    }
}

/// An e4m3 value with magnitude in [1/8, 3.75]: exponent field 4..=8 (bias 7), any mantissa,
/// random sign. Never zero, never NaN (0x7f/0xff).
fn random_e4m3(rng: &mut impl Rng) -> u8 {
    let sign: u8 = if rng.random::<bool>() { 0x80 } else { 0 };
    let exp: u8 = rng.random_range(4..=8);
    let man: u8 = rng.random_range(0..8);
    sign | (exp << 3) | man
}

/// OCP FP8 E4M3 (the format of CUDA_R_8F_E4M3): 1 sign, 4 exponent (bias 7), 3 mantissa bits;
/// no infinities, NaN at S.1111.111.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// Nearest e4m3 (ties away from zero is close enough for test data), saturating at ±448.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    let mut best = 0u8;
    let mut best_err = f32::INFINITY;
    for b in 0u8..0x7f {
        let err = (e4m3_to_f32(b) - x.abs()).abs();
        if err < best_err {
            best_err = err;
            best = b;
        }
    }
    sign | best
}

/// ‖out − ref‖ / ‖ref‖ (Frobenius), the error measure METHOD.md asks for; NaN never passes.
pub fn rel_error(out: &[f32], reference: &[f64]) -> f64 {
    let mut num = 0.0;
    let mut den = 0.0;
    for (o, r) in out.iter().zip(reference) {
        let o = *o as f64;
        if !o.is_finite() {
            return f64::INFINITY;
        }
        num += (o - r) * (o - r);
        den += r * r;
    }
    if out.len() != reference.len() {
        return f64::INFINITY;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_format() {
        let b: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(format_uuid(&b), "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn rotation_covers_twice_l2() {
        // H100: 50 MiB L2. A 1024³ fp32 GEMM set (A+B+C) is 12 MiB: 9 sets span 108 MiB.
        let l2 = 50 << 20;
        assert_eq!(rotation_sets(12 << 20, l2, 80 << 30), 9);
        // An 8192³ bf16 set (384 MiB) already exceeds L2: one set.
        assert_eq!(rotation_sets(384 << 20, l2, 80 << 30), 1);
        // Tiny sets are capped at 64.
        assert_eq!(rotation_sets(1024, l2, 80 << 30), 64);
        // Little free memory caps the count, never below one.
        assert_eq!(rotation_sets(12 << 20, l2, 48 << 20), 1);
        assert_eq!(rotation_sets(12 << 20, l2, 0), 1);
    }

    #[test]
    fn e4m3_decoding() {
        assert_eq!(e4m3_to_f32(0x38), 1.0); // exp 7, man 0
        assert_eq!(e4m3_to_f32(0xb8), -1.0);
        assert_eq!(e4m3_to_f32(0x7e), 448.0); // largest finite
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert!(e4m3_to_f32(0x7f).is_nan());
        assert_eq!(f32_to_e4m3(1.0), 0x38);
        assert_eq!(f32_to_e4m3(-448.0), 0xfe);
        assert_eq!(f32_to_e4m3(1000.0), 0x7e);
    }

    #[test]
    fn random_values_are_nonzero_and_match_storage() {
        for d in [Dtype::Fp32, Dtype::Fp16, Dtype::Bf16, Dtype::Fp8] {
            let (bytes, vals) = random_values(d, 1000, 7);
            assert_eq!(bytes.len(), 1000 * d.size_bytes());
            assert!(vals.iter().all(|v| *v != 0.0 && v.is_finite()), "{d}");
            assert_eq!(decode_all(d, &bytes), vals, "{d}");
            let distinct: std::collections::HashSet<u32> = vals.iter().map(|v| v.to_bits()).collect();
            assert!(distinct.len() > 10, "{d}: not random");
        }
        let big = random_bytes(Dtype::Bf16, 4096, 1);
        assert!(decode_all(Dtype::Bf16, &big).iter().all(|v| *v != 0.0));
    }

    #[test]
    fn rel_error_rules() {
        assert_eq!(rel_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_error(&[1.1], &[1.0]) - 0.1).abs() < 1e-6);
        assert_eq!(rel_error(&[f32::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(rel_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }

    #[test]
    fn batch_spans_the_target() {
        // A 1024³ fp16 GEMM on an H100 (~5 µs): 400 calls per 2 ms sample.
        assert_eq!(calls_per_sample(5e-6, 2e-3), 400);
        assert_eq!(calls_per_sample(10e-6, 100e-6), 10);
        // A call longer than the target: one per sample.
        assert_eq!(calls_per_sample(20e-3, 2e-3), 1);
        assert_eq!(calls_per_sample(2e-3, 2e-3), 1);
        // Capped; nonsense estimates give 1.
        assert_eq!(calls_per_sample(1e-12, 2e-3), MAX_CALLS_PER_SAMPLE);
        assert_eq!(calls_per_sample(0.0, 2e-3), 1);
        assert_eq!(calls_per_sample(f64::NAN, 2e-3), 1);
        assert_eq!(calls_per_sample(1e-6, f64::NAN), 1);
        // Every sample then spans at least the target (up to the cap).
        for per in [1e-6, 3.3e-6, 7e-5, 1.9e-3] {
            let n = calls_per_sample(per, SAMPLE_TARGET_S);
            assert!(n as f64 * per >= SAMPLE_TARGET_S * (1.0 - 1e-12), "{per}: {n}");
            assert!(
                (n - 1) as f64 * per < SAMPLE_TARGET_S,
                "{per}: {n} is more than needed"
            );
        }
    }

    #[test]
    fn lead_covers_the_host_within_bounds() {
        assert_eq!(lead_for(1e-3), 2e-3);
        assert_eq!(lead_for(1e-7), MIN_LEAD_S);
        assert_eq!(lead_for(1.0), MAX_LEAD_S);
        assert_eq!(lead_for(f64::NAN), MAX_LEAD_S);
    }

    #[test]
    fn batching_is_described_and_warns_when_launch_bound() {
        let mut b = Batching {
            calls: 200,
            spin: Ok(1e-3),
            retaken: 1,
            starved: 0,
            samples: 40,
        };
        assert_eq!(
            b.describe(),
            "200 calls per sample, queued behind a 1000 µs spin; 1 of 40 samples re-taken, 0 launch-bound"
        );
        assert_eq!(b.warning(), None);
        b.starved = 5;
        assert!(b
            .warning()
            .unwrap()
            .starts_with("5 of 40 samples are launch-bound"));
        b.spin = Err("NVRTC not found".into());
        assert!(b
            .describe()
            .contains("idle GPU (no spin kernel: NVRTC not found)"));
    }

    #[test]
    fn sample_target_override() {
        assert_eq!(sample_target_from(None), SAMPLE_TARGET_S);
        assert_eq!(sample_target_from(Some("0.1")), 1e-4);
        assert_eq!(sample_target_from(Some("5")), 5e-3);
        assert_eq!(sample_target_from(Some("-1")), SAMPLE_TARGET_S);
        assert_eq!(sample_target_from(Some("x")), SAMPLE_TARGET_S);
        let b: Vec<usize> = estimate_batches().collect();
        assert_eq!(b[..4], [1, 2, 4, 8]);
        assert!(*b.last().unwrap() <= MAX_CALLS_PER_SAMPLE);
    }
}
