//! One background read of the holds, for [`Holds::refresh`](super::Holds::refresh):
//! the hold table from the first node that answers (reusing the previous
//! read's connection when its node comes first again), and the legacy
//! `held.json`. It runs in a task of its own, so the beat never waits for
//! a node.

use super::legacy;
use super::table::{self, TableRead};
use crate::cluster::NodeName;
use crate::lifecycle::safefile::Owners;
use crate::probe::connect::{Connector, Session};
use crate::probe::ProbeSettings;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// What one background read brings back.
pub(super) struct ReadOutcome {
    pub(super) connector: Option<Connector>,
    pub(super) cached: Option<(NodeName, Session)>,
    pub(super) table: Result<(NodeName, TableRead), String>,
    pub(super) file: Result<BTreeSet<String>, String>,
}

/// One background read: the table from the first candidate that answers,
/// and the legacy file.
pub(super) async fn read_all(
    settings: ProbeSettings,
    connector: Option<Connector>,
    cached: Option<(NodeName, Session)>,
    candidates: Vec<NodeName>,
    configured: Vec<String>,
    held_path: PathBuf,
    owners: Owners,
) -> ReadOutcome {
    let file = legacy::read(&held_path, &owners).map_err(|e| e.to_string());
    let connector = match connector {
        Some(c) => c,
        None => match Connector::new(settings) {
            Ok(c) => c,
            Err(e) => {
                return ReadOutcome {
                    connector: None,
                    cached: None,
                    table: Err(e.to_string()),
                    file,
                }
            }
        },
    };
    let (cached, table) = read_table(&connector, cached, &candidates, &configured).await;
    ReadOutcome {
        connector: Some(connector),
        cached,
        table,
        file,
    }
}

#[allow(clippy::type_complexity)]
async fn read_table(
    connector: &Connector,
    mut cached: Option<(NodeName, Session)>,
    candidates: &[NodeName],
    configured: &[String],
) -> (
    Option<(NodeName, Session)>,
    Result<(NodeName, TableRead), String>,
) {
    let mut tried = Vec::new();
    for node in candidates {
        let session = match cached.take() {
            Some((n, s)) if &n == node && !s.is_closed() => s,
            other => {
                cached = other;
                match connector.connect(node).await {
                    Ok(s) => s,
                    Err(reason) => {
                        tried.push(format!("{node}: {reason}"));
                        continue;
                    }
                }
            }
        };
        match table::select_all(connector, &session, configured).await {
            Ok(holds) => return (Some((node.clone(), session)), Ok((node.clone(), holds))),
            Err(reason) => tried.push(format!("{node}: {reason}")),
        }
    }
    let why = if tried.is_empty() {
        "no node to read them from".to_string()
    } else {
        format!("no node answered ({})", tried.join("; "))
    };
    (None, Err(why))
}
