//! HTML text escaping, shared by the pages and the SVG drawings.

/// Escape text for HTML and SVG bodies and attribute values; control characters (but newline
/// and tab) become U+FFFD so that nothing from an artifact can drive a terminal or a parser.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}
