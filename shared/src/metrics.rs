//! Every metric the runtime exports, named once: each is a function here, and [`describe`] gives
//! each its Prometheus help text. The functions' own metrics (the bonus reconciler's, the
//! transfer sweeper's) are named in their crates, through [`counter`].
//!
//! Labels: `function` on every metric (a global label of the recorder, so a function's own
//! metrics carry it too); `reason` on rejections and dead letters (the contract's reasons),
//! `task` on task failures.

use std::time::SystemTime;

use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use crate::events::Reason;

const FALLBACKS: &str = "wallet_batch_fallbacks_total";
const HANDLER_SECONDS: &str = "wallet_handler_seconds";
const COMMIT_SECONDS: &str = "wallet_commit_seconds";
const TRANSACTIONS: &str = "wallet_transactions_total";
/// Its histogram has buckets of its own (`telemetry::init_metrics`).
pub const BATCH_SIZE: &str = "wallet_batch_size";
const REDELIVERIES: &str = "wallet_redeliveries_total";
const TRANSIENT_ERRORS: &str = "wallet_transient_errors_total";
const PROCESSED: &str = "wallet_commands_processed_total";
const REJECTED: &str = "wallet_commands_rejected_total";
const DUPLICATES: &str = "wallet_commands_duplicate_total";
const PENDING: &str = "wallet_consumer_pending";
const ACK_PENDING: &str = "wallet_consumer_ack_pending";
const REDELIVERED: &str = "wallet_consumer_redelivered";
const DEAD_LETTERS: &str = "wallet_dead_letters_total";
const DEAD_LETTERS_REFUSED: &str = "wallet_dead_letters_refused_total";
const OUTBOX_PUBLISHED: &str = "wallet_outbox_published_total";
const TASK_FAILURES: &str = "wallet_task_failures_total";
const BUILD_INFO: &str = "wallet_build_info";
/// Its histogram has buckets of its own, to ten minutes (`telemetry::init_metrics`).
pub const COMMAND_AGE: &str = "wallet_command_age_seconds";
const OUTBOX_BACKLOG: &str = "wallet_outbox_backlog";
const OUTBOX_OLDEST: &str = "wallet_outbox_oldest_seconds";
const REQUESTS: &str = "wallet_requests_total";
const REQUEST_SECONDS: &str = "wallet_request_seconds";

/// Registers every runtime metric's help text (shown by `/metrics`).
pub fn describe() {
    describe_counter!(
        FALLBACKS,
        "Batches that failed as a whole and were retried command by command"
    );
    describe_histogram!(
        HANDLER_SECONDS,
        Unit::Seconds,
        "A batch's rules and SQL, before its commit"
    );
    describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "A batch's COMMIT");
    describe_counter!(
        TRANSACTIONS,
        "Transactions committed (one per batch, more when it fell back)"
    );
    describe_histogram!(BATCH_SIZE, "Messages per fetched batch");
    describe_counter!(REDELIVERIES, "Messages delivered more than once");
    describe_counter!(
        TRANSIENT_ERRORS,
        "Batches held because a dependency was unavailable"
    );
    describe_counter!(PROCESSED, "Commands completed");
    describe_counter!(REJECTED, "Commands rejected (a rejected event), by reason");
    describe_histogram!(
        COMMAND_AGE,
        Unit::Seconds,
        "From a command's publication (stored in its stream) to the commit of its effect"
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Outbox rows not yet published (every function's), as the relay last counted them"
    );
    describe_gauge!(
        OUTBOX_OLDEST,
        Unit::Seconds,
        "Age of the oldest outbox row not yet published (0 when none)"
    );
    describe_counter!(REQUESTS, "Requests answered (request-reply functions)");
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "From a request's arrival to its reply being sent"
    );
    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the function and its runtime version"
    );
    describe_counter!(
        DUPLICATES,
        "Commands already applied (a redelivery or a replayed id)"
    );
    describe_gauge!(
        PENDING,
        "The consumer's messages not yet delivered (KEDA scales on it)"
    );
    describe_gauge!(
        ACK_PENDING,
        "The consumer's messages delivered, not yet acknowledged"
    );
    describe_gauge!(
        REDELIVERED,
        "The consumer's messages redelivered, not yet acknowledged"
    );
    describe_counter!(DEAD_LETTERS, "Messages dead-lettered, by reason");
    describe_counter!(
        DEAD_LETTERS_REFUSED,
        "Dead letters the DLQ refused (the command is kept)"
    );
    describe_counter!(OUTBOX_PUBLISHED, "Outbox messages published");
    describe_counter!(
        TASK_FAILURES,
        "Supervised tasks that panicked (the process then exits)"
    );
}

/// A function's own counter, by its full name.
pub fn counter(name: &'static str) -> ::metrics::Counter {
    ::metrics::counter!(name)
}

/// Gives a function's own counter its help text (call once the process runs).
pub fn describe_counter(name: &'static str, help: &'static str) {
    describe_counter!(name, help);
}

pub fn batch_fallback(function: &'static str) {
    ::metrics::counter!(FALLBACKS, "function" => function).increment(1);
}

pub fn handler_seconds(function: &'static str, seconds: f64) {
    ::metrics::histogram!(HANDLER_SECONDS, "function" => function).record(seconds);
}

/// A batch's commit took `seconds`.
pub fn committed(function: &'static str, seconds: f64) {
    ::metrics::histogram!(COMMIT_SECONDS, "function" => function).record(seconds);
    ::metrics::counter!(TRANSACTIONS, "function" => function).increment(1);
}

/// A batch of `size` messages was fetched, `redelivered` of them not for the first time.
pub fn fetched(function: &'static str, size: usize, redelivered: usize) {
    ::metrics::counter!(REDELIVERIES, "function" => function).increment(redelivered as u64);
    ::metrics::histogram!(BATCH_SIZE, "function" => function).record(size as f64);
}

pub fn transient_error(function: &'static str) {
    ::metrics::counter!(TRANSIENT_ERRORS, "function" => function).increment(1);
}

/// A batch settled: how its commands ended (a rejection by its reason).
pub fn settled(function: &'static str, completed: usize, rejected: &[Reason], duplicates: usize) {
    ::metrics::counter!(PROCESSED, "function" => function).increment(completed as u64);
    for reason in rejected {
        ::metrics::counter!(REJECTED, "function" => function, "reason" => reason.as_str())
            .increment(1);
    }
    ::metrics::counter!(DUPLICATES, "function" => function).increment(duplicates as u64);
}

/// Commands stored in their stream at `stored` had their effect committed now.
pub fn committed_commands(function: &'static str, stored: impl Iterator<Item = SystemTime>) {
    let now = SystemTime::now();
    let histogram = ::metrics::histogram!(COMMAND_AGE, "function" => function);
    for at in stored {
        histogram.record(now.duration_since(at).unwrap_or_default().as_secs_f64());
    }
}

/// The outbox's unpublished rows and the age of the oldest.
pub fn outbox_backlog(rows: i64, oldest_seconds: f64) {
    ::metrics::gauge!(OUTBOX_BACKLOG).set(rows as f64);
    ::metrics::gauge!(OUTBOX_OLDEST).set(oldest_seconds);
}

/// A request was answered in `seconds`.
pub fn answered(function: &'static str, seconds: f64) {
    ::metrics::counter!(REQUESTS, "function" => function).increment(1);
    ::metrics::histogram!(REQUEST_SECONDS, "function" => function).record(seconds);
}

/// The consumer's backlog, as the server reports it.
pub fn lag(function: &'static str, pending: u64, ack_pending: usize, redelivered: usize) {
    ::metrics::gauge!(PENDING, "function" => function).set(pending as f64);
    ::metrics::gauge!(ACK_PENDING, "function" => function).set(ack_pending as f64);
    ::metrics::gauge!(REDELIVERED, "function" => function).set(redelivered as f64);
}

pub fn dead_lettered(function: &str, reason: &str) {
    ::metrics::counter!(DEAD_LETTERS, "function" => function.to_owned(), "reason" => reason.to_owned())
        .increment(1);
}

pub fn dead_letter_refused(function: &str) {
    ::metrics::counter!(DEAD_LETTERS_REFUSED, "function" => function.to_owned()).increment(1);
}

pub fn outbox_published(messages: usize) {
    ::metrics::counter!(OUTBOX_PUBLISHED).increment(messages as u64);
}

pub fn task_failed(function: &'static str, task: &'static str) {
    ::metrics::counter!(TASK_FAILURES, "function" => function, "task" => task).increment(1);
}

/// Which function and runtime version this process is (`wallet_build_info{function, version} 1`).
pub fn build_info(function: &'static str) {
    ::metrics::gauge!(BUILD_INFO, "function" => function, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
}
