//! JSON with comments, parsed into a tree that remembers where each value and
//! key starts, so that errors found after parsing (a port out of range, a
//! duplicate node) can still point at a line and column.
//!
//! Syntax is checked by serde_json, whose messages are good; only text it has
//! accepted reaches the positional parser here, which therefore stays small.
//! It still never indexes blindly: on anything unexpected it returns an error
//! rather than panicking.

use serde_json::Number;
use std::io::Read;

/// A line and column, both counted from 1; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A syntax problem: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) position: Position,
    pub(crate) message: String,
}

/// A value together with the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spanned<T> {
    pub(crate) at: usize,
    pub(crate) value: T,
}

/// A JSON value; objects keep every entry in order, duplicates included, so
/// that a key written twice can be reported instead of silently overwritten.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// The number, and its text as written (for messages).
    Number(Number, String),
    String(String),
    Array(Vec<Spanned<Json>>),
    Object(Vec<(Spanned<String>, Spanned<Json>)>),
}

impl Json {
    /// How a value is described in "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Json::Null => "null".to_string(),
            Json::Bool(b) => format!("{b}"),
            Json::Number(_, raw) => format!("number {raw}"),
            Json::String(s) => {
                let short: String = s.chars().take(40).collect();
                if short.len() < s.len() {
                    format!("string {short:?}…")
                } else {
                    format!("string {s:?}")
                }
            }
            Json::Array(_) => "an array".to_string(),
            Json::Object(_) => "an object".to_string(),
        }
    }
}

/// The text with its comments, and a way back from byte offsets to the
/// positions a person sees in the original file.
pub(crate) struct Document<'a> {
    original: &'a str,
}

impl<'a> Document<'a> {
    pub(crate) fn new(original: &'a str) -> Self {
        Document { original }
    }

    /// Line and column (in characters) of a byte offset of the original text.
    ///
    /// json_comments replaces every comment byte, newlines inside `/* */`
    /// included, with a space, so offsets survive stripping but lines do not:
    /// positions are therefore always computed against the original.
    pub(crate) fn position(&self, offset: usize) -> Position {
        let text = self.original;
        let offset = offset.min(text.len());
        let before = text.as_bytes().get(..offset).unwrap_or_default();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = match text.get(line_start..offset) {
            Some(s) => s.chars().count() + 1,
            // Not on a character boundary: fall back to bytes.
            None => offset - line_start + 1,
        };
        Position { line, column }
    }

    /// Strips comments and parses; the top-level value with its tree.
    pub(crate) fn parse(&self) -> Result<Spanned<Json>, SyntaxError> {
        let stripped = self.strip_comments()?;
        // serde_json judges the syntax (and bounds nesting depth, which keeps
        // the recursive parser below safe from deep input).
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&stripped) {
            return Err(self.serde_error(&stripped, &e));
        }
        let mut parser = Parser {
            text: stripped.as_bytes(),
            i: 0,
        };
        parser.skip_ws();
        let value = parser.value();
        match value {
            Some(v) => Ok(v),
            None => Err(SyntaxError {
                position: self.position(parser.i),
                message: "malformed JSON".to_string(),
            }),
        }
    }

    fn strip_comments(&self) -> Result<String, SyntaxError> {
        let mut bytes = Vec::with_capacity(self.original.len());
        let stripped = json_comments::CommentSettings::c_style()
            .strip_comments(self.original.as_bytes())
            .read_to_end(&mut bytes);
        if stripped.is_err() {
            return Err(self.locate_comment_error());
        }
        String::from_utf8(bytes).map_err(|e| SyntaxError {
            position: self.position(e.utf8_error().valid_up_to()),
            message: "invalid UTF-8 after removing comments".to_string(),
        })
    }

    /// json_comments says only that the data is invalid; find where and why
    /// by walking the same states it walks.
    fn locate_comment_error(&self) -> SyntaxError {
        #[derive(Clone, Copy)]
        enum S {
            Top,
            Str(usize),
            Escape(usize),
            Slash(usize),
            Block(usize),
            BlockStar(usize),
            Line,
        }
        let mut state = S::Top;
        for (i, &b) in self.original.as_bytes().iter().enumerate() {
            state = match (state, b) {
                (S::Top, b'"') => S::Str(i),
                (S::Top, b'/') => S::Slash(i),
                (S::Top, _) => S::Top,
                (S::Str(_), b'"') => S::Top,
                (S::Str(s), b'\\') => S::Escape(s),
                (S::Str(s), _) | (S::Escape(s), _) => S::Str(s),
                (S::Slash(s), b'*') => S::Block(s),
                (S::Slash(_), b'/') => S::Line,
                (S::Slash(s), _) => {
                    return SyntaxError {
                        position: self.position(s),
                        message: "unexpected '/' (comments are // … or /* … */)".to_string(),
                    }
                }
                (S::Block(s), b'*') | (S::BlockStar(s), b'*') => S::BlockStar(s),
                (S::BlockStar(_), b'/') => S::Top,
                (S::Block(s), _) | (S::BlockStar(s), _) => S::Block(s),
                (S::Line, b'\n') => S::Top,
                (S::Line, _) => S::Line,
            }
        }
        let (at, message) = match state {
            S::Str(s) | S::Escape(s) => (s, "unterminated string"),
            S::Slash(s) => (s, "unexpected '/' (comments are // … or /* … */)"),
            S::Block(s) | S::BlockStar(s) => (s, "unterminated /* comment"),
            S::Top | S::Line => (self.original.len(), "cannot remove comments"),
        };
        SyntaxError {
            position: self.position(at),
            message: message.to_string(),
        }
    }

    fn serde_error(&self, stripped: &str, e: &serde_json::Error) -> SyntaxError {
        // serde_json counts lines of the stripped text and columns in bytes;
        // go back to a byte offset, then to the original's line and column.
        let line_start = stripped
            .split_inclusive('\n')
            .take(e.line().saturating_sub(1))
            .map(str::len)
            .sum::<usize>();
        let offset = line_start + e.column().saturating_sub(1);
        let mut message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        if let Some(stem) = message.strip_suffix(&suffix) {
            message = stem.to_string();
        }
        SyntaxError {
            position: self.position(offset),
            message: format!("malformed JSON: {message}"),
        }
    }
}

/// Parses text serde_json has already accepted. `None` means "not what was
/// expected", which can only happen if the two parsers disagree.
struct Parser<'t> {
    text: &'t [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        if self.peek() == Some(b) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        if self.text.get(self.i..end)? == word {
            self.i = end;
            Some(())
        } else {
            None
        }
    }

    fn value(&mut self) -> Option<Spanned<Json>> {
        let at = self.i;
        let value = match self.peek()? {
            b'n' => self.literal(b"null").map(|_| Json::Null)?,
            b't' => self.literal(b"true").map(|_| Json::Bool(true))?,
            b'f' => self.literal(b"false").map(|_| Json::Bool(false))?,
            b'"' => Json::String(self.string()?),
            b'[' => self.array()?,
            b'{' => self.object()?,
            _ => self.number()?,
        };
        Some(Spanned { at, value })
    }

    fn string(&mut self) -> Option<String> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        let raw = std::str::from_utf8(self.text.get(start..self.i)?).ok()?;
        serde_json::from_str(raw).ok()
    }

    fn number(&mut self) -> Option<Json> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.i += 1;
        }
        let raw = std::str::from_utf8(self.text.get(start..self.i)?).ok()?;
        serde_json::from_str::<Number>(raw)
            .ok()
            .map(|n| Json::Number(n, raw.to_string()))
    }

    fn array(&mut self) -> Option<Json> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.eat(b']').is_some() {
            return Some(Json::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(Json::Array(items));
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self) -> Option<Json> {
        self.eat(b'{')?;
        let mut entries = Vec::new();
        self.skip_ws();
        if self.eat(b'}').is_some() {
            return Some(Json::Object(entries));
        }
        loop {
            self.skip_ws();
            let at = self.i;
            let key = Spanned {
                at,
                value: self.string()?,
            };
            self.skip_ws();
            self.eat(b':')?;
            self.skip_ws();
            let value = self.value()?;
            entries.push((key, value));
            self.skip_ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(Json::Object(entries));
                }
                _ => return None,
            }
        }
    }
}
