//! The one GitHub-flavoured Markdown table writer every report uses.

/// One cell: `|` escaped so it does not end the cell, line breaks as `<br>` so they do
/// not end the row; `<` and `>` as entities and other control characters as `\x..` (found by
/// a hostile pass: a worker named `<img onerror=...>` or holding a terminal escape reached
/// `report.md` as is, for a Markdown preview or `cat` to act on).
fn md_cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => out.push_str("<br>"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            // invisible and direction-changing characters: a name must read as what it is
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// Text from the data (a worker's or a class's name) as literal Markdown: its punctuation
/// backslash-escaped and `&` as an entity, so that `![x](http://evil/x.png)` is not an image
/// a viewer loads, nor `[l](javascript:...)` a link (found by a hostile pass).
pub fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            // an e-mail address (and `mailto:`, `xmpp:`) is an autolink
            '@' => out.push_str("&#64;"),
            // what makes emphasis, code, links, images and math inside a table cell
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '!' | '~' | '$' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    // GitHub's autolinks (`https://...`, `www.`) need no brackets: their `:` and `.` as entities
    out.replace("://", "&#58;//").replace("www.", "www&#46;")
}

/// A GitHub-flavoured Markdown table.
///
/// Rows shorter than the header are padded with empty cells; a row longer than the header
/// widens the table with unnamed columns (GFM would silently drop the extra cells).
/// Returns an empty string when there are neither headers nor rows.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = rows
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(headers.len());
    if n == 0 {
        return String::new();
    }
    let line = |cells: &mut dyn Iterator<Item = String>| -> String {
        let mut out = String::from("|");
        for c in cells {
            out.push(' ');
            out.push_str(&c);
            out.push_str(" |");
        }
        out.push('\n');
        out
    };
    let mut out = line(&mut (0..n).map(|i| headers.get(i).map(|h| md_cell(h)).unwrap_or_default()));
    out += &line(&mut (0..n).map(|_| "---".to_string()));
    for r in rows {
        out += &line(&mut (0..n).map(|i| r.get(i).map(|c| md_cell(c)).unwrap_or_default()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_literal_markdown() {
        assert_eq!(md_text("![x](http://e/x.png) &amp; a_b"), "\\!\\[x\\]\\(http&#58;//e/x.png\\) &amp;amp; a\\_b");
        assert_eq!(md_text("happy"), "happy");
        assert_eq!(md_text("a@b.c $x$"), "a&#64;b.c \\$x\\$");
        assert!(markdown_table(&["w"], &[vec!["\u{202e}gnp.exe".to_string()]]).contains("\\u{202e}gnp.exe"));
        assert_eq!(md_text("https://e.x/w1 www.e.x &#58;"), "https&#58;//e.x/w1 www&#46;e.x &amp;#58;");
    }

    #[test]
    fn html_and_control_characters_in_cells_are_escaped() {
        let rows = vec![vec!["<img src=x onerror=alert(1)>".to_string(), "\u{1b}]0;PWN\u{7}A\r\nb".to_string()]];
        assert_eq!(markdown_table(&["w", "x"], &rows), "| w | x |\n| --- | --- |\n| &lt;img src=x onerror=alert(1)&gt; | \\x1b]0;PWN\\x07A<br>b |\n");
    }

    #[test]
    fn markdown_table_exact() {
        let rows = vec![
            vec!["cat".to_string(), "0.91".to_string()],
            vec!["a|b".to_string(), "line1\nline2".to_string()],
        ];
        assert_eq!(
            markdown_table(&["class", "accuracy"], &rows),
            "| class | accuracy |\n| --- | --- |\n| cat | 0.91 |\n| a\\|b | line1<br>line2 |\n"
        );
    }

    #[test]
    fn markdown_table_pads_and_widens_ragged_rows() {
        let rows = vec![
            vec!["1".to_string()],
            vec!["1".to_string(), "2".to_string(), "3".to_string()],
        ];
        assert_eq!(
            markdown_table(&["a", "b"], &rows),
            "| a | b |  |\n| --- | --- | --- |\n| 1 |  |  |\n| 1 | 2 | 3 |\n"
        );
        assert_eq!(markdown_table(&[], &[]), "");
    }
}
