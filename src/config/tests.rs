//! Tests of loading and validation: one per way a configuration can be
//! wrong, each checking the whole one-line message.

use super::*;
use proptest::prelude::*;

fn host() -> Result<String, String> {
    Ok("test-host".to_string())
}

/// No libpq password file, whatever the machine running the tests has.
fn no_pgpass(_daemon_user: &str) -> Option<PathBuf> {
    None
}

fn parse_ok(text: &str) -> Config {
    match parse_with(text, Path::new("x.json"), &host, &no_pgpass) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid configuration, got: {e}"),
    }
}

/// The message for `text`, which must be refused.
fn refused(text: &str) -> String {
    match parse_with(text, Path::new("x.json"), &host, &no_pgpass) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = r#"{"dbname": "d", "user": "u", "password": "p"}"#;

#[test]
fn full_config_parses_with_values_and_comments_of_both_kinds() {
    let text = r#"
// line comment
{
  /* block
     comment */
  "dbname": "plusmoin", // trailing comment
  "user": "pm",
  "password": "s3cret",
  "instance_name": "watcher-1",
  "heartbeat": 0.5,
  "max_sync_delay": 2.5,
  "recover_sync_delay": 1,
  "connect_timeout": 3,
  "trigger_timeout": 10,
  "is_slave_statement": "SELECT true",
  "sslmode": "verify-full",
  "sslrootcert": "/etc/ssl/root.crt",
  "nodes": [
    {"host": "127.0.0.1", "port": 5432},
    {"host": "db2"},
    {"host": "::1", "port": 5434}
  ],
  "triggers": {
    "master_down": "/usr/bin/notify 'master is down' --urgent",
    "slave_up": null
  },
  "log_file": "/tmp/pm.log",
  "log_level": "debug",
  "log_format": "json",
  "daemon_user": "postgres",
  "pid_file": "/tmp/pm.pid",
  "status_file": "/tmp/status.json"
}
"#;
    let c = parse_ok(text);
    assert_eq!(c.source, Path::new("x.json"));
    assert_eq!(c.dbname, "plusmoin");
    assert_eq!(c.user, "pm");
    assert_eq!(c.password.expose(), "s3cret");
    assert_eq!(c.instance_name, "watcher-1");
    assert_eq!(c.heartbeat, Duration::from_millis(500));
    assert_eq!(c.max_sync_delay, Duration::from_millis(2500));
    assert_eq!(c.recover_sync_delay, Duration::from_secs(1));
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.trigger_timeout, Duration::from_secs(10));
    assert_eq!(c.is_slave_statement, "SELECT true");
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert_eq!(c.sslrootcert, Some(PathBuf::from("/etc/ssl/root.crt")));
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.to_string()).collect();
    assert_eq!(names, ["127.0.0.1:5432", "db2:5432", "[::1]:5434"]);
    assert_eq!(c.triggers.len(), 1, "null runs nothing");
    let t = &c.triggers[&EventKind::MasterDown];
    assert_eq!(t.argv, ["/usr/bin/notify", "master is down", "--urgent"]);
    assert_eq!(t.line, "/usr/bin/notify 'master is down' --urgent");
    assert_eq!(c.log_file, PathBuf::from("/tmp/pm.log"));
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.daemon_user, "postgres");
    assert_eq!(c.pid_file, PathBuf::from("/tmp/pm.pid"));
    assert_eq!(c.status_file, PathBuf::from("/tmp/status.json"));
}

#[test]
fn minimal_config_gets_every_default() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.heartbeat, Duration::from_secs(60));
    assert_eq!(c.max_sync_delay, Duration::from_secs(120));
    assert_eq!(c.recover_sync_delay, Duration::from_secs(60));
    assert_eq!(c.trigger_timeout, Duration::from_secs(60));
    assert_eq!(c.connect_timeout, Duration::from_secs(60));
    assert!(c.nodes.is_empty());
    assert!(c.triggers.is_empty());
    assert_eq!(c.log_file, PathBuf::from("/var/log/plusmoin/plusmoin.log"));
    assert_eq!(c.log_level, LogLevel::Error);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.daemon_user, "nobody");
    assert_eq!(c.pid_file, PathBuf::from("/var/run/plusmoin/plusmoin.pid"));
    assert_eq!(
        c.status_file,
        PathBuf::from("/var/run/plusmoin/status.json")
    );
    assert_eq!(c.is_slave_statement, "SELECT pg_is_in_recovery()");
    assert_eq!(c.instance_name, "test-host");
    assert_eq!(c.sslmode, SslMode::Prefer);
    assert_eq!(c.sslrootcert, None);
}

#[test]
fn lag_bytes_are_off_by_default_and_take_bytes_or_sizes() {
    let c = parse_ok(MINIMAL);
    assert_eq!((c.max_lag_bytes, c.recover_lag_bytes), (None, None));
    let c = parse_ok(&with(r#""max_lag_bytes": "16MB""#));
    assert_eq!(c.max_lag_bytes, Some(16 << 20));
    assert_eq!(c.recover_lag_bytes, Some(8 << 20), "half by default");
    let c = parse_ok(&with(
        r#""max_lag_bytes": 1000, "recover_lag_bytes": "512B""#,
    ));
    assert_eq!(
        (c.max_lag_bytes, c.recover_lag_bytes),
        (Some(1000), Some(512))
    );
    let c = parse_ok(&with(r#""max_lag_bytes": null"#));
    assert_eq!(c.max_lag_bytes, None);
    assert_eq!(
        refused(&with(r#""max_lag_bytes": "16mb""#)),
        "x.json:2:18: max_lag_bytes: \"16mb\" is not a size: write bytes, or a number with B, kB, MB, GB or TB"
    );
    assert_eq!(
        refused(&with(r#""max_lag_bytes": 1000, "recover_lag_bytes": 2000"#)),
        "x.json:2:45: recover_lag_bytes: 2000 bytes is greater than max_lag_bytes (1000 bytes)"
    );
    assert_eq!(
        refused(&with(r#""recover_lag_bytes": 2000"#)),
        "x.json:2:22: recover_lag_bytes: set without max_lag_bytes, which it is the recovery limit of"
    );
    for bad in ["-1", "1.5", "0", "true"] {
        let msg = refused(&with(&format!(r#""max_lag_bytes": {bad}"#)));
        assert!(
            msg.starts_with("x.json:2:18: max_lag_bytes: "),
            "{bad}: {msg}"
        );
    }
}

#[test]
fn instance_name_defaults_to_the_real_host_name() {
    let c = match parse(MINIMAL, Path::new("x.json")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let expected = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned());
    assert_eq!(Ok(c.instance_name), expected);
}

#[test]
fn unreadable_host_name_without_instance_name_is_refused() {
    let failing = || Err("EPERM".to_string());
    let e = parse_with(MINIMAL, Path::new("x.json"), &failing, &no_pgpass);
    assert_eq!(
        e.map_err(|e| e.to_string()),
        Err("x.json: instance_name: not set, and the host name cannot be read (EPERM): set instance_name".to_string())
    );
}

#[test]
fn malformed_json_names_line_and_column() {
    let text = "{\n  \"dbname\": \"d\",\n  \"user\" \"u\"\n}";
    assert_eq!(refused(text), "x.json:3:10: malformed JSON: expected `:`");
}

#[test]
fn malformed_json_after_multiline_block_comment_keeps_true_line() {
    // json_comments blanks the newlines of a block comment: lines must still
    // be counted in the original text.
    let text = "/* one\ntwo\nthree */ {\n  \"dbname\": ,\n}";
    assert_eq!(refused(text), "x.json:4:13: malformed JSON: expected value");
}

#[test]
fn unterminated_block_comment_is_located() {
    let text = "{\n  \"dbname\": \"d\" /* oops\n}";
    assert_eq!(refused(text), "x.json:2:17: unterminated /* comment");
}

#[test]
fn stray_slash_is_located() {
    let text = "{\n  \"dbname\": 1 / 2\n}";
    assert_eq!(
        refused(text),
        "x.json:2:15: unexpected '/' (comments are // … or /* … */)"
    );
}

#[test]
fn unterminated_string_is_located() {
    let text = "{\n  \"dbname\": \"d\n}";
    assert_eq!(refused(text), "x.json:2:13: unterminated string");
}

#[test]
fn empty_file_is_refused() {
    assert_eq!(
        refused(""),
        "x.json:1:1: malformed JSON: EOF while parsing a value"
    );
}

#[test]
fn top_level_must_be_an_object() {
    assert_eq!(
        refused("  [1]"),
        "x.json:1:3: expected a JSON object at the top level, found an array"
    );
}

#[test]
fn missing_required_key_is_named() {
    for key in ["dbname", "user", "password"] {
        let mut entries = vec![r#""dbname": "d""#, r#""user": "u""#, r#""password": "p""#];
        entries.retain(|e| !e.starts_with(&format!("\"{key}\"")));
        let text = format!("{{{}}}", entries.join(", "));
        let msg = refused(&text);
        assert!(
            msg.starts_with(&format!("x.json: missing required key \"{key}\"")),
            "{msg}"
        );
    }
}

#[test]
fn unknown_key_suggests_the_closest_one() {
    let text = "{\"dbname\": \"d\", \"user\": \"u\", \"password\": \"p\",\n  \"hearbeat\": 5}";
    assert_eq!(
        refused(text),
        "x.json:2:3: unknown key \"hearbeat\" (did you mean \"heartbeat\"?)"
    );
}

#[test]
fn unknown_key_far_from_any_gets_no_suggestion() {
    let text = r#"{"dbname": "d", "user": "u", "password": "p", "zzzz": 1}"#;
    assert_eq!(refused(text), "x.json:1:47: unknown key \"zzzz\"");
}

#[test]
fn other_tools_names_get_a_suggestion() {
    let text = r#"{"database": "d", "user": "u", "password": "p"}"#;
    assert_eq!(
        refused(text),
        "x.json:1:2: unknown key \"database\" (did you mean \"dbname\"?)"
    );
}

#[test]
fn duplicate_trigger_is_refused() {
    let text = with(r#""triggers": {"slave_up": null, "slave_up": "/bin/true"}"#);
    assert_eq!(
        refused(&text),
        "x.json:2:32: triggers: duplicate trigger \"slave_up\" (first at 2:14)"
    );
}

#[test]
fn duplicate_key_is_refused() {
    let text = "{\"dbname\": \"d\", \"user\": \"u\", \"password\": \"p\",\n\"heartbeat\": 5,\n\"heartbeat\": 6}";
    assert_eq!(
        refused(text),
        "x.json:3:1: duplicate key \"heartbeat\" (first at 2:1)"
    );
}

#[test]
fn wrong_type_names_key_expected_type_and_position() {
    let text =
        "{\"dbname\": \"d\", \"user\": \"u\", \"password\": \"p\",\n  \"heartbeat\": \"fast\"}";
    assert_eq!(
        refused(text),
        "x.json:2:16: heartbeat: expected a number of seconds, found string \"fast\""
    );
    let text = r#"{"dbname": 5, "user": "u", "password": "p"}"#;
    assert_eq!(
        refused(text),
        "x.json:1:12: dbname: expected a string, found number 5"
    );
    let text = r#"{"dbname": "d", "user": "u", "password": "p", "nodes": {}}"#;
    assert_eq!(
        refused(text),
        "x.json:1:56: nodes: expected an array of {\"host\": …, \"port\": …}, found an object"
    );
}

fn with(extra: &str) -> String {
    format!("{{\"dbname\": \"d\", \"user\": \"u\", \"password\": \"p\",\n{extra}\n}}")
}

#[test]
fn duplicate_nodes_name_both_indexes() {
    let text = with(
        r#""nodes": [
  {"host": "127.0.0.1", "port": 5432},
  {"host": "127.0.0.1", "port": 5433},
  {"host": "127.0.0.1"}
]"#,
    );
    assert_eq!(
        refused(&text),
        "x.json:5:3: nodes[2]: duplicate node 127.0.0.1:5432 (also nodes[0])"
    );
}

#[test]
fn duplicate_nodes_ignore_host_case() {
    let text = with(r#""nodes": [{"host": "DB1"}, {"host": "db1", "port": 5432}]"#);
    assert_eq!(
        refused(&text),
        "x.json:2:28: nodes[1]: duplicate node db1:5432 (also nodes[0])"
    );
}

#[test]
fn port_out_of_range_is_refused() {
    let text = with(r#""nodes": [{"host": "a"}, {"host": "b", "port": 70000}]"#);
    assert_eq!(
        refused(&text),
        "x.json:2:48: nodes[1].port: 70000 is outside 1-65535"
    );
    for bad in ["0", "-1", "1e10"] {
        let text = with(&format!(r#""nodes": [{{"host": "a", "port": {bad}}}]"#));
        assert_eq!(
            refused(&text),
            format!("x.json:2:33: nodes[0].port: {bad} is outside 1-65535")
        );
    }
    let text = with(r#""nodes": [{"host": "a", "port": 5432.5}]"#);
    assert_eq!(
        refused(&text),
        "x.json:2:33: nodes[0].port: 5432.5 is not an integer port"
    );
    let text = with(r#""nodes": [{"host": "a", "port": "5432"}]"#);
    assert_eq!(
        refused(&text),
        "x.json:2:33: nodes[0].port: expected an integer port, found string \"5432\""
    );
}

#[test]
fn empty_host_is_refused() {
    let text = with(r#""nodes": [{"host": ""}]"#);
    assert_eq!(
        refused(&text),
        "x.json:2:20: nodes[0].host: must not be empty"
    );
    let text = with(r#""nodes": [{"port": 5432}]"#);
    assert_eq!(
        refused(&text),
        "x.json:2:11: nodes[0]: missing required key \"host\""
    );
}

#[test]
fn unknown_node_key_is_refused_with_suggestion() {
    let text = with(r#""nodes": [{"host": "a", "prot": 5433}]"#);
    assert_eq!(
        refused(&text),
        "x.json:2:25: nodes[0]: unknown key \"prot\" (did you mean \"port\"?)"
    );
}

#[test]
fn recover_greater_than_max_is_refused() {
    let text = with(r#""max_sync_delay": 60, "recover_sync_delay": 90"#);
    assert_eq!(
        refused(&text),
        "x.json:2:45: recover_sync_delay: 90 s is greater than max_sync_delay (60 s)"
    );
    let text = with(r#""max_sync_delay": 30"#);
    assert_eq!(
        refused(&text),
        "x.json:2:19: max_sync_delay: 30 s is less than recover_sync_delay (60 s, the default)"
    );
    let text = with(r#""recover_sync_delay": 121"#);
    assert_eq!(
        refused(&text),
        "x.json:2:23: recover_sync_delay: 121 s is greater than max_sync_delay (120 s, the default)"
    );
    // Equal is allowed.
    let c = parse_ok(&with(r#""max_sync_delay": 7, "recover_sync_delay": 7"#));
    assert_eq!(c.recover_sync_delay, c.max_sync_delay);
}

#[test]
fn zero_and_negative_durations_are_refused() {
    for key in [
        "heartbeat",
        "max_sync_delay",
        "recover_sync_delay",
        "trigger_timeout",
        "connect_timeout",
    ] {
        for bad in ["0", "-5", "0.0", "-0.5"] {
            let text = with(&format!("\"{key}\": {bad}"));
            let col = key.len() + 5;
            assert_eq!(
                refused(&text),
                format!("x.json:2:{col}: {key}: {bad} s is not a positive duration")
            );
        }
    }
}

#[test]
fn absurd_durations_are_refused() {
    assert_eq!(
        refused(&with(r#""heartbeat": 1e9"#)),
        "x.json:2:14: heartbeat: 1e9 s is longer than one year"
    );
    assert_eq!(
        refused(&with(r#""heartbeat": 0.0000001"#)),
        "x.json:2:14: heartbeat: 0.0000001 s is shorter than 1 ms"
    );
}

#[test]
fn unknown_trigger_name_is_refused_with_suggestion() {
    let text = with(r#""triggers": {"master_dwn": "/bin/true"}"#);
    assert_eq!(
        refused(&text),
        "x.json:2:14: triggers: unknown trigger \"master_dwn\" (did you mean \"master_down\"?)"
    );
}

#[test]
fn unbalanced_quotes_in_trigger_are_refused() {
    let text = with(r#""triggers": {"slave_up": "/bin/echo 'oops"}"#);
    assert_eq!(
        refused(&text),
        "x.json:2:26: triggers.slave_up: cannot split the command into words: missing closing quote"
    );
}

#[test]
fn empty_trigger_command_is_refused() {
    let text = with(r#""triggers": {"slave_up": "   "}"#);
    assert_eq!(
        refused(&text),
        "x.json:2:26: triggers.slave_up: empty command (write null to run nothing)"
    );
}

#[test]
fn unknown_log_level_lists_valid_ones() {
    let text = with(r#""log_level": "verbose""#);
    assert_eq!(
        refused(&text),
        "x.json:2:14: log_level: \"verbose\" is not one of error, info, debug"
    );
    let text = with(r#""log_level": "INFO""#);
    assert_eq!(
        refused(&text),
        "x.json:2:14: log_level: \"INFO\" is not one of error, info, debug (did you mean \"info\"?)"
    );
}

#[test]
fn unknown_log_format_lists_valid_ones() {
    let text = with(r#""log_format": "JSON""#);
    assert_eq!(
        refused(&text),
        "x.json:2:15: log_format: \"JSON\" is not one of text, json (did you mean \"json\"?)"
    );
    let text = with(r#""log_format": 1"#);
    assert!(
        refused(&text).starts_with("x.json:2:15: log_format: "),
        "{}",
        refused(&text)
    );
}

#[test]
fn bad_sslmode_lists_valid_ones() {
    let text = with(r#""sslmode": "verify""#);
    assert_eq!(
        refused(&text),
        "x.json:2:12: sslmode: \"verify\" is not one of disable, prefer, require, verify-ca, verify-full (did you mean \"verify-ca\"?)"
    );
}

#[test]
fn empty_instance_name_is_refused() {
    let text = with(r#""instance_name": """#);
    assert_eq!(
        refused(&text),
        "x.json:2:18: instance_name: must not be empty"
    );
}

#[test]
fn unreadable_file_names_file_and_reason() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let missing = dir.path().join("nope.json");
    let e = load(&missing).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(
        e,
        Err(format!(
            "{}: cannot read: No such file or directory (os error 2)",
            missing.display()
        ))
    );
    // A directory cannot be read as a file either.
    let e = load(dir.path()).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(
        e,
        Err(format!(
            "{}: cannot read: Is a directory (os error 21)",
            dir.path().display()
        ))
    );
}

#[test]
fn invalid_utf8_file_is_located() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let path = dir.path().join("bad.json");
    if let Err(e) = std::fs::write(&path, b"{\n  \"dbname\": \"\xff\"\n}") {
        panic!("write: {e}");
    }
    let e = load(&path).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(e, Err(format!("{}:2:14: not valid UTF-8", path.display())));
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "{\"dbname\": \"é\", \"user\": \"u\", \"password\": \"p\", \"heartbeat\": 0}";
    // `0` is the 60th character but the 61st byte.
    assert_eq!(
        refused(text),
        "x.json:1:60: heartbeat: 0 s is not a positive duration"
    );
}

#[test]
fn messages_stay_on_one_line_even_with_newlines_in_keys() {
    let text = r#"{"dbname": "d", "user": "u", "password": "p", "a\nb": 1}"#;
    let msg = refused(text);
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(msg, "x.json:1:47: unknown key \"a\\nb\"");
    let e = load(Path::new("/nonexistent\ndir/x.json")).map(|_| ());
    let msg = e.map_err(|e| e.to_string()).err().unwrap_or_default();
    assert!(
        msg.starts_with("/nonexistent\\ndir/x.json: cannot read: "),
        "{msg}"
    );
}

#[test]
fn summary_shows_settings_but_never_the_password() {
    let text = with(
        r#""password": "hunter2-x", "nodes": [{"host": "127.0.0.1"}, {"host": "h", "port": 6000}],
        "triggers": {"master_up": "/bin/echo up"}, "heartbeat": 0.25"#,
    )
    .replace("\"password\": \"p\",", "");
    let c = parse_ok(&text);
    let s = c.summary();
    assert!(!s.contains("hunter2-x"), "{s}");
    for needle in [
        "x.json",
        "test-host",
        "127.0.0.1:5432",
        "h:6000",
        "/bin/echo up",
        "0.25 s",
        "prefer",
        "master_down          (nothing runs)",
        "/var/run/plusmoin/status.json",
    ] {
        assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
    }
    assert!(!format!("{c:?}").contains("hunter2-x"));
}

#[test]
fn contrib_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/plusmoin.json");
    // As shipped, its placeholder password is refused; with a real one, it loads.
    let msg = load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("contrib/plusmoin.json:24:") && msg.contains("password"),
        "{msg}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let c = match parse(&text.replace("\"change-me\"", "\"s3cret\""), &path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.to_string()).collect();
    assert_eq!(
        names,
        ["127.0.0.1:5432", "127.0.0.1:5433", "127.0.0.1:5434"]
    );
    assert_eq!(c.triggers.len(), EventKind::ALL.len());
}

/// Text that looks like a configuration, with random keys, values and
/// comments, to reach the validator rather than only the JSON parser.
fn jsonish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "dbname",
        "user",
        "password",
        "heartbeat",
        "max_sync_delay",
        "recover_sync_delay",
        "nodes",
        "triggers",
        "host",
        "port",
        "master_down",
        "log_level",
        "sslmode",
        "instance_name",
        "bogus",
    ]);
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "[a-z \"'\\\\é/*\n]{0,8}".prop_map(|s| format!("{s:?}")),
        Just("/* c */".to_string()),
        Just("// c\n".to_string()),
        "[{}\\[\\],:\"/*]{0,3}",
    ];
    let value = leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["host", "port", "master_down", "dbname", "x"]),
                    inner
                ),
                0..4
            )
            .prop_map(|v| {
                let e: Vec<String> = v.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                format!("{{{}}}", e.join(","))
            }),
        ]
    });
    prop::collection::vec((key, value), 0..8).prop_map(|entries| {
        let e: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        format!("{{{}}}", e.join(",\n"))
    })
}

fn never_panics_and_one_line(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = parse_with(text, Path::new("f.json"), &host, &no_pgpass) {
        let msg = e.to_string();
        prop_assert!(!msg.contains('\n') && !msg.contains('\r'), "{}", msg);
        prop_assert!(msg.starts_with("f.json"), "{}", msg);
    }
    Ok(())
}

/// A valid base with random nodes, triggers and durations, so that the
/// deeper checks run, and those that pass can be held to the invariants.
fn configish() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        any::<i32>().prop_map(|i| i.to_string()),
        (-10.0f64..1e8).prop_map(|f| format!("{f}")),
        prop::sample::select(vec![
            "0", "1", "5432", "65535", "65536", "0.5", "1e3", "-0.0"
        ])
        .prop_map(str::to_string),
    ];
    let host = prop_oneof![9 => "[a-cA-C0-9.]{1,3}", 1 => "[a-c ]{0,2}"];
    let port = prop_oneof![8 => (1u32..=65535).prop_map(|p| p.to_string()), 2 => number.clone()];
    let node = (prop::option::weighted(0.95, host), prop::option::of(port)).prop_map(|(h, p)| {
        let mut e = Vec::new();
        if let Some(h) = h {
            e.push(format!("\"host\": {h:?}"));
        }
        if let Some(p) = p {
            e.push(format!("\"port\": {p}"));
        }
        format!("{{{}}}", e.join(", "))
    });
    let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    names.push("slave-up");
    let trigger = (
        prop::sample::select(names),
        prop_oneof![
            1 => Just("null".to_string()),
            6 => "/bin/[a-z]{1,4}( '[a-z ]{0,4}')?".prop_map(|s| format!("{s:?}")),
            2 => "[a-z '\"\\\\]{0,10}".prop_map(|s| format!("{s:?}")),
        ],
    )
        .prop_map(|(k, v)| format!("\"{k}\": {v}"));
    let duration_key = prop::sample::select(vec![
        "heartbeat",
        "max_sync_delay",
        "recover_sync_delay",
        "trigger_timeout",
        "connect_timeout",
    ]);
    (
        prop::collection::vec(node, 0..5),
        prop::collection::vec(trigger, 0..4),
        prop::collection::vec(
            (
                duration_key,
                prop_oneof![
                    8 => (0.001f64..200.0).prop_map(|f| format!("{f}")),
                    2 => number,
                ],
            ),
            0..4,
        ),
    )
        .prop_map(|(nodes, triggers, durations)| {
            let mut text = format!(
                "{{\"dbname\": \"d\", \"user\": \"u\", \"password\": \"p\",\n\"nodes\": [{}],\n\"triggers\": {{{}}}",
                nodes.join(",\n"),
                triggers.join(",\n")
            );
            for (k, v) in durations {
                text.push_str(&format!(",\n\"{k}\": {v}"));
            }
            text.push('}');
            text
        })
}

proptest! {
    #[test]
    fn random_configs_pass_only_when_valid(text in configish()) {
        match parse_with(&text, Path::new("f.json"), &host, &no_pgpass) {
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.contains('\n'), "{}", msg);
                prop_assert!(e.position().is_some(), "{}", msg);
            }
            Ok(c) => {
                prop_assert!(c.recover_sync_delay <= c.max_sync_delay);
                for d in [c.heartbeat, c.max_sync_delay, c.recover_sync_delay, c.trigger_timeout, c.connect_timeout] {
                    prop_assert!(d >= Duration::from_millis(1) && d <= Duration::from_secs(365 * 24 * 3600));
                }
                let mut seen = std::collections::HashSet::new();
                for n in &c.nodes {
                    prop_assert!(n.name.port != 0 && !n.name.host.trim().is_empty());
                    prop_assert!(seen.insert((n.name.host.to_lowercase(), n.name.port)), "duplicate {}", n.name);
                }
                for t in c.triggers.values() {
                    prop_assert!(!t.argv.is_empty());
                }
            }
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        never_panics_and_one_line(&text)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        never_panics_and_one_line(&text)?;
    }

    #[test]
    fn arbitrary_jsonish_never_panics(text in jsonish()) {
        never_panics_and_one_line(&text)?;
    }

    #[test]
    fn valid_minimal_with_random_durations(h in 0.001f64..1e6, m in 0.001f64..1e6) {
        let text = format!(
            r#"{{"dbname": "d", "user": "u", "password": "p", "heartbeat": {h:?}, "max_sync_delay": {m:?}, "recover_sync_delay": {m:?}}}"#
        );
        let c = parse_with(&text, Path::new("f.json"), &host, &no_pgpass);
        prop_assert!(c.is_ok(), "{:?}", c.err().map(|e| e.to_string()));
    }
}

// ---- the pgpool section (issue 4) ----

fn with_pgpool(pgpool: &str, nodes: &str) -> String {
    format!(
        "{{\"dbname\": \"d\", \"user\": \"u\", \"password\": \"p\",\n\"nodes\": [{nodes}],\n\"pgpool\": {pgpool}\n}}"
    )
}

#[test]
fn pgpool_section_defaults_and_explicit_node_ids() {
    let c = parse_ok(&with_pgpool(
        r#"{"pcp_user": "pgpool", "pcppass_file": "/etc/plusmoin/pcppass"}"#,
        r#"{"host": "db1", "pgpool_node_id": 1}, {"host": "db2"}"#,
    ));
    let p = c.pgpool.expect("pgpool section");
    assert_eq!(p.pcp_host, "127.0.0.1");
    assert_eq!(p.pcp_port, 9898);
    assert_eq!(p.pcp_user, "pgpool");
    assert_eq!(p.pcppass_file, PathBuf::from("/etc/plusmoin/pcppass"));
    assert_eq!(p.bin_dir, PathBuf::from("/usr/sbin"));
    assert_eq!(p.pgpool_conf, None);
    assert_eq!(p.templates, []);
    let ids: Vec<(String, u32)> = p
        .node_ids
        .iter()
        .map(|(n, i)| (n.to_string(), *i))
        .collect();
    assert_eq!(ids, [("db1:5432".to_string(), 1)], "db2 has no id");
    assert_eq!(c.nodes[0].pgpool_node_id, Some(1));
    assert!(parse_ok(MINIMAL).pgpool.is_none());
}

#[test]
fn pgpool_errors_point_at_the_key() {
    let text = with_pgpool(r#"{"pcp_user": "pgpool"}"#, "");
    assert_eq!(
        refused(&text),
        "x.json:3:11: pgpool: missing required key \"pcppass_file\""
    );
    let text = with_pgpool(
        r#"{"pcp_user": "pgpool", "pcppass_file": "/x", "pcp_prot": 1}"#,
        "",
    );
    assert_eq!(
        refused(&text),
        "x.json:3:56: pgpool: unknown key \"pcp_prot\" (did you mean \"pcp_port\"?)"
    );
    let text = with_pgpool(
        r#"{"pcp_user": "pgpool", "pcppass_file": "/x", "pcp_port": 0}"#,
        "",
    );
    assert_eq!(
        refused(&text),
        "x.json:3:68: pgpool.pcp_port: 0 is outside 1-65535"
    );
    let text = with_pgpool(r#"{"pcp_user": "", "pcppass_file": "/x"}"#, "");
    assert_eq!(
        refused(&text),
        "x.json:3:24: pgpool.pcp_user: must not be empty"
    );
    let text = with_pgpool("[]", "");
    assert!(refused(&text).starts_with("x.json:3:11: pgpool: expected an object"));
}

#[test]
fn pgpool_node_id_errors() {
    let pg = r#"{"pcp_user": "pgpool", "pcppass_file": "/x"}"#;
    let text = with_pgpool(pg, r#"{"host": "a", "pgpool_node_id": -1}"#);
    assert_eq!(
        refused(&text),
        "x.json:2:43: nodes[0].pgpool_node_id: -1 is outside 0-4095"
    );
    let text = with_pgpool(pg, r#"{"host": "a", "pgpool_node_id": 1.5}"#);
    assert_eq!(
        refused(&text),
        "x.json:2:43: nodes[0].pgpool_node_id: 1.5 is not an integer node id"
    );
    let text = r#"{"dbname": "d", "user": "u", "password": "p",
"nodes": [{"host": "a", "pgpool_node_id": 0}]}"#;
    assert_eq!(
        refused(text),
        "x.json:2:43: nodes[0].pgpool_node_id: set, but there is no \"pgpool\" section to use it"
    );
}

/// Which templates exist and what they may say is the sidecar's to check
/// (`pgpool::check`): the loader keeps them as written, with where.
#[test]
fn pgpool_templates_are_kept_as_written() {
    let c = parse_ok(&with_pgpool(
        r#"{"pcp_user": "pgpool", "pcppass_file": "/x",
  "templates": {"atach": "x {{nodeid}}", "detach": null}}"#,
        "",
    ));
    let t = c.pgpool.unwrap().templates;
    let got: Vec<(&str, Option<&str>, String, String)> = t
        .iter()
        .map(|t| {
            (
                t.command.as_str(),
                t.text.as_deref(),
                t.command_at.to_string(),
                t.text_at.to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("atach", Some("x {{nodeid}}"), "4:17".into(), "4:26".into()),
            ("detach", None, "4:42".into(), "4:52".into())
        ]
    );
    let text = with_pgpool(
        r#"{"pcp_user": "pgpool", "pcppass_file": "/x", "templates": {"attach": ""}}"#,
        "",
    );
    assert_eq!(
        refused(&text),
        "x.json:3:80: pgpool.templates.attach: must not be empty"
    );
    let text = with_pgpool(
        r#"{"pcp_user": "pgpool", "pcppass_file": "/x", "templates": []}"#,
        "",
    );
    assert!(refused(&text).starts_with("x.json:3:69: pgpool.templates: expected an object"));
}

#[test]
fn password_can_come_from_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "from-the-file\n").unwrap();
    let text = format!(
        r#"{{"dbname": "d", "user": "u", "password_file": "{}"}}"#,
        f.display()
    );
    let c = parse_ok(&text);
    assert_eq!(c.password.expose(), "from-the-file");
    assert_eq!(c.password_source, PasswordSource::File(f.clone()));
    assert!(c.summary().contains("from password_file"));
    assert!(!c.summary().contains("from-the-file"));

    let both = format!(
        r#"{{"dbname": "d", "user": "u", "password": "p", "password_file": "{}"}}"#,
        f.display()
    );
    assert_eq!(
        refused(&both),
        "x.json:1:64: password_file: set either password or password_file, not both"
    );
    let missing = r#"{"dbname": "d", "user": "u", "password_file": "/nonexistent/pw"}"#;
    let msg = refused(missing);
    assert!(
        msg.starts_with("x.json:1:47: password_file: cannot read /nonexistent/pw: "),
        "{msg}"
    );
}

#[test]
fn password_can_come_from_libpq_password_file_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pgpass");
    std::fs::write(
        &f,
        "db1:5432:d:u:one\n*:5433:d:u:two\n# a comment\n*:*:other:u:never\n",
    )
    .unwrap();
    let pgpass = |_: &str| Some(f.clone());
    let text = r#"{"dbname": "d", "user": "u",
        "nodes": [{"host": "db1", "port": 5432}, {"host": "db2", "port": 5433}]}"#;
    // As libpq: ignored while group or others can read it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let msg = parse_with(text, Path::new("x.json"), &host, &pgpass)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("group or world access") && msg.contains("ignored"),
        "{msg}"
    );
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = parse_with(text, Path::new("x.json"), &host, &pgpass).unwrap();
    assert_eq!(c.password_source, PasswordSource::PgPass(f.clone()));
    let pw: Vec<&str> = c
        .nodes
        .iter()
        .map(|n| n.password.as_ref().map_or("", |p| p.expose()))
        .collect();
    assert_eq!(pw, ["one", "two"]);

    let text = r#"{"dbname": "d", "user": "u", "nodes": [{"host": "db3", "port": 5432}]}"#;
    let msg = parse_with(text, Path::new("x.json"), &host, &pgpass)
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        format!(
            "x.json: nodes[0]: no password: neither password nor password_file is set, and {} \
             has no entry for db3:5432 (database d, user u)",
            f.display()
        )
    );
}

#[test]
fn password_of_any_wrong_type_never_shows_in_the_error() {
    for (value, kind) in [
        ("98765432123", "a number"),
        ("-98765.4321e3", "a number"),
        ("true", "a boolean"),
        ("null", "null"),
        (r#"["hunter2secret", 98765432123]"#, "an array"),
        (
            r#"{"hunter2secret": "hunter2secret", "n": 98765432123}"#,
            "an object",
        ),
        (r#"[{"deep": ["hunter2secret"]}]"#, "an array"),
    ] {
        let text = format!(r#"{{"dbname": "d", "user": "u", "password": {value}, "nodes": []}}"#);
        let msg = refused(&text);
        for secret in ["98765", "hunter2secret", "true", "4321"] {
            assert!(
                !msg.contains(secret) || !value.contains(secret),
                "{value}: the error shows the password: {msg}"
            );
        }
        assert!(
            msg.contains("password") && msg.contains(&format!("found {kind}")),
            "{value}: {msg}"
        );
    }
}

#[test]
fn http_listen_is_off_by_default_and_takes_ip_and_port() {
    assert_eq!(parse_ok(MINIMAL).http_listen, None);
    let c = parse_ok(&with(r#""http_listen": "127.0.0.1:9187""#));
    assert_eq!(c.http_listen, Some("127.0.0.1:9187".parse().unwrap()));
    let s = c.summary();
    assert!(
        s.contains("http_listen          127.0.0.1:9187 (GET /metrics"),
        "{s}"
    );
    let c = parse_ok(&with(r#""http_listen": "[::1]:9187""#));
    assert_eq!(c.http_listen, Some("[::1]:9187".parse().unwrap()));
    let c = parse_ok(&with(r#""http_listen": null"#));
    assert_eq!(c.http_listen, None);
    assert!(c.summary().contains("http_listen          (off"));
}

#[test]
fn bad_http_listen_is_refused_with_its_position() {
    for (value, problem) in [
        (
            r#""localhost:9187""#,
            r#""localhost:9187" is not an IP address and port (e.g. "127.0.0.1:9187", "[::1]:9187")"#,
        ),
        (
            r#""127.0.0.1""#,
            r#""127.0.0.1" is not an IP address and port (e.g. "127.0.0.1:9187", "[::1]:9187")"#,
        ),
        (
            r#""127.0.0.1:99999""#,
            r#""127.0.0.1:99999" is not an IP address and port (e.g. "127.0.0.1:9187", "[::1]:9187")"#,
        ),
        (
            r#""0.0.0.0:0""#,
            r#""0.0.0.0:0": port 0 would listen on a port chosen at random"#,
        ),
        ("9187", "expected a string, found number 9187"),
    ] {
        let text = with(&format!(r#""http_listen": {value}"#));
        assert_eq!(
            refused(&text),
            format!("x.json:2:16: http_listen: {problem}"),
            "{value}"
        );
    }
}

/// The shipped configurations' placeholder password is an error naming
/// file, line, column and key, inline or in `password_file`.
#[test]
fn the_placeholder_password_is_refused() {
    let msg = refused("{\"dbname\": \"d\", \"user\": \"u\",\n \"password\": \"change-me\"}");
    assert_eq!(
        msg,
        "x.json:2:14: password: \"change-me\" is the shipped configuration's placeholder, \
         not a password: set the real one (or remove the key and use password_file or ~/.pgpass)"
    );
    // Another password, even close to it, is fine.
    parse_ok(r#"{"dbname": "d", "user": "u", "password": "change-me-now"}"#);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "change-me\n").unwrap();
    let msg = refused(&format!(
        r#"{{"dbname": "d", "user": "u", "password_file": "{}"}}"#,
        f.display()
    ));
    assert!(
        msg.contains("password_file: ") && msg.contains("holds \"change-me\" is the shipped"),
        "{msg}"
    );
}

/// `status_file_mode`: 0640 unless set; an octal string of read and write
/// bits, the owner's both, nobody else's write; anything else is refused,
/// naming the key.
#[test]
fn status_file_mode_defaults_to_0640_and_is_validated() {
    assert_eq!(parse_ok(MINIMAL).status_file_mode, 0o640);
    let with = |v: &str| {
        format!(r#"{{"dbname": "d", "user": "u", "password": "p", "status_file_mode": {v}}}"#)
    };
    assert_eq!(parse_ok(&with("\"0644\"")).status_file_mode, 0o644);
    assert_eq!(parse_ok(&with("\"600\"")).status_file_mode, 0o600);
    assert!(parse_ok(&with("\"0644\""))
        .summary()
        .contains("status_file_mode     0644"));
    for (v, why) in [
        ("\"0648\"", "not a file mode"),
        ("\"rw-r--r--\"", "not a file mode"),
        ("\"1644\"", "not a file mode"),
        ("\"64\"", "not a file mode"),
        ("644", "expected a string"),
        ("\"0755\"", "execute bits"),
        ("\"0440\"", "owner"),
        ("\"0664\"", "group or others write"),
        ("\"0646\"", "group or others write"),
    ] {
        let msg = refused(&with(v));
        assert!(
            msg.starts_with("x.json:1:") && msg.contains("status_file_mode: ") && msg.contains(why),
            "{v}: {msg}"
        );
    }
}

/// `journal_max_bytes`: 16 MiB unless set; a whole number of bytes, at
/// least 64 KiB; anything else is refused, naming the key.
#[test]
fn journal_max_bytes_defaults_to_16_mib_and_is_validated() {
    assert_eq!(parse_ok(MINIMAL).journal_max_bytes, 16 * 1024 * 1024);
    let with = |v: &str| {
        format!(r#"{{"dbname": "d", "user": "u", "password": "p", "journal_max_bytes": {v}}}"#)
    };
    assert_eq!(parse_ok(&with("1048576")).journal_max_bytes, 1 << 20);
    assert_eq!(parse_ok(&with("65536")).journal_max_bytes, 65536);
    for (v, why) in [
        ("65535", "less than 65536"),
        ("-1", "less than"),
        ("100000.5", "whole number"),
        ("\"16M\"", "expected a number of bytes"),
    ] {
        let msg = refused(&with(v));
        assert!(
            msg.starts_with("x.json:1:")
                && msg.contains("journal_max_bytes: ")
                && msg.contains(why),
            "{v}: {msg}"
        );
    }
}
