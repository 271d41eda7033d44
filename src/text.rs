//! Text from outside (servers, pcp, hold rows) made safe to show: one
//! inert line in logs, tables and terminals.

/// `text` with its control characters (newlines, escape sequences…) and
/// bidirectional overrides written as Rust escapes (`\n`, `\u{1b}`), so
/// that what a server says stays one inert line in logs and tables.
pub fn escape_controls(text: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(|c| c.is_control() || bidi(c)) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || bidi(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain: ok é"), "plain: ok é");
        assert_eq!(
            escape_controls("FATAL: x\nERROR: forged\r\t\u{1b}[31m\u{0}\u{7f}\u{202e}"),
            "FATAL: x\\nERROR: forged\\r\\t\\u{1b}[31m\\u{0}\\u{7f}\\u{202e}"
        );
    }
}
