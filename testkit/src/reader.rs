//! Reading what a namespace published (events, dead letters) as a test waits for it.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

use crate::TestEnv;

/// An event as a test sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub subject: String,
    pub msg_id: String,
    pub headers: HeaderMap,
    /// The payload as published.
    pub payload: Bytes,
    /// The payload parsed as JSON, or as a string when it is not JSON.
    pub body: Value,
}

impl Received {
    /// The event's body without its `at` time (which no test can predict); panics when it has none.
    pub fn without_at(&self) -> Value {
        let mut body = self.body.clone();
        body.as_object_mut().unwrap().remove("at").unwrap();
        body
    }

    /// A header's value; panics when it is missing.
    pub fn header(&self, name: &str) -> String {
        match self.headers.get(name) {
            Some(v) => v.as_str().to_owned(),
            None => panic!("no {name} header on {}", self.msg_id),
        }
    }
}

/// The distinct `completed` events among `seen` (a redelivered event counts once).
pub fn completed(seen: &[Received]) -> usize {
    seen.iter()
        .filter(|r| r.msg_id.ends_with(":completed"))
        .map(|r| r.msg_id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Reads a stream in order and keeps everything it read.
///
/// A task of its own reads on while the test does something else, so what arrived during a long
/// wait is already here when the test looks.
pub struct Reader {
    incoming: tokio::sync::mpsc::UnboundedReceiver<jetstream::Message>,
    task: tokio::task::JoinHandle<()>,
    pub seen: Vec<Received>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("seen", &self.seen.len())
            .finish()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    pub(crate) async fn start(env: &TestEnv, stream: &str, filter: &str) -> Self {
        let mut followed = wallet_client::follow(
            &env.js,
            &env.config.names,
            stream,
            filter,
            consumer::DeliverPolicy::All,
        )
        .await
        .unwrap();
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        let stream = stream.to_owned();
        let task = tokio::spawn(async move {
            while let Some(m) = followed.next().await {
                if tx.send(m).is_err() {
                    return;
                }
            }
            eprintln!("the reader of {stream} ended");
        });
        Self {
            incoming,
            task,
            seen: Vec::new(),
        }
    }

    /// Reads until `done(seen)` holds, or panics after `limit`.
    pub async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> &[Received] {
        if let Err(e) = self.try_until(limit, what, done).await {
            panic!("{e}");
        }
        &self.seen
    }

    /// Reads until `done(seen)` holds; after `limit`, says what it waited for and read (for a
    /// test that has more to show before it fails).
    pub async fn try_until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Result<&[Received], String> {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(m)) => self.keep(m),
                Ok(None) => {
                    return Err(format!(
                        "the reader's stream ended while waiting for {what}"
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "timed out after {limit:?} waiting for {what}; read {} message(s)",
                        self.seen.len()
                    ));
                }
            }
        }
        Ok(&self.seen)
    }

    /// Reads whatever arrives within `d`.
    pub async fn read_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.incoming.recv()).await {
            self.keep(m);
        }
    }

    fn keep(&mut self, m: jetstream::Message) {
        let headers = m.headers.clone().unwrap_or_default();
        let msg_id = headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let body = serde_json::from_slice(&m.payload)
            .unwrap_or(Value::String(String::from_utf8_lossy(&m.payload).into()));
        crate::schemas::check(&m.subject, &body);
        self.seen.push(Received {
            subject: m.subject.to_string(),
            msg_id,
            headers,
            payload: m.payload.clone(),
            body,
        });
    }

    /// Reads until `n` messages are in.
    pub async fn count(&mut self, n: usize, limit: Duration) -> &[Received] {
        self.until(limit, &format!("{n} messages"), |s| s.len() >= n)
            .await
    }

    /// The message with this `Nats-Msg-Id`, reading until it comes.
    pub async fn by_id(&mut self, msg_id: &str, limit: Duration) -> Received {
        self.until(limit, msg_id, |s| s.iter().any(|r| r.msg_id == msg_id))
            .await;
        self.seen
            .iter()
            .find(|r| r.msg_id == msg_id)
            .cloned()
            .unwrap()
    }
}
