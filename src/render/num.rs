//! Number formats shared by every table, report and plot.

/// Four significant digits, no exponent for everyday magnitudes.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e7).contains(&a) {
        format!("{v:.3e}")
    } else {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    }
}

/// `+5.2%` for a ratio of 1.052.
pub fn pct(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

/// Half the width of a CI relative to the median, in percent (`1.3%`): the `±ci` column.
pub fn ci_pct(median: f64, low: f64, high: f64) -> Option<String> {
    (median != 0.0).then(|| format!("{:.1}%", (high - low) / 2.0 / median.abs() * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_format() {
        assert_eq!(fmt_num(12.345678), "12.35");
        assert_eq!(fmt_num(0.012345), "0.01235");
        assert_eq!(fmt_num(1234.5), "1234");
    }

    #[test]
    fn percentages() {
        assert_eq!(pct(1.052), "+5.2%");
        assert_eq!(ci_pct(10.0, 9.0, 11.0).as_deref(), Some("10.0%"));
        assert_eq!(ci_pct(0.0, 9.0, 11.0), None);
    }
}
