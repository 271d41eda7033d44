//! A strict reader of the Prometheus text format (version 0.0.4), for
//! tests: it refuses what a Prometheus server would refuse (a bad name, a
//! bad label, a value that is not a number, a sample without its `# TYPE`,
//! the same series twice), so a test reading `/metrics` with it checks the
//! format as well as the values.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: its samples in order, and each family's type.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// The value of the series `name` with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Every sample of `name` whose labels include `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// The family a sample belongs to (histogram samples end in `_bucket`,
/// `_sum`, `_count`).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
    })
}

/// `{k="v",…}` at the start of `s`: the labels and the rest of `s`.
fn labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut out = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else {
        return Ok((out, s));
    };
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((out, after));
        }
        let (key, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("bad label in {s:?}"))?;
        let key = key.trim();
        if !valid_label(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut val = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => val.push(c),
                    _ => return Err(format!("bad escape in {s:?}")),
                },
                Some((_, c)) => val.push(c),
            }
        };
        if out.insert(key.to_string(), val).is_some() {
            return Err(format!("label {key:?} twice in {s:?}"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Reads `text`, refusing anything out of format.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let at = |msg: String| format!("line {}: {msg}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut words = c.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_name(name) {
                        return Err(at("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if e.types.insert(name.into(), kind.into()).is_some() {
                        return Err(at("a second TYPE for the same family".into()));
                    }
                }
                (Some("HELP"), Some(name), _) if !valid_name(name) => {
                    return Err(at("bad metric name".into()))
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = labels(&line[name_end..]).map_err(at)?;
        let mut parts = rest.split_whitespace();
        let v = parts
            .next()
            .and_then(value)
            .ok_or_else(|| at("no number".into()))?;
        if let Some(ts) = parts.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
        }
        if parts.next().is_some() {
            return Err(at("extra fields".into()));
        }
        if family_of(name, &e.types).is_none() {
            return Err(at("sample without a TYPE line before it".into()));
        }
        if !seen.insert((
            name.to_string(),
            labels.clone().into_iter().collect::<Vec<_>>(),
        )) {
            return Err(at("the same series twice".into()));
        }
        e.samples.push(Sample {
            name: name.into(),
            labels,
            value: v,
        });
    }
    Ok(e)
}
