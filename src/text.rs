//! Text from outside (servers, pcp, hold rows) made safe to show: one
//! inert line in logs, tables and terminals.

/// `text` with its control characters (newlines, escape sequences…) and
/// bidirectional overrides written as Rust escapes (`\n`, `\u{1b}`), so
/// that what a server says stays one inert line in logs and tables.
pub(crate) fn escape_controls(text: &str) -> String {
    if !needs_escaping(text) {
        return text.to_string();
    }
    escape(text)
}

/// [`escape_controls`] of a `String` already owned: returned as it is, with
/// no copy, when there is nothing to escape (the common case, on paths
/// taken for every node at every beat).
pub(crate) fn escape_controls_owned(text: String) -> String {
    if needs_escaping(&text) {
        escape(&text)
    } else {
        text
    }
}

fn bidi(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn needs_escaping(text: &str) -> bool {
    text.chars().any(|c| c.is_control() || bidi(c))
}

fn escape(text: &str) -> String {
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

/// `%XX` decoded; `None` for a bad escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owned_text_is_escaped_the_same() {
        for t in ["plain: ok é", "a\nb\u{1b}[2J\u{9b}\u{202e}"] {
            assert_eq!(escape_controls_owned(t.to_string()), escape_controls(t));
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain: ok é"), "plain: ok é");
        assert_eq!(
            escape_controls("FATAL: x\nERROR: forged\r\t\u{1b}[31m\u{0}\u{7f}\u{202e}"),
            "FATAL: x\\nERROR: forged\\r\\t\\u{1b}[31m\\u{0}\\u{7f}\\u{202e}"
        );
    }
}
