//! The one aligned text table (end of a run, compare, history): columns padded to their widest
//! cell, two spaces apart, trailing blanks cut.

/// Renders `rows` (the header first) with every line ending in a newline; a column for which
/// `right(i)` holds is right-aligned (numbers), the others left-aligned.
pub fn aligned(rows: &[Vec<String>], right: impl Fn(usize) -> bool) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let pad = " ".repeat(widths[i] - cell.chars().count());
                if right(i) {
                    format!("{pad}{cell}")
                } else {
                    format!("{cell}{pad}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_and_aligns() {
        let rows = vec![
            vec!["name".to_string(), "n".to_string(), "note".to_string()],
            vec!["a".to_string(), "1234".to_string(), String::new()],
        ];
        assert_eq!(aligned(&rows, |i| i == 1), "name     n  note\na     1234\n");
    }
}
