//! GPU telemetry through NVML while a case runs: SM clock, power, temperature and throttle
//! reasons, with nvbench's rule that a sample taken while the SM clock is under 75% of its
//! default is suspect (nvbench's `--throttle-threshold`, default 0.75; tagbench flags such
//! samples instead of discarding them).
//!
//! NVML is opened with dlopen (`libnvidia-ml.so.1`, part of the driver) rather than through the
//! `nvml-wrapper` crate: eleven entry points with plain signatures do not justify its dependency
//! tree, and absence must be a quiet "no telemetry", never an error.

use std::ffi::{c_char, c_uint, c_ulonglong, CString};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ffi::{self, Nvml, NVML_CLOCK_SM, NVML_SUCCESS, NVML_TEMPERATURE_GPU};
use super::loader::LIBNVML;
use crate::case::Better;
use crate::engine::CaseOutput;

/// nvbench's default throttle threshold: current SM clock / default SM clock.
pub const THROTTLE_THRESHOLD: f64 = 0.75;

/// Throttle-reason bits of `nvmlDeviceGetCurrentClocksThrottleReasons` (nvml.h), with names.
pub const THROTTLE_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// Names of the set bits; unknown bits as hex.
pub fn decode_throttle_reasons(bits: u64) -> Vec<String> {
    let mut out: Vec<String> = THROTTLE_REASONS
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let known: u64 = THROTTLE_REASONS.iter().map(|(b, _)| b).sum();
    if bits & !known != 0 {
        out.push(format!("0x{:x}", bits & !known));
    }
    out
}

/// The reasons that lower clocks below what the workload asked: hardware slowdown, sync boost
/// (held back to the slowest GPU of a group), thermal slowdowns and the power brake.
///
/// Not in the mask: `gpu_idle` and `applications_clocks_setting` (no work, or clocks someone
/// set), and `sw_power_cap`. An H100 SXM runs large bf16 / fp8 GEMMs at its power limit by
/// design (the boost algorithm trades clock for power within the cap); counting that as
/// throttling would warn on nearly every heavy case. The cap is reported on its own
/// ([`SW_POWER_CAP`], [`power_capped_pct`]); a clock it pushed under the threshold is still
/// flagged by [`clock_is_low`].
pub const SLOWDOWN_MASK: u64 = 0x8 | 0x10 | 0x20 | 0x40 | 0x80;

/// `nvmlClocksThrottleReasonSwPowerCap`.
pub const SW_POWER_CAP: u64 = 0x4;

/// Whether a reading's reasons include one of [`SLOWDOWN_MASK`].
pub fn is_slowdown(bits: u64) -> bool {
    bits & SLOWDOWN_MASK != 0
}

/// The share of readings, in percent, taken at the software power cap (the `gpu_power_capped`
/// metric): reported beside the clocks, not as throttling.
pub fn power_capped_pct(readings: &[Reading]) -> f64 {
    if readings.is_empty() {
        return 0.0;
    }
    let capped = readings
        .iter()
        .filter(|r| r.throttle_bits.unwrap_or(0) & SW_POWER_CAP != 0)
        .count();
    100.0 * capped as f64 / readings.len() as f64
}

/// nvbench's rule: a clock under `THROTTLE_THRESHOLD` of the default is throttled.
pub fn clock_is_low(sm_clock_mhz: f64, default_mhz: f64) -> bool {
    default_mhz > 0.0 && sm_clock_mhz < THROTTLE_THRESHOLD * default_mhz
}

/// One telemetry reading.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reading {
    pub sm_clock_mhz: Option<f64>,
    pub power_w: Option<f64>,
    pub temperature_c: Option<f64>,
    pub throttle_bits: Option<u64>,
}

/// NVML, initialised once per worker.
pub struct Telemetry {
    nvml: Nvml,
}

impl Telemetry {
    /// NVML if the driver ships it and it initialises; `Err` says why not (for the env line).
    pub fn open() -> Result<Arc<Telemetry>, String> {
        let nvml = Nvml::load(&LIBNVML).map_err(|e| e.to_string())?;
        // SAFETY: plain C call with no arguments.
        let rc = unsafe { (nvml.nvmlInit_v2)() };
        if rc != NVML_SUCCESS {
            return Err(format!(
                "nvmlInit failed: {}",
                ffi::c_str(unsafe { (nvml.nvmlErrorString)(rc) })
            ));
        }
        Ok(Arc::new(Telemetry { nvml }))
    }

    pub fn driver_version(&self) -> Option<String> {
        let mut buf = [0 as c_char; 96];
        // SAFETY: the buffer is as long as we say.
        let rc = unsafe { (self.nvml.nvmlSystemGetDriverVersion)(buf.as_mut_ptr(), buf.len() as c_uint) };
        (rc == NVML_SUCCESS).then(|| ffi::c_str(buf.as_ptr()))
    }

    /// NVML's handle for the GPU with this UUID (NVML and CUDA number GPUs differently when
    /// CUDA_VISIBLE_DEVICES is set; the UUID is the same in both).
    pub(crate) fn device(&self, uuid: &str) -> Option<ffi::Handle> {
        let c = CString::new(uuid).ok()?;
        let mut h: ffi::Handle = std::ptr::null_mut();
        // SAFETY: valid C string and out pointer.
        let rc = unsafe { (self.nvml.nvmlDeviceGetHandleByUUID)(c.as_ptr(), &mut h) };
        (rc == NVML_SUCCESS).then_some(h)
    }

    /// The default SM clock (MHz): the default applications clock, else the maximum.
    pub(crate) fn default_sm_clock_mhz(&self, dev: ffi::Handle) -> Option<f64> {
        let mut v: c_uint = 0;
        // SAFETY: valid handle and out pointer.
        let rc = unsafe { (self.nvml.nvmlDeviceGetDefaultApplicationsClock)(dev, NVML_CLOCK_SM, &mut v) };
        if rc == NVML_SUCCESS && v > 0 {
            return Some(v as f64);
        }
        let rc = unsafe { (self.nvml.nvmlDeviceGetMaxClockInfo)(dev, NVML_CLOCK_SM, &mut v) };
        (rc == NVML_SUCCESS && v > 0).then_some(v as f64)
    }

    pub(crate) fn read(&self, dev: ffi::Handle) -> Reading {
        let mut clock: c_uint = 0;
        let mut power_mw: c_uint = 0;
        let mut temp: c_uint = 0;
        let mut bits: c_ulonglong = 0;
        // SAFETY: valid handle and out pointers; failures leave the field unset.
        unsafe {
            Reading {
                sm_clock_mhz: ((self.nvml.nvmlDeviceGetClockInfo)(dev, NVML_CLOCK_SM, &mut clock)
                    == NVML_SUCCESS)
                    .then_some(clock as f64),
                power_w: ((self.nvml.nvmlDeviceGetPowerUsage)(dev, &mut power_mw) == NVML_SUCCESS)
                    .then_some(power_mw as f64 / 1000.0),
                temperature_c: ((self.nvml.nvmlDeviceGetTemperature)(dev, NVML_TEMPERATURE_GPU, &mut temp)
                    == NVML_SUCCESS)
                    .then_some(temp as f64),
                throttle_bits: ((self.nvml.nvmlDeviceGetCurrentClocksThrottleReasons)(dev, &mut bits)
                    == NVML_SUCCESS)
                    .then_some(bits),
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // SAFETY: paired with nvmlInit_v2 in `open`.
        unsafe { (self.nvml.nvmlShutdown)() };
    }
}

/// Collects readings during one case, at most every `interval`, outside timed regions.
pub struct Recorder {
    source: Option<(Arc<Telemetry>, ffi::Handle)>,
    default_mhz: Option<f64>,
    interval: Duration,
    last: Option<Instant>,
    pub readings: Vec<Reading>,
}

impl Recorder {
    /// A recorder for the GPU with this UUID; without NVML it records nothing.
    pub fn new(telemetry: Option<&Arc<Telemetry>>, uuid: &str) -> Recorder {
        let source = telemetry.and_then(|t| t.device(uuid).map(|h| (t.clone(), h)));
        let default_mhz = source.as_ref().and_then(|(t, h)| t.default_sm_clock_mhz(*h));
        Recorder {
            source,
            default_mhz,
            interval: Duration::from_millis(100),
            last: None,
            readings: Vec::new(),
        }
    }

    /// A recorder fed by hand (tests).
    pub fn manual(default_mhz: Option<f64>) -> Recorder {
        Recorder {
            source: None,
            default_mhz,
            interval: Duration::ZERO,
            last: None,
            readings: Vec::new(),
        }
    }

    /// Takes a reading if the interval has passed since the last one.
    pub fn tick(&mut self) {
        let Some((t, h)) = &self.source else {
            return;
        };
        if self.last.is_some_and(|l| l.elapsed() < self.interval) {
            return;
        }
        self.last = Some(Instant::now());
        self.readings.push(t.read(*h));
    }

    /// Adds the telemetry metrics (`gpu_sm_clock` MHz, `gpu_power` W, `gpu_temperature` °C,
    /// `gpu_power_capped` % of readings at the software power cap) and
    /// a warning when any reading had a low clock or a slowdown reason.
    pub fn finish(self, out: &mut CaseOutput) {
        if self.readings.is_empty() {
            return;
        }
        let col =
            |f: fn(&Reading) -> Option<f64>| -> Vec<f64> { self.readings.iter().filter_map(f).collect() };
        let clocks = col(|r| r.sm_clock_mhz);
        let power = col(|r| r.power_w);
        let temp = col(|r| r.temperature_c);
        if !clocks.is_empty() {
            out.metric("gpu_sm_clock", "MHz", Better::Higher, clocks.clone());
        }
        if !power.is_empty() {
            out.metric("gpu_power", "W", Better::Lower, power);
        }
        if !temp.is_empty() {
            out.metric("gpu_temperature", "C", Better::Lower, temp);
        }
        if let Some(w) = throttle_warning(&self.readings, self.default_mhz) {
            out.warn(w);
        }
        // The power cap is its own metric (share of readings), never a throttle warning.
        out.metric(
            "gpu_power_capped",
            "%",
            Better::Lower,
            vec![power_capped_pct(&self.readings)],
        );
    }
}

/// The warning for a case's readings, if any was throttled: how many, the lowest clock against
/// the default, and the reasons NVML gave.
pub fn throttle_warning(readings: &[Reading], default_mhz: Option<f64>) -> Option<String> {
    let mut low = 0;
    let mut slowed = 0;
    let mut bits_seen = 0u64;
    let mut min_clock = f64::INFINITY;
    for r in readings {
        let bits = r.throttle_bits.unwrap_or(0);
        let is_low = match (r.sm_clock_mhz, default_mhz) {
            (Some(c), Some(d)) => clock_is_low(c, d),
            _ => false,
        };
        if let Some(c) = r.sm_clock_mhz {
            min_clock = min_clock.min(c);
        }
        if is_low {
            low += 1;
        }
        if is_slowdown(bits) {
            slowed += 1;
            bits_seen |= bits & SLOWDOWN_MASK;
        }
        if is_low {
            // A low clock names every reason NVML gave, the power cap included: the cap is
            // then what lowered it.
            bits_seen |= bits;
        }
    }
    if low == 0 && slowed == 0 {
        return None;
    }
    let reasons = decode_throttle_reasons(bits_seen);
    Some(format!(
        "GPU throttled: {low} of {n} telemetry samples had the SM clock under {pct:.0}% of its default ({min} MHz lowest vs {def} MHz), {slowed} had a slowdown reason ({reasons}); the timings of this case may be low",
        n = readings.len(),
        pct = THROTTLE_THRESHOLD * 100.0,
        min = if min_clock.is_finite() { format!("{min_clock:.0}") } else { "?".into() },
        def = default_mhz.map_or("?".into(), |d| format!("{d:.0}")),
        reasons = if reasons.is_empty() { "none reported".into() } else { reasons.join(", ") },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_decode() {
        assert_eq!(decode_throttle_reasons(0), Vec::<String>::new());
        assert_eq!(
            decode_throttle_reasons(0x4 | 0x40),
            vec!["sw_power_cap", "hw_thermal_slowdown"]
        );
        assert_eq!(decode_throttle_reasons(0x1000 | 0x1), vec!["gpu_idle", "0x1000"]);
        assert!(!is_slowdown(0x1 | 0x2));
        assert!(is_slowdown(0x20));
    }

    #[test]
    fn slowdown_mask_excludes_power_cap_idle_and_settings() {
        for (bit, name) in THROTTLE_REASONS {
            let counted = matches!(
                name,
                "hw_slowdown"
                    | "sync_boost"
                    | "sw_thermal_slowdown"
                    | "hw_thermal_slowdown"
                    | "hw_power_brake_slowdown"
            );
            assert_eq!(is_slowdown(bit), counted, "{name}");
        }
        assert!(!is_slowdown(SW_POWER_CAP));
        assert!(is_slowdown(SW_POWER_CAP | 0x40));
    }

    #[test]
    fn low_clock_rule_is_75_percent() {
        assert!(clock_is_low(1000.0, 1980.0));
        assert!(!clock_is_low(1485.0, 1980.0)); // exactly 75%
        assert!(clock_is_low(1484.0, 1980.0));
        assert!(!clock_is_low(100.0, 0.0));
    }

    fn r(clock: f64, bits: u64) -> Reading {
        Reading {
            sm_clock_mhz: Some(clock),
            power_w: Some(300.0),
            temperature_c: Some(60.0),
            throttle_bits: Some(bits),
        }
    }

    #[test]
    fn warning_names_low_clocks_and_reasons() {
        let ok = [r(1980.0, 0), r(1950.0, 0x1)];
        assert_eq!(throttle_warning(&ok, Some(1980.0)), None);
        let bad = [r(1980.0, 0), r(900.0, 0x40)];
        let w = throttle_warning(&bad, Some(1980.0)).unwrap();
        assert!(w.contains("1 of 2"), "{w}");
        assert!(w.contains("900 MHz lowest vs 1980 MHz"), "{w}");
        assert!(w.contains("hw_thermal_slowdown"), "{w}");
        // A power cap at a normal clock is not throttling (an H100 SXM sits at its cap under
        // large bf16 GEMMs); it is reported on its own.
        let capped = [r(1900.0, 0x4), r(1950.0, 0)];
        assert_eq!(throttle_warning(&capped, Some(1980.0)), None);
        assert_eq!(power_capped_pct(&capped), 50.0);
        assert_eq!(power_capped_pct(&ok), 0.0);
        assert_eq!(power_capped_pct(&[]), 0.0);
        // A clock the cap pushed under the threshold is still flagged, naming the cap.
        let w = throttle_warning(&[r(1000.0, 0x4)], Some(1980.0)).unwrap();
        assert!(w.contains("1 of 1") && w.contains("sw_power_cap"), "{w}");
        // Sync boost counts (held back to the slowest GPU of a group).
        assert!(throttle_warning(&[r(1900.0, 0x10)], Some(1980.0)).is_some());
    }

    #[test]
    fn recorder_adds_metrics_and_warning() {
        let mut rec = Recorder::manual(Some(2000.0));
        rec.readings = vec![r(1000.0, 0x8), r(1990.0, 0)];
        let mut out = CaseOutput::new("cuda:0");
        rec.finish(&mut out);
        let names: Vec<&str> = out.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["gpu_sm_clock", "gpu_power", "gpu_temperature", "gpu_power_capped"]
        );
        assert_eq!(out.warnings.len(), 1);
        assert!(out.warnings[0].contains("hw_slowdown"));
        let mut rec = Recorder::manual(Some(2000.0));
        rec.readings = vec![r(1990.0, 0x4)];
        let mut out = CaseOutput::new("cuda:0");
        rec.finish(&mut out);
        assert!(out.warnings.is_empty());
        let capped = out.metrics.iter().find(|m| m.name == "gpu_power_capped").unwrap();
        assert_eq!(capped.values, [100.0]);
        // Without NVML, ticking records nothing and nothing is added.
        let mut none = Recorder::new(None, "GPU-x");
        none.tick();
        let mut out = CaseOutput::new("cuda:0");
        none.finish(&mut out);
        assert!(out.metrics.is_empty() && out.warnings.is_empty());
    }
}
