//! Synchronous replication as a master states it, read without I/O:
//! `synchronous_standby_names` parsed as PostgreSQL parses it
//! ([`parse_standby_names`]), the standbys that count for it, whether
//! commits wait ([`SyncRule::check`]), and the sizes operators write for
//! byte limits ([`parse_size`]).

use super::{MasterRepl, Walsender};

/// How a master picks its synchronous standbys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncMethod {
    /// `FIRST n (…)`, `n (…)` or a plain list (`FIRST 1`): the first `n`
    /// connected by priority.
    First,
    /// `ANY n (…)`: any `n` of them (quorum).
    Any,
}

impl SyncMethod {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SyncMethod::First => "first",
            SyncMethod::Any => "any",
        }
    }
}

/// A non-empty `synchronous_standby_names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncRule {
    pub(crate) method: SyncMethod,
    /// How many synchronous standbys a commit waits for.
    pub(crate) num: u32,
    /// The names listed, as written (unquoted); `*` matches any standby.
    pub(crate) names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Name(String),
    Num(String),
    Open,
    Close,
    Comma,
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    // Each turn takes at least one character: a token never comes empty.
    while let Some(c) = chars.next() {
        match c {
            c if c.is_ascii_whitespace() => {}
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            ',' => out.push(Token::Comma),
            '*' => out.push(Token::Name("*".into())),
            '"' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated quoted name".into()),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            name.push('"');
                        }
                        Some('"') => break,
                        Some(c) => name.push(c),
                    }
                }
                out.push(Token::Name(name));
            }
            c if c.is_ascii_digit() => {
                let mut n = String::from(c);
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    n.push(d);
                }
                out.push(Token::Num(n));
            }
            c if c.is_alphabetic() || c == '_' || !c.is_ascii() => {
                let mut n = String::from(c);
                while let Some(d) = chars
                    .next_if(|d| d.is_alphanumeric() || *d == '_' || *d == '$' || !d.is_ascii())
                {
                    n.push(d);
                }
                out.push(Token::Name(n));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

/// `synchronous_standby_names` as PostgreSQL reads it: empty is `None`
/// (no synchronous replication); `FIRST n (a, b)`, `ANY n (a, b)`,
/// `n (a, b)` (FIRST n) or a plain list `a, b` (FIRST 1). Names are
/// identifiers, numbers, `*` or double-quoted (`""` for a quote); the
/// keywords are case-insensitive. Anything else is the reason it cannot
/// be read (PostgreSQL would have refused it too).
pub(crate) fn parse_standby_names(text: &str) -> Result<Option<SyncRule>, String> {
    let toks = tokens(text)?;
    if toks.is_empty() {
        return Ok(None);
    }
    let keyword = |t: &Token, k: &str| matches!(t, Token::Name(n) if n.eq_ignore_ascii_case(k));
    let (method, num, rest) = match toks.as_slice() {
        [k, Token::Num(n), Token::Open, rest @ ..] if keyword(k, "first") => {
            (SyncMethod::First, n.as_str(), rest)
        }
        [k, Token::Num(n), Token::Open, rest @ ..] if keyword(k, "any") => {
            (SyncMethod::Any, n.as_str(), rest)
        }
        [Token::Num(n), Token::Open, rest @ ..] => (SyncMethod::First, n.as_str(), rest),
        _ => {
            return list(&toks).map(|names| {
                Some(SyncRule {
                    method: SyncMethod::First,
                    num: 1,
                    names,
                })
            })
        }
    };
    let Some((Token::Close, inner)) = rest.split_last() else {
        return Err("a list in parentheses must end with ')'".into());
    };
    let num: u32 = num
        .parse()
        .map_err(|_| format!("{num} is not a number of standbys"))?;
    if num == 0 {
        return Err("the number of synchronous standbys must be greater than zero".into());
    }
    Ok(Some(SyncRule {
        method,
        num,
        names: list(inner)?,
    }))
}

/// `a, b, c`: names (numbers are names here) separated by commas.
fn list(toks: &[Token]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match (i % 2, t) {
            (0, Token::Name(n) | Token::Num(n)) => names.push(n.clone()),
            (1, Token::Comma) => {}
            _ => return Err("expected a list of standby names separated by commas".into()),
        }
    }
    if names.is_empty() || toks.len() % 2 == 0 {
        return Err("expected a list of standby names separated by commas".into());
    }
    Ok(names)
}

/// Whether `synchronous_commit` makes commits wait for synchronous
/// standbys (`on`, `remote_write`, `remote_apply`).
pub(crate) fn commits_wait(synchronous_commit: &str) -> bool {
    let v = synchronous_commit.trim();
    !["off", "local", "false", "no", "0", ""]
        .iter()
        .any(|w| v.eq_ignore_ascii_case(w))
}

/// The result of [`SyncRule::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncCount {
    /// Standbys that can be synchronous now: streaming (or stopping), and
    /// named in the rule.
    pub(crate) connected: u32,
    /// Commits on the master wait: they need more than are connected.
    pub(crate) waiting: bool,
}

impl SyncRule {
    /// Whether `walsender` is one of the standbys this rule names
    /// (PostgreSQL compares names case-insensitively; `*` is any).
    pub(crate) fn names_standby(&self, w: &Walsender) -> bool {
        self.names
            .iter()
            .any(|n| n == "*" || n.eq_ignore_ascii_case(&w.application_name))
    }

    /// Counts the standbys that can be synchronous, as PostgreSQL picks
    /// its candidates (named, and streaming or stopping); commits wait
    /// when fewer than `num` are, whatever the method: FIRST needs its
    /// `num` first connected, ANY any `num`.
    pub(crate) fn check(&self, walsenders: &[Walsender], commit: &str) -> SyncCount {
        let connected = walsenders
            .iter()
            .filter(|w| matches!(w.state.as_str(), "streaming" | "stopping"))
            .filter(|w| self.names_standby(w))
            .count();
        let connected = u32::try_from(connected).unwrap_or(u32::MAX);
        SyncCount {
            connected,
            waiting: commits_wait(commit) && connected < self.num,
        }
    }
}

/// The synchronous replication of a cluster, from its master's last
/// beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncView {
    /// `synchronous_standby_names` as the master gave it.
    pub standby_names: String,
    pub synchronous_commit: String,
    /// `first` or `any`; `None` when `synchronous_standby_names` is empty
    /// (or unreadable: see `problem`).
    pub method: Option<&'static str>,
    /// Synchronous standbys commits wait for (0 without any).
    pub required: u32,
    /// Standbys connected that count for them; `None` when the master
    /// does not show its `pg_stat_replication` columns.
    pub connected: Option<u32>,
    /// Commits on the master wait on missing synchronous standbys.
    pub waiting: bool,
    /// Why plusmoin cannot tell, when it cannot.
    pub problem: Option<String>,
    /// `standby_names` parsed, when it could be.
    pub(crate) rule: Option<SyncRule>,
}

impl SyncView {
    /// What `repl` says.
    pub(crate) fn of(repl: &MasterRepl) -> SyncView {
        let mut view = SyncView {
            standby_names: repl.standby_names.clone(),
            synchronous_commit: repl.synchronous_commit.clone(),
            method: None,
            required: 0,
            connected: None,
            waiting: false,
            problem: None,
            rule: None,
        };
        match parse_standby_names(&repl.standby_names) {
            Ok(None) => {}
            Ok(Some(rule)) => {
                view.method = Some(rule.method.as_str());
                view.required = rule.num;
                view.rule = Some(rule);
                view.count(repl);
            }
            Err(e) => view.problem = Some(format!("cannot read synchronous_standby_names: {e}")),
        }
        view
    }

    /// What `repl` says, from `prev`, the view of the master's last beat:
    /// when its settings are the same, only the standbys are counted again
    /// (nothing parsed, nothing copied).
    pub(crate) fn update(prev: Option<SyncView>, repl: &MasterRepl) -> SyncView {
        match prev {
            // (Always reading again would give the same view: this is
            // the cheaper way, not another rule.)
            Some(mut v)
                if v.standby_names == repl.standby_names
                    && v.synchronous_commit == repl.synchronous_commit =>
            {
                if v.rule.is_some() {
                    v.count(repl);
                }
                v
            }
            _ => SyncView::of(repl),
        }
    }

    /// Counts `repl`'s standbys against the rule.
    fn count(&mut self, repl: &MasterRepl) {
        let Some(rule) = &self.rule else { return };
        match &repl.walsenders {
            Some(ws) => {
                let count = rule.check(ws, &repl.synchronous_commit);
                self.connected = Some(count.connected);
                self.waiting = count.waiting;
                self.problem = None;
            }
            None => {
                self.connected = None;
                self.waiting = false;
                self.problem = Some(
                    "pg_stat_replication shows no columns: grant pg_read_all_stats to plusmoin's user"
                        .into(),
                );
            }
        }
    }
}

/// A size as PostgreSQL and Patroni write them: a whole number of bytes
/// followed by `B`, `kB`, `MB`, `GB` or `TB` (units of 1024, case as
/// PostgreSQL writes them), or by nothing when `bare` allows it. `None`
/// for anything else, and for a size over `u64`.
pub(crate) fn parse_size(text: &str, bare: bool) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let shift = match unit.trim_start() {
        "" if bare => 0,
        "B" => 0,
        "kB" => 10,
        "MB" => 20,
        "GB" => 30,
        "TB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: SyncMethod, num: u32, names: &[&str]) -> Option<SyncRule> {
        Some(SyncRule {
            method,
            num,
            names: names.iter().map(|n| n.to_string()).collect(),
        })
    }

    #[test]
    fn standby_names_in_every_form() {
        use SyncMethod::*;
        assert_eq!(parse_standby_names(""), Ok(None));
        assert_eq!(parse_standby_names("  "), Ok(None));
        assert_eq!(parse_standby_names("a"), Ok(rule(First, 1, &["a"])));
        assert_eq!(
            parse_standby_names("a, b ,c"),
            Ok(rule(First, 1, &["a", "b", "c"]))
        );
        assert_eq!(
            parse_standby_names("2 (a, b, c)"),
            Ok(rule(First, 2, &["a", "b", "c"]))
        );
        assert_eq!(
            parse_standby_names("FIRST 2 (a, b)"),
            Ok(rule(First, 2, &["a", "b"]))
        );
        assert_eq!(
            parse_standby_names("first 1(a)"),
            Ok(rule(First, 1, &["a"]))
        );
        assert_eq!(
            parse_standby_names("ANY 1 (a, b)"),
            Ok(rule(Any, 1, &["a", "b"]))
        );
        assert_eq!(parse_standby_names("Any 3 (*)"), Ok(rule(Any, 3, &["*"])));
        assert_eq!(parse_standby_names("*"), Ok(rule(First, 1, &["*"])));
        assert_eq!(
            parse_standby_names(r#"FIRST 1 ("127.0.0.1:5433", "a""b", s_2$x)"#),
            Ok(rule(First, 1, &["127.0.0.1:5433", "a\"b", "s_2$x"]))
        );
        // Numbers are names in a list.
        assert_eq!(parse_standby_names("1, 2"), Ok(rule(First, 1, &["1", "2"])));
        // A quoted keyword is a name.
        assert_eq!(
            parse_standby_names(r#""first", "any""#),
            Ok(rule(First, 1, &["first", "any"]))
        );
        // An identifier may begin with an underscore or a letter beyond
        // ASCII, as PostgreSQL's do.
        assert_eq!(
            parse_standby_names("ANY 1 (_s1, été)"),
            Ok(rule(Any, 1, &["_s1", "été"]))
        );
    }

    #[test]
    fn standby_names_refused() {
        for bad in [
            "a b",
            "a,",
            ",a",
            "ANY 0 (a)",
            "FIRST 2 (a, b",
            "ANY (a)",
            "2 ()",
            "\"open",
            "a.b",
            "a:1",
            // A name starts with a letter, '_' or a non-ASCII character.
            "a, .",
            "-",
            "99999999999 (a)",
            // Only FIRST and ANY lead a count.
            "MANY 2 (a, b)",
        ] {
            assert!(parse_standby_names(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn ws(name: &str, state: &str) -> Walsender {
        Walsender {
            application_name: name.into(),
            state: state.into(),
            sync_state: "async".into(),
        }
    }

    #[test]
    fn counting_first_any_and_list() {
        let both = [ws("a", "streaming"), ws("B", "streaming")];
        let one = [ws("a", "streaming")];
        let none: [Walsender; 0] = [];
        let plain = parse_standby_names("a").unwrap().unwrap();
        assert_eq!(
            plain.check(&one, "on"),
            SyncCount {
                connected: 1,
                waiting: false
            }
        );
        assert!(plain.check(&none, "on").waiting);
        // Only its name counts: another standby does not stand in.
        assert!(plain.check(&[ws("c", "streaming")], "on").waiting);
        let first2 = parse_standby_names("FIRST 2 (a, b)").unwrap().unwrap();
        assert!(!first2.check(&both, "on").waiting);
        assert!(first2.check(&one, "on").waiting);
        assert_eq!(first2.check(&one, "on").connected, 1);
        let any1 = parse_standby_names("ANY 1 (a, b)").unwrap().unwrap();
        assert!(!any1.check(&both, "on").waiting);
        assert!(!any1.check(&one, "on").waiting);
        assert!(!any1.check(&[ws("b", "streaming")], "on").waiting);
        assert!(any1.check(&none, "on").waiting);
        let any2 = parse_standby_names("ANY 2 (a, b)").unwrap().unwrap();
        assert!(any2.check(&one, "on").waiting);
        assert!(!any2.check(&both, "remote_apply").waiting);
        // A standby still catching up is not a candidate; stopping is.
        assert!(plain.check(&[ws("a", "catchup")], "on").waiting);
        assert!(!plain.check(&[ws("a", "stopping")], "on").waiting);
        // Case-insensitive names, and `*`.
        let star = parse_standby_names("ANY 2 (*)").unwrap().unwrap();
        assert_eq!(star.check(&both, "on").connected, 2);
        let upper = parse_standby_names("\"A\"").unwrap().unwrap();
        assert!(!upper.check(&one, "on").waiting);
        // Commits that do not wait for standbys never wait.
        assert!(!plain.check(&none, "local").waiting);
        assert!(!plain.check(&none, "off").waiting);
        assert!(plain.check(&none, "remote_write").waiting);
    }

    #[test]
    fn view_of_a_master() {
        let mut repl = MasterRepl {
            wal: Some(1),
            standby_names: "ANY 1 (a, b)".into(),
            synchronous_commit: "on".into(),
            walsenders: Some(vec![ws("b", "streaming")]),
        };
        let v = SyncView::of(&repl);
        assert_eq!(
            (v.method, v.required, v.connected, v.waiting),
            (Some("any"), 1, Some(1), false)
        );
        repl.walsenders = Some(vec![]);
        assert!(SyncView::of(&repl).waiting);
        repl.walsenders = None;
        let v = SyncView::of(&repl);
        assert!(!v.waiting && v.problem.is_some() && v.connected.is_none());
        repl.standby_names = "".into();
        let v = SyncView::of(&repl);
        assert_eq!((v.method, v.required, v.waiting), (None, 0, false));
        repl.standby_names = "a b".into();
        assert!(SyncView::of(&repl).problem.is_some());
    }

    #[test]
    fn a_view_updated_with_the_same_settings_counts_again() {
        let mut repl = MasterRepl {
            wal: Some(1),
            standby_names: "FIRST 2 (a, b)".into(),
            synchronous_commit: "on".into(),
            walsenders: Some(vec![ws("a", "streaming"), ws("b", "streaming")]),
        };
        let v = SyncView::of(&repl);
        assert!(!v.waiting);
        repl.walsenders = Some(vec![ws("a", "streaming")]);
        let v = SyncView::update(Some(v), &repl);
        assert_eq!((v.connected, v.waiting), (Some(1), true));
        repl.walsenders = None;
        let v = SyncView::update(Some(v), &repl);
        assert!(!v.waiting && v.problem.is_some());
        // Other settings: read again.
        repl.walsenders = Some(vec![ws("a", "streaming")]);
        repl.standby_names = "ANY 1 (a, b)".into();
        let v = SyncView::update(Some(v), &repl);
        assert_eq!((v.method, v.required, v.waiting), (Some("any"), 1, false));
        repl.synchronous_commit = "local".into();
        repl.walsenders = Some(vec![]);
        let v = SyncView::update(Some(v), &repl);
        assert!(!v.waiting);
        // The view shows the setting it was counted with.
        assert_eq!(v.synchronous_commit, "local");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MB", false), Some(16 << 20));
        assert_eq!(parse_size("512kB", false), Some(512 << 10));
        assert_eq!(parse_size("7B", false), Some(7));
        assert_eq!(parse_size("2 GB", false), Some(2 << 30));
        assert_eq!(parse_size("1TB", false), Some(1 << 40));
        assert_eq!(parse_size("100", true), Some(100));
        assert_eq!(parse_size("100", false), None);
        for bad in [
            "16mb", "16M", "16kb", "16K", "1.5MB", "-1B", "MB", "", "16 MiB",
        ] {
            assert_eq!(parse_size(bad, true), None, "{bad:?}");
        }
        assert_eq!(parse_size("99999999999999TB", false), None);
    }
}
