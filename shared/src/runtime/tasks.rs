//! The tasks that run beside a function's work, supervised: the HTTP server, the outbox relay,
//! the event publisher, the lag watcher and the function's own background work (a sweeper, a
//! reconciler).
//!
//! A task that panics is not dropped on the floor: it is logged with its name, counted
//! (`wallet_task_failures_total`), the process shuts down, and its exit is a failure, so that
//! the orchestrator restarts a replica that lost its relay or its sweeper instead of leaving it
//! half-working. The shutdown waits for every task to end.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::metrics;

#[derive(Debug, Clone)]
pub(super) struct Tasks {
    function: &'static str,
    shutdown: CancellationToken,
    running: Arc<Mutex<Vec<JoinHandle<()>>>>,
    failed: Arc<AtomicBool>,
}

impl Tasks {
    pub(super) fn new(function: &'static str, shutdown: CancellationToken) -> Self {
        Self {
            function,
            shutdown,
            running: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// The process's shutdown token: cancelled by a signal, or by a task that failed.
    pub(super) fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs `task` until it ends; a panic fails the process.
    pub(super) fn spawn(
        &self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = tokio::spawn(task);
        let this = self.clone();
        let watcher = tokio::spawn(async move {
            if let Err(e) = handle.await {
                this.failed(name, &e);
            }
        });
        if let Ok(mut running) = self.running.lock() {
            running.push(watcher);
        }
    }

    /// Records that the task `name` ended with `e` (a panic): logs it, and shuts down.
    pub(super) fn failed(&self, name: &'static str, e: &JoinError) {
        if !e.is_panic() {
            return;
        }
        metrics::task_failed(self.function, name);
        tracing::error!(function = self.function, task = name, error = %e, "task panicked; shutting down");
        self.failed.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
    }

    /// Waits for every task to end; false when one of them failed.
    pub(super) async fn join(&self) -> bool {
        let running = self
            .running
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for watcher in running {
            let _ = watcher.await;
        }
        !self.failed.load(Ordering::SeqCst)
    }
}
