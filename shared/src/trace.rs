//! Distributed traces: one W3C trace follows a command from its publisher through the functions,
//! the events they publish and the provider's answer.
//!
//! Why: a transfer crosses three processes and three streams (`transfer-out`, the provider's
//! adapter, `provider-ack`); when one is slow or lost, its trace shows where. A command's
//! `traceparent` header (W3C Trace Context) is the parent of its `command` span; a command without
//! one starts a trace. Every message its outcome publishes (events, provider requests) is stored
//! in the outbox with that span's `traceparent` and published with it, so whoever reads it
//! continues the trace: the provider simulator puts it on its ack, and `provider-ack`'s events
//! share the transfer's trace id. A batch's span links to the commands it decided.
//!
//! Spans are exported (OTLP over HTTP) only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the exporter's own `OTEL_*` settings.
//! Without it, ids are still made and propagated and nothing is recorded or sent.

use std::collections::HashMap;
use std::sync::OnceLock;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Link, Span, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::error::ConfigError;
use crate::outbox::OutboxMessage;

/// The W3C Trace Context header.
pub const TRACEPARENT: &str = "traceparent";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

fn exporting() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

/// Installs the tracer of `function` (once per process): exporting over OTLP when an endpoint is
/// configured; otherwise making ids, recording nothing. A bad exporter setting is a
/// configuration error.
pub fn init(function: &str) -> Result<(), ConfigError> {
    if PROVIDER.get().is_some() {
        return Ok(());
    }
    let resource = Resource::builder()
        .with_service_name(function.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let provider = if exporting() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| ConfigError {
                var: "OTEL_EXPORTER_OTLP_ENDPOINT",
                message: e.to_string(),
            })?;
        builder.with_batch_exporter(exporter).build()
    } else {
        // Ids for the headers, nothing recorded: no span is sampled unless its parent was.
        builder
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build()
    };
    global::set_tracer_provider(provider.clone());
    let _ = PROVIDER.set(provider);
    Ok(())
}

/// Sends what is still buffered (at shutdown).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
        let _ = p.shutdown();
    }
}

fn tracer() -> global::BoxedTracer {
    global::tracer_provider().tracer("wallet-runtime")
}

struct Headers<'a>(Option<&'a HeaderMap>);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0?.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.iter().map(|(k, _)| k.as_ref()).collect())
            .unwrap_or_default()
    }
}

/// The `traceparent` of `cx`'s span, when it has a valid one.
fn traceparent(cx: &Context) -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// A command's span: from its decoding to the end of its batch (when it is dropped).
#[derive(Debug)]
pub struct CommandSpan {
    cx: Context,
    traceparent: Option<String>,
}

impl CommandSpan {
    /// The span of a command of `function` that arrived with `headers` on `subject`: a child of
    /// its `traceparent`, or the root of a new trace.
    pub fn start(function: &'static str, subject: &str, headers: Option<&HeaderMap>) -> Self {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let mut span = tracer().start_with_context(function, &parent);
        span.set_attribute(KeyValue::new(
            "messaging.destination.name",
            subject.to_owned(),
        ));
        let cx = parent.with_span(span);
        let traceparent = traceparent(&cx);
        Self { cx, traceparent }
    }

    /// `message` goes out as part of this command's trace.
    pub fn stamp(&self, message: &mut OutboxMessage) {
        message.traceparent.clone_from(&self.traceparent);
    }

    /// Its `traceparent` header.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }
}

/// A batch's span, linked to each of its commands' (ended when dropped).
pub fn batch<'a>(
    function: &'static str,
    commands: impl Iterator<Item = &'a CommandSpan>,
) -> Context {
    let links: Vec<Link> = commands
        .map(|c| Link::with_context(c.cx.span().span_context().clone()))
        .collect();
    let tracer = tracer();
    let span = tracer
        .span_builder(format!("{function} batch"))
        .with_attributes([KeyValue::new("wallet.batch.size", links.len() as i64)])
        .with_links(links)
        .start(&tracer);
    Context::new().with_span(span)
}
