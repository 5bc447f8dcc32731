//! The live view of a run: a progress bar on a terminal, a line every ten seconds otherwise
//! (logs of `make bench`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::track::Live;

pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: ProgressBar,
}

impl Progress {
    /// Shows the run's progress: against `count` commands, or against `duration`.
    pub fn start(live: Arc<Live>, count: Option<u64>, duration: Option<Duration>) -> Self {
        let len = count.unwrap_or_else(|| duration.map_or(0, |d| d.as_secs()));
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let unit = if count.is_some() { "commands" } else { "s" };
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}"
            ))
            .expect("a valid template")
            .progress_chars("=> "),
        );
        let (b, started) = (bar.clone(), Instant::now());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let (mut last, mut last_at, mut last_line) = (0u64, Instant::now(), Instant::now());
            loop {
                tick.tick().await;
                let (sent, finished, lag) = (
                    live.sent.load(Ordering::Relaxed),
                    live.finished.load(Ordering::Relaxed),
                    live.lag.load(Ordering::Relaxed),
                );
                let rate = (sent - last) as f64 / last_at.elapsed().as_secs_f64();
                (last, last_at) = (sent, Instant::now());
                let msg = format!("{rate:>7.0} cmd/s  outcomes {finished}  lag {lag}");
                b.set_position(if count.is_some() {
                    sent
                } else {
                    started.elapsed().as_secs()
                });
                if b.is_hidden() && last_line.elapsed() >= Duration::from_secs(10) {
                    eprintln!(
                        "  {:>5.0} s  sent {sent}  outcomes {finished}  lag {lag}  {:.0} cmd/s overall",
                        started.elapsed().as_secs_f64(),
                        sent as f64 / started.elapsed().as_secs_f64()
                    );
                    last_line = Instant::now();
                }
                b.set_message(msg);
            }
        });
        Self { task, bar }
    }

    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
