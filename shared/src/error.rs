//! The one error type a processing step returns, and the rule that picks the acknowledgement.
//!
//! A [`StepError::Transient`] is an outage (a connection refused or lost, a timeout, a deadlock or
//! serialisation failure, a server shutting down): the runtime holds the messages, keeps them
//! alive, backs off and tries again, and dead-letters nothing. A [`StepError::Permanent`] is a
//! fault of the data or the code: the runtime isolates the message that causes it and, once its
//! deliveries are used up, dead-letters it.

//!
//! The error that caused it is kept as its [`source`](std::error::Error::source) (a
//! `tokio_postgres::Error` with its SQLSTATE, a `RedisError`, a NATS error), and its `Display`
//! names what failed followed by the whole chain of causes: tokio-postgres' own `Display` hides
//! the server's message.

/// What a step's error came from.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{}", describe(what, source.as_ref()))]
    Transient {
        /// The dependency or the step (`postgres`, `redis`), or empty.
        what: &'static str,
        #[source]
        source: Source,
    },
    #[error("{}", describe(what, source.as_ref()))]
    Permanent {
        what: &'static str,
        #[source]
        source: Source,
    },
}

fn describe(what: &str, source: &(dyn std::error::Error + 'static)) -> String {
    match what {
        "" => error_chain(source),
        what => format!("{what}: {}", error_chain(source)),
    }
}

/// JetStream's 10158, "duplicate message id is in process": another publisher (the committer or
/// a relay) is storing the same message at this moment. Not a success, since that publish may
/// still fail, so the row stays for the relay; not an outage either, so not worth a warning.
const PUBLISH_RACED: &str = "jetstream publish raced another publisher of the same message";

impl StepError {
    /// See [`PUBLISH_RACED`].
    pub fn is_publish_race(&self) -> bool {
        matches!(self, Self::Transient { what, .. } if *what == PUBLISH_RACED)
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// An outage; `e` is an error (kept as the source) or a message.
    pub fn transient(e: impl Into<Source>) -> Self {
        Self::Transient {
            what: "",
            source: e.into(),
        }
    }

    /// A fault of the data or the code; `e` is an error (kept as the source) or a message.
    pub fn permanent(e: impl Into<Source>) -> Self {
        Self::Permanent {
            what: "",
            source: e.into(),
        }
    }
}

impl From<tokio_postgres::Error> for StepError {
    fn from(e: tokio_postgres::Error) -> Self {
        let what = "postgres";
        let Some(state) = e.code() else {
            // No SQLSTATE: the connection failed, closed or timed out.
            return Self::Transient {
                what,
                source: e.into(),
            };
        };
        let code = state.code();
        // 08: connection exception, 40: transaction rollback (serialisation, deadlock),
        // 53: insufficient resources, 57: operator intervention (shutdown), 58: system error.
        if ["08", "40", "53", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
        {
            Self::Transient {
                what,
                source: e.into(),
            }
        } else {
            Self::Permanent {
                what,
                source: e.into(),
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for StepError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Transient {
                what: "postgres pool",
                source: other.into(),
            },
        }
    }
}

impl From<redis::RedisError> for StepError {
    // Redis only holds what PostgreSQL can rebuild, and our scripts are fixed: every Redis error
    // is an outage to wait out.
    fn from(e: redis::RedisError) -> Self {
        Self::Transient {
            what: "redis",
            source: e.into(),
        }
    }
}

impl From<async_nats::jetstream::context::PublishError> for StepError {
    /// A message JetStream refuses for what it is (too large, a header it rejects, an expectation
    /// header that fails) is permanent: publishing it again changes nothing. Everything else (no
    /// ack in time, a lost connection, no stream yet, a server busy) is an outage.
    fn from(e: async_nats::jetstream::context::PublishError) -> Self {
        use async_nats::jetstream::context::PublishErrorKind as Kind;
        use async_nats::jetstream::{Error as ApiError, ErrorCode};
        // The server's own error code, for what async-nats files under `Other`.
        let code = match e.kind() {
            Kind::Other => std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<ApiError>())
                .map(ApiError::error_code),
            _ => None,
        };
        let refused = matches!(
            e.kind(),
            Kind::MaxPayloadExceeded | Kind::WrongLastMessageId | Kind::WrongLastSequence
        ) || code.is_some_and(|c| {
            [
                ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
                ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
            ]
            .contains(&c)
        });
        let what = if code == Some(ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT) {
            PUBLISH_RACED
        } else {
            "jetstream publish"
        };
        let source = e.into();
        if refused {
            Self::Permanent { what, source }
        } else {
            Self::Transient { what, source }
        }
    }
}

/// `e: cause: cause`, since tokio-postgres' `Display` hides the server's message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A bad configuration value: the variable and what is wrong with it, one line.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError, PublishErrorKind as Kind};

    /// The error async-nats makes of a server's refusal of a publish: the API error, filed
    /// under `Other` unless it has a kind of its own.
    fn refused_by_server(err_code: u64) -> PublishError {
        let api: async_nats::jetstream::Error = serde_json::from_value(serde_json::json!(
            { "code": 400, "err_code": err_code, "description": "from the server" }
        ))
        .expect("the server's error body");
        PublishError::with_source(Kind::Other, api)
    }

    #[test]
    fn a_publish_error_is_classified_by_the_servers_own_code() {
        let race = StepError::from(refused_by_server(10158));
        assert!(race.is_transient() && race.is_publish_race(), "{race}");

        for too_large in [10054, 10097] {
            let e = StepError::from(refused_by_server(too_large));
            assert!(
                !e.is_transient() && !e.is_publish_race(),
                "{too_large}: {e}"
            );
        }
        for outage in [
            PublishError::new(Kind::TimedOut),
            PublishError::new(Kind::StreamNotFound),
            refused_by_server(10008),
        ] {
            let e = StepError::from(outage);
            assert!(e.is_transient() && !e.is_publish_race(), "{e}");
        }
    }
}
