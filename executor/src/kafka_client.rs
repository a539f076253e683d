//! What Kafka sources and sinks share: client configuration and a client
//! context that keeps the client's logs readable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use crate::error::{ExecutorError, Result};
use crate::source::Options;

/// Takes `topic`, the broker address and `properties.*` (passed to the
/// client as they are) from `options`.
pub(crate) fn connection_options(options: &mut Options) -> Result<(String, Vec<(String, String)>)> {
    let topic = options
        .take("topic")
        .ok_or_else(|| ExecutorError::InvalidOption("topic is required".into()))?;
    let servers = options
        .take("properties.bootstrap.server")
        .or_else(|| options.take("properties.bootstrap.servers"))
        .ok_or_else(|| {
            ExecutorError::InvalidOption("properties.bootstrap.server is required".into())
        })?;
    let mut config = vec![("bootstrap.servers".to_string(), servers)];
    for key in options.keys_with_prefix("properties.") {
        if let Some(value) = options.take(&key) {
            config.push((key["properties.".len()..].to_string(), value));
        }
    }
    Ok((topic, config))
}

/// A client configuration from `key = value` pairs.
pub(crate) fn client_config(config: &[(String, String)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (k, v) in config {
        client.set(k, v);
    }
    client
}

/// A client the configuration does not allow.
pub(crate) fn invalid_config(e: KafkaError) -> ExecutorError {
    ExecutorError::InvalidOption(format!("Kafka client configuration: {e}"))
}

/// The last connection problem of a source's clients, until messages flow
/// again (`eddy_catalog.sources`).
#[derive(Debug, Default)]
pub struct ConnectionStatus {
    problem: Mutex<Option<(std::time::SystemTime, String)>>,
    has_problem: std::sync::atomic::AtomicBool,
}

impl ConnectionStatus {
    /// The last problem and when it happened, if the clients have one.
    pub fn problem(&self) -> Option<(std::time::SystemTime, String)> {
        crate::sync::lock(&self.problem).clone()
    }

    fn report(&self, message: &str) {
        *crate::sync::lock(&self.problem) =
            Some((std::time::SystemTime::now(), message.to_string()));
        self.has_problem
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Messages flow: the problem is over.
    pub(crate) fn clear(&self) {
        if self
            .has_problem
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            *crate::sync::lock(&self.problem) = None;
        }
    }
}

/// A client context whose logs and errors (the client reconnects by
/// itself) become at most one warning every few seconds, so an outage shows
/// up as a line per client, not a flood.
pub(crate) struct ThrottledContext {
    topic: String,
    /// The partition a source split reads; -1 for other clients.
    partition: i32,
    last_complaint: Mutex<Option<Instant>>,
    status: Option<std::sync::Arc<ConnectionStatus>>,
}

impl ThrottledContext {
    pub(crate) fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
            last_complaint: Mutex::new(None),
            status: None,
        }
    }

    /// Also reports every problem to `status`.
    pub(crate) fn reporting_to(mut self, status: std::sync::Arc<ConnectionStatus>) -> Self {
        self.status = Some(status);
        self
    }

    /// Logs `message` unless this client logged one in the last 5 seconds.
    pub(crate) fn complain(&self, message: &str) {
        if let Some(status) = &self.status {
            status.report(message);
        }
        let mut last = crate::sync::lock(&self.last_complaint);
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            *last = Some(Instant::now());
            tracing::warn!(topic = %self.topic, partition = self.partition,
                "Kafka: {message} (retrying)");
        }
    }
}

impl ClientContext for ThrottledContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= RDKafkaLogLevel::Warning as i32 {
            self.complain(message);
        } else {
            tracing::debug!(facility, "{message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.complain(&format!("{error}: {reason}"));
    }
}

impl ConsumerContext for ThrottledContext {}

impl ProducerContext for ThrottledContext {
    type DeliveryOpaque = ();

    /// Failed deliveries fail the transaction's commit, which is retried;
    /// there is nothing to do per message.
    fn delivery(&self, _result: &DeliveryResult<'_>, _opaque: ()) {}
}
