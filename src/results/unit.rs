//! What a metric's unit says about its values: whether they can be negative (a time, a rate, a
//! size or a count cannot), and whether they vary from one worker process to the next, so that
//! a verdict on them needs replicated rounds (everything but sizes and counts).

/// The kind of quantity a unit measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// A duration: `ns`, `us`, `µs`, `ms`, `s`, `min`, `h`.
    Time,
    /// Something per something: `GB/s`, `TFLOP/s`, `tokens/s`, `J/token`, `tokens/J`.
    Rate,
    /// A size or a count: `B` … `TiB`, `count`, `elements`. The same in every process that
    /// computes it, so one round can judge it.
    Amount,
    /// Anything else (`%`, `x`, `relative`, `C`, `W`, `MHz`, a program's own unit): may be
    /// negative, and judged like a time.
    Other,
}

impl Quantity {
    /// The quantity a unit measures.
    pub fn of_unit(unit: &str) -> Quantity {
        let u = unit.trim();
        if u.contains('/') {
            return Quantity::Rate;
        }
        match u {
            "ns" | "us" | "µs" | "μs" | "ms" | "s" | "min" | "h" => Quantity::Time,
            "B" | "bytes" | "KB" | "KiB" | "MB" | "MiB" | "GB" | "GiB" | "TB" | "TiB" | "count"
            | "elements" => Quantity::Amount,
            _ => Quantity::Other,
        }
    }

    /// Whether a value of this quantity can be below zero.
    pub fn can_be_negative(self) -> bool {
        self == Quantity::Other
    }

    /// Whether a verdict on it needs replicated rounds (worker processes): process-level effects
    /// (memory layout, thread placement, clocks) move timings between processes, so samples of
    /// one process cannot decide a change of a time or anything derived from one.
    pub fn needs_rounds(self) -> bool {
        self != Quantity::Amount
    }
}

/// Why a summary value read from results.csv cannot be a measurement (`None`: it can).
pub fn bad_value(name: &str, value: f64, unit: &str) -> Option<String> {
    if !value.is_finite() {
        return Some(format!("{name} is {value}, not a finite number"));
    }
    let q = Quantity::of_unit(unit);
    if value < 0.0 && !q.can_be_negative() {
        return Some(format!(
            "{name} {value} is negative, which a {} ({unit}) cannot be",
            match q {
                Quantity::Time => "time",
                Quantity::Rate => "rate",
                _ => "size or count",
            }
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_of_every_engine() {
        for u in ["ms", "us", "s"] {
            assert_eq!(Quantity::of_unit(u), Quantity::Time, "{u}");
        }
        for u in ["GB/s", "TFLOP/s", "tokens/s", "samples/s", "J/token"] {
            assert_eq!(Quantity::of_unit(u), Quantity::Rate, "{u}");
        }
        for u in ["MiB", "count", "elements"] {
            assert_eq!(Quantity::of_unit(u), Quantity::Amount, "{u}");
            assert!(!Quantity::of_unit(u).needs_rounds());
        }
        for u in ["%", "x", "relative", "C", "W", "MHz", ""] {
            assert_eq!(Quantity::of_unit(u), Quantity::Other, "{u}");
            assert!(Quantity::of_unit(u).needs_rounds());
        }
    }

    #[test]
    fn bad_values() {
        assert_eq!(bad_value("median", 1.5, "ms"), None);
        assert_eq!(bad_value("median", -2.0, "C"), None);
        assert_eq!(
            bad_value("median", f64::NAN, "C").unwrap(),
            "median is NaN, not a finite number"
        );
        assert_eq!(
            bad_value("median", f64::INFINITY, "ms").unwrap(),
            "median is inf, not a finite number"
        );
        assert_eq!(
            bad_value("median", -1.5, "ms").unwrap(),
            "median -1.5 is negative, which a time (ms) cannot be"
        );
        assert!(bad_value("min", -1.0, "GB/s").unwrap().contains("a rate (GB/s)"));
        assert!(bad_value("max", -1.0, "MiB")
            .unwrap()
            .contains("a size or count (MiB)"));
    }
}
