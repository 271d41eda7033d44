//! Reads the backend list out of `pgpool.conf`: `backend_hostnameN` and
//! `backend_portN` give the node id N that pcp commands take (README "pgpool-II", pgpool/README.md).
//!
//! Only these two keys are read. The syntax is PostgreSQL's configuration
//! syntax: `name = value` (the `=` optional), values bare or in single
//! quotes with `''` for a quote, `#` starting a comment.

use std::collections::BTreeMap;

/// One backend as pgpool.conf declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backend {
    pub(crate) host: String,
    /// pgpool's default when `backend_portN` is absent.
    pub(crate) port: u16,
}

/// The backends by node id; a line it cannot read is reported with its
/// number (1-based).
pub(crate) fn backends(text: &str) -> Result<BTreeMap<u32, Backend>, String> {
    let mut hosts: BTreeMap<u32, String> = BTreeMap::new();
    let mut ports: BTreeMap<u32, (u16, usize)> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let Some((name, value)) = split_line(line).map_err(|e| format!("line {lineno}: {e}"))?
        else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        if let Some(n) = name.strip_prefix("backend_hostname") {
            let Ok(id) = n.parse::<u32>() else { continue };
            // Later lines win, as in pgpool itself.
            hosts.insert(id, value);
        } else if let Some(n) = name.strip_prefix("backend_port") {
            let Ok(id) = n.parse::<u32>() else { continue };
            let port = value
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("line {lineno}: {name} = {value:?} is not a port"))?;
            ports.insert(id, (port, lineno));
        }
    }
    Ok(hosts
        .into_iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(id, host)| {
            let port = ports.get(&id).map_or(5432, |(p, _)| *p);
            (id, Backend { host, port })
        })
        .collect())
}

/// `Ok(None)` for a blank or comment line.
fn split_line(line: &str) -> Result<Option<(String, String)>, String> {
    let s = line.trim_start();
    if s.is_empty() || s.starts_with('#') {
        return Ok(None);
    }
    let name_end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(s.len());
    let (name, rest) = s.split_at(name_end);
    if name.is_empty() {
        return Err(format!("cannot read {:?}", line.trim()));
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    let value = if let Some(quoted) = rest.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = quoted.chars().peekable();
        loop {
            match chars.next() {
                None => return Err(format!("unterminated quote in {:?}", line.trim())),
                Some('\'') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    out.push('\'');
                }
                Some('\'') => break,
                Some('\\') => {
                    if let Some(c) = chars.next() {
                        out.push(c);
                    }
                }
                Some(c) => out.push(c),
            }
        }
        out
    } else {
        rest.split('#').next().unwrap_or("").trim().to_string()
    };
    Ok(Some((name.to_string(), value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hosts_and_ports_with_quotes_comments_and_defaults() {
        let text = "\
# pgpool.conf
listen_addresses = '*'
backend_hostname0 = 'db0'   # the primary
backend_port0 = 5433
backend_weight0 = 1
backend_hostname1='db1'
backend_hostname2 = 'it''s'
backend_port2 5435
  # backend_hostname3 = 'commented'
BACKEND_HOSTNAME4 = db4 # bare value
backend_hostname5 = ''
";
        let b = backends(text).unwrap();
        let got: Vec<(u32, &str, u16)> = b
            .iter()
            .map(|(id, b)| (*id, b.host.as_str(), b.port))
            .collect();
        assert_eq!(
            got,
            [
                (0, "db0", 5433),
                (1, "db1", 5432),
                (2, "it's", 5435),
                (4, "db4", 5432)
            ]
        );
    }

    #[test]
    fn bad_port_and_unterminated_quote_name_the_line() {
        let e = backends("backend_hostname0 = 'a'\nbackend_port0 = 'x'\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = backends("\n\nbackend_hostname0 = 'a\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
    }
}
