//! The warnings of a run, gathered and said once at the end: per target, case and message (a
//! metric's outlier warning is one message whatever its numbers), with how often it came and
//! the range of each number in it. A two-target smoke run used to print ~40 outlier lines per
//! round, burying the answer.

use std::collections::BTreeMap;

/// A message cut into its text and its numbers: `latency: 3 of 50 samples` is the text
/// `["latency: ", " of ", " samples"]` around the numbers `["3", "50"]`.
fn split_numbers(message: &str) -> (Vec<String>, Vec<String>) {
    let (mut texts, mut numbers) = (vec![String::new()], Vec::new());
    let chars: Vec<char> = message.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_number = chars[i].is_ascii_digit()
            // Not a digit inside a word (`fp32`, `sm_90`, `x86_64`).
            && !(i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'));
        if !starts_number {
            texts.last_mut().expect("one text at least").push(chars[i]);
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && chars[j].is_ascii_digit() {
            j += 1;
        }
        if j + 1 < chars.len() && chars[j] == '.' && chars[j + 1].is_ascii_digit() {
            j += 1;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
        }
        numbers.push(chars[i..j].iter().collect());
        texts.push(String::new());
        i = j;
    }
    (texts, numbers)
}

/// One kind of warning: how often it came and, per number in it, the smallest and largest.
#[derive(Debug, Clone)]
struct Gathered {
    count: usize,
    texts: Vec<String>,
    /// (smallest, largest) of each number, as written.
    ranges: Vec<(String, String)>,
}

impl Gathered {
    fn add(&mut self, numbers: Vec<String>) {
        self.count += 1;
        let value = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        for ((lo, hi), n) in self.ranges.iter_mut().zip(numbers) {
            if value(&n) < value(lo) {
                *lo = n.clone();
            }
            if value(&n) > value(hi) {
                *hi = n;
            }
        }
    }

    /// The message with each number, or its range (`2–9`) where it varied.
    fn text(&self) -> String {
        let mut out = self.texts[0].clone();
        for ((lo, hi), text) in self.ranges.iter().zip(&self.texts[1..]) {
            if lo == hi {
                out.push_str(lo);
            } else {
                out.push_str(&format!("{lo}–{hi}"));
            }
            out.push_str(text);
        }
        out
    }
}

/// The warnings of a run, in the order they first came.
#[derive(Debug, Default)]
pub struct Warnings {
    /// (target, `workload/case`, the message's text without its numbers) → what came.
    gathered: BTreeMap<(String, String, Vec<String>), (usize, Gathered)>,
}

impl Warnings {
    /// Takes one warning of `target` about `workload/case`.
    pub fn add(&mut self, target: &str, workload: &str, case: &str, message: &str) {
        let (texts, numbers) = split_numbers(message);
        let order = self.gathered.len();
        let key = (target.to_string(), format!("{workload}/{case}"), texts.clone());
        match self.gathered.get_mut(&key) {
            Some((_, g)) => g.add(numbers),
            None => {
                let ranges = numbers.iter().map(|n| (n.clone(), n.clone())).collect();
                let g = Gathered {
                    count: 1,
                    texts,
                    ranges,
                };
                self.gathered.insert(key, (order, g));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.gathered.is_empty()
    }

    /// Every warning once, in the order they first came, with how often it came: `warning:
    /// b: gemm/size=256: latency: 2–9 of 50 samples are outliers … (5×)`.
    pub fn lines(&self) -> Vec<String> {
        let mut all: Vec<(&usize, String)> = self
            .gathered
            .iter()
            .map(|((target, case, _), (order, g))| {
                let times = if g.count == 1 {
                    String::new()
                } else {
                    format!(" ({}×)", g.count)
                };
                (order, format!("warning: {target}: {case}: {}{times}", g.text()))
            })
            .collect();
        all.sort_by_key(|(order, _)| **order);
        all.into_iter().map(|(_, line)| line).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outliers(k: usize, mad: usize) -> String {
        format!("latency: {k} of 50 samples are outliers (Tukey fences; {mad} by MAD z-score > 3.5); kept, but the machine may be noisy")
    }

    #[test]
    fn one_line_per_target_case_and_message_with_counts_and_ranges() {
        let mut w = Warnings::default();
        for (k, mad) in [(3, 1), (9, 0), (2, 4)] {
            w.add("b", "gemm", "size=256,dtype=fp32", &outliers(k, mad));
        }
        w.add("a", "gemm", "size=256,dtype=fp32", &outliers(5, 5));
        w.add(
            "b",
            "gemm",
            "size=256,dtype=fp32",
            "only one rank: busbw equals algbw",
        );
        assert_eq!(
            w.lines(),
            [
                "warning: b: gemm/size=256,dtype=fp32: latency: 2–9 of 50 samples are outliers (Tukey fences; 0–4 by MAD z-score > 3.5); kept, but the machine may be noisy (3×)",
                "warning: a: gemm/size=256,dtype=fp32: latency: 5 of 50 samples are outliers (Tukey fences; 5 by MAD z-score > 3.5); kept, but the machine may be noisy",
                "warning: b: gemm/size=256,dtype=fp32: only one rank: busbw equals algbw",
            ]
        );
    }

    #[test]
    fn digits_inside_words_are_text() {
        let (texts, numbers) = split_numbers("fp32 needs sm_90 or 1.5x of 12 GiB");
        assert_eq!(numbers, ["1.5", "12"]);
        assert_eq!(texts, ["fp32 needs sm_90 or ", "x of ", " GiB"]);
    }
}
