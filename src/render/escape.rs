//! Escaping for the text formats tagbench writes: Markdown table cells, XML (JUnit, HTML, SVG).

/// Escapes text for a Markdown table cell (pipes, HTML, backticks).
pub fn md_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '|' => o.push_str("\\|"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '`' | '*' | '_' | '[' | ']' | '\\' => {
                o.push('\\');
                o.push(ch);
            }
            '\n' | '\r' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// Escapes text for XML attributes and content.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // XML 1.0 forbids most control characters, escaped or not.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(md_escape("a|b <c>"), "a\\|b &lt;c&gt;");
        assert_eq!(xml_escape("\"x\" & 'y'"), "&quot;x&quot; &amp; &#39;y&#39;");
    }
}
