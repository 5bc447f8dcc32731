//! The one error type a processing step returns, and the rule that picks the acknowledgement.
//!
//! A [`StepError::Transient`] is an outage (a connection refused or lost, a timeout, a deadlock or
//! serialisation failure, a server shutting down): the runtime holds the messages, keeps them
//! alive, backs off and tries again, and dead-letters nothing. A [`StepError::Permanent`] is a
//! fault of the data or the code: the runtime isolates the message that causes it and, once its
//! deliveries are used up, dead-letters it.

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

impl StepError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    pub fn transient(e: impl std::fmt::Display) -> Self {
        Self::Transient(e.to_string())
    }

    pub fn permanent(e: impl std::fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }
}

impl From<tokio_postgres::Error> for StepError {
    fn from(e: tokio_postgres::Error) -> Self {
        let message = format!("postgres: {}", error_chain(&e));
        let Some(state) = e.code() else {
            // No SQLSTATE: the connection failed, closed or timed out.
            return Self::Transient(message);
        };
        let code = state.code();
        // 08: connection exception, 40: transaction rollback (serialisation, deadlock),
        // 53: insufficient resources, 57: operator intervention (shutdown), 58: system error.
        if ["08", "40", "53", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
        {
            Self::Transient(message)
        } else {
            Self::Permanent(message)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StepError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Transient(format!("postgres pool: {other}")),
        }
    }
}

impl From<redis::RedisError> for StepError {
    // Redis only holds what PostgreSQL can rebuild, and our scripts are fixed: every Redis error
    // is an outage to wait out.
    fn from(e: redis::RedisError) -> Self {
        Self::Transient(format!("redis: {e}"))
    }
}

impl From<async_nats::jetstream::context::PublishError> for StepError {
    /// A message JetStream refuses for what it is (too large, a header it rejects, an expectation
    /// header that fails) is permanent: publishing it again changes nothing. Everything else (no
    /// ack in time, a lost connection, no stream yet, a server busy) is an outage.
    fn from(e: async_nats::jetstream::context::PublishError) -> Self {
        use async_nats::jetstream::context::PublishErrorKind as Kind;
        use async_nats::jetstream::{Error as ApiError, ErrorCode};
        let refused = match e.kind() {
            Kind::MaxPayloadExceeded | Kind::WrongLastMessageId | Kind::WrongLastSequence => true,
            Kind::Other => std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<ApiError>())
                .is_some_and(|api| {
                    [
                        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
                        ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
                    ]
                    .contains(&api.error_code())
                }),
            _ => false,
        };
        let message = format!("jetstream publish: {}", error_chain(&e));
        if refused {
            Self::Permanent(message)
        } else {
            Self::Transient(message)
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
