//! What a real server says reaches logs and `status --table` as one inert
//! line: a relation name with a newline and an escape sequence, echoed back
//! in PostgreSQL's error, is escaped in the probe's reason.

use plusmoin::cluster::{NodeName, Observation, Time};
use plusmoin::config::{Secret, SslMode};
use plusmoin::probe::{ProbeSettings, ProbeTarget, Prober};
use plusmoin::sandbox::{Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER};
use std::time::Duration;

#[test]
fn control_characters_from_the_server_are_escaped_in_reasons() {
    let sb = Sandbox::start(0).expect("sandbox");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut p = Prober::new(ProbeSettings {
        dbname: SANDBOX_DBNAME.into(),
        user: SANDBOX_USER.into(),
        password: Secret::new(SANDBOX_PASSWORD),
        node_passwords: Default::default(),
        instance_name: "escape".into(),
        // The server's error names this relation, newline and all.
        is_slave_statement: "SELECT true FROM \"no\nplusmoin: forged\u{1b}[31m\"".into(),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        connect_timeout: Duration::from_secs(5),
        retry_interval: Duration::from_millis(250),
    })
    .expect("prober");
    let target = ProbeTarget {
        name: NodeName::new(sb.host(), sb.port(0)),
        cluster_id: None,
    };
    let out = rt.block_on(p.probe_all(&[target], Time::now()));
    let Observation::Down { reason } = &out[0].1 else {
        panic!("expected down, got {:?}", out[0].1);
    };
    assert!(
        !reason.chars().any(char::is_control),
        "control characters in {reason:?}"
    );
    assert!(
        reason.contains("no\\nplusmoin: forged\\u{1b}[31m"),
        "escaped relation name in {reason:?}"
    );
}
