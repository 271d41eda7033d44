//! `GET /events[?since=2h&node=HOST:PORT&cluster=N&kind=K]`: the event
//! journal's records (README "Event history") as a JSON array, oldest
//! first, the filters of `plusmoin events`. The files are read on a
//! blocking thread, never on the listener's or the loop's.

use super::routes::Reply;
use super::Snapshots;
use crate::status::journal::{self, Filter};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::path::Path;
use std::sync::Arc;

/// At most this many records (the newest) in one answer.
const MAX_RECORDS: usize = 10_000;

/// A request for `/events`.
pub(super) struct Wanted {
    journal: Option<Arc<Path>>,
    query: Option<String>,
    head: bool,
}

/// `Some` when `req` is a `GET` or `HEAD` of `/events` without a body.
pub(super) fn wanted(req: &Request<Incoming>, snapshots: &Snapshots) -> Option<Wanted> {
    let method = req.method();
    let body = req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if req.uri().path() != "/events"
        || body
        || (method != hyper::Method::GET && method != hyper::Method::HEAD)
    {
        return None;
    }
    let journal = snapshots.borrow().as_ref().and_then(|s| s.journal.clone());
    Some(Wanted {
        journal,
        query: req.uri().query().map(str::to_string),
        head: method == hyper::Method::HEAD,
    })
}

impl Wanted {
    pub(super) async fn answer(self) -> Response<Full<Bytes>> {
        let head = self.head;
        let reply = tokio::task::spawn_blocking(move || self.reply())
            .await
            .unwrap_or_else(|e| text(500, format!("cannot read the journal: {e}")));
        super::server::respond(reply, head)
    }

    fn reply(&self) -> Reply {
        let Some(path) = &self.journal else {
            return text(503, "starting: no decision yet");
        };
        let now = crate::cluster::Time::now().as_secs_f64();
        let filter = match Filter::from_query(self.query.as_deref(), now) {
            Ok(f) => f,
            Err(e) => return text(400, format!("bad request: {e}")),
        };
        select(path, &filter)
    }
}

/// The records of the journal at `path` that `filter` selects, as the body
/// of a 200.
pub(super) fn select(path: &Path, filter: &Filter) -> Reply {
    let records = match journal::read_records(path) {
        Ok(r) => r,
        Err(e) => return text(500, format!("cannot read the journal: {e}")),
    };
    let chosen: Vec<&journal::Record> = records.iter().filter(|r| filter.matches(r)).collect();
    let from = chosen.len().saturating_sub(MAX_RECORDS);
    let mut body = String::from("[");
    for (i, r) in chosen[from..].iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push('\n');
        body.push_str(&journal::json_line(r));
    }
    body.push_str("\n]\n");
    Reply {
        status: 200,
        content_type: "application/json",
        body,
    }
}

fn text(status: u16, line: impl Into<String>) -> Reply {
    let mut body = line.into();
    body.push('\n');
    Reply {
        status,
        content_type: "text/plain; charset=utf-8",
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::journal::{Entry, Journal};

    /// `/events` answers the records the filters select, as a JSON array.
    #[test]
    fn the_records_selected_are_served_as_a_json_array() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let j = Journal::open(path.clone(), 1 << 20, 0o640, "i1");
        let a = j
            .record(Entry::new("slave_down").cluster(Some(0)).node("db:5433"))
            .unwrap();
        j.record(Entry::new("slave_down").cluster(Some(0)).node("db:5434"));
        let c = j
            .record(Entry::new("slave_up").cluster(Some(0)).node("db:5433"))
            .unwrap();
        j.close(std::time::Duration::from_secs(5));
        let now = crate::cluster::Time::now().as_secs_f64();
        let f = Filter::from_query(Some("node=db%3A5433&since=1h"), now).unwrap();
        let r = select(&path, &f);
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let ids: Vec<u64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [a.id, c.id]);
        let none = select(&dir.path().join("nothing.jsonl"), &Filter::default());
        assert_eq!(none.body, "[\n]\n");
    }
}
