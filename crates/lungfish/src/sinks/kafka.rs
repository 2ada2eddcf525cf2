//! The `kafka` sink: window rows produced to a Kafka (or Redpanda, or any
//! Kafka-compatible) topic, one JSON message per row, with librdkafka's idempotent
//! producer.
//!
//! # Messages
//!
//! Each row is one message on `topic`: the value is the same JSON object as a line of
//! the [`file`](super::file) sink (`{"window_start":..,"window_end":..,"key":..,<one
//! field per aggregate>}`), the key is the row's key (UTF-8), so a key's rows stay in
//! one partition, in order, and a compacted topic keeps the last row of each key.
//!
//! # Guarantees
//!
//! - **Acknowledged only on delivery reports.** [`Sink::write`] enqueues every row of
//!   the batch and returns `Ok` only once *every* message has a successful delivery
//!   report, that is once the partition leader and, with `acks=all`, every in-sync
//!   replica has it. Only then does the driver acknowledge the checkpoint markers behind
//!   the rows, so the pipeline's input is committed past rows only when Kafka holds them.
//! - **No duplicates from the producer's own retries.** The producer is idempotent
//!   (`enable.idempotence=true`, which implies `acks=all` and ordered, de-duplicated
//!   retries per partition): a message librdkafka resends after a lost connection or a
//!   timed-out request is written once.
//! - **At-least-once across failed writes and crashes.** A write that fails (a delivery
//!   report with an error, or the write timeout) may already have delivered some of its
//!   rows; the driver's retry produces the whole batch again, so those rows appear
//!   twice. Likewise, after a crash the pipeline replays the input after its last
//!   commit and produces those rows again. A duplicate has the same key and the same
//!   content (rows are complete windows keyed by `(window_start, key)`): readers that
//!   keep the last row per `(window_start, key)`, or a compacted topic, see each window
//!   once. Kafka transactions, which would make this exactly-once, are not used.
//!
//! # Failures
//!
//! Every message's `message.timeout.ms` is the sink's `write_timeout`, and a write
//! gives up waiting for reports after `write_timeout`: a broker that is down, slow or
//! unreachable fails the write as a [transient](SinkError::transient) error naming the
//! topic, how many messages were acknowledged and librdkafka's last error (e.g.
//! `Connection refused`), and the driver retries it, opens its breaker and holds the
//! batch under its usual rules. So does a full producer queue (`QueueFull`) that does
//! not drain within `write_timeout`. Errors that a retry cannot fix are
//! [permanent](SinkError::permanent) and stop the pipeline: an unknown topic (with
//! auto-creation off), a message over the broker's size limit, an authentication or
//! authorization failure, an unsupported compression or protocol version, and an
//! invalid client setting (found by `open`, together with a topic that does not exist).
//! After any failure that is not permanent (a timeout, a failed delivery, a fatal error
//! of the idempotent producer) the producer is discarded and the retry creates a new
//! one: what is left of the failed batch in the old one's queue is purged rather than
//! delivered late, the new one connects at once (not after the reconnect backoff the
//! outage built up, up to 10 s), and it gets a new producer id, so a broker that lost
//! its producer state (restarted without it, or a fatal `UnknownProducerId` /
//! `OutOfOrderSequenceNumber`) cannot wedge it.
//!
//! # Metrics
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `lungfish_kafka_produced_total` | counter | `sink` | messages with a successful delivery report |
//! | `lungfish_kafka_produced_bytes_total` | counter | `sink` | key and value bytes of written batches |
//! | `lungfish_kafka_write_errors_total` | counter | `sink`, `error` | failed writes, by librdkafka error (`MessageTimedOut`, `TopicAuthorizationFailed`...) or `write_timeout` |
//! | `lungfish_kafka_queue_full_total` | counter | `sink` | waits for room in librdkafka's queue |
//!
//! `sink` is the name given with [`KafkaSink::named`] (the topic until then).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::{DriverSettings, Sink, SinkError, write_json_row};
use crate::config::KafkaSinkConfig;
use crate::window::{RowSchema, WindowRows};

/// How long `open` waits for the topic's metadata before going on without it.
const OPEN_METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Produces window rows to a Kafka topic as JSON messages keyed by the row's key; a
/// batch is written once every message of it has a successful delivery report (see
/// the [module](self) for the guarantees).
pub struct KafkaSink {
    config: KafkaSinkConfig,
    /// The `sink` label of the metrics.
    name: String,
    /// Created by `open`; discarded after a failed write (unless permanent), created
    /// again by the next write.
    producer: Option<ThreadedProducer<Reports>>,
    /// One row's JSON, reused for every row.
    buf: Vec<u8>,
    /// Waits for room in librdkafka's queue so far.
    queue_full: u64,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("brokers", &self.config.brokers)
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A sink producing to `config.topic` on `config.brokers`. Nothing connects until
    /// [`open`](Sink::open).
    pub fn new(config: &KafkaSinkConfig) -> Self {
        KafkaSink {
            config: config.clone(),
            name: config.topic.clone(),
            producer: None,
            buf: Vec::with_capacity(256),
            queue_full: 0,
        }
    }

    /// Names the sink in its metrics (label `sink`); the topic until then.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// The driver settings for `config`: batches of `batch_max_rows` rows or
    /// `batch_max_age`, the defaults for the rest (retries, breaker, holding).
    pub fn driver_settings(config: &KafkaSinkConfig) -> DriverSettings {
        DriverSettings {
            batch_max_rows: config.batch_max_rows,
            batch_max_age: config.batch_max_age,
            ..DriverSettings::default()
        }
    }

    /// The librdkafka settings of the producer: `bootstrap.servers`, the idempotent
    /// producer (`enable.idempotence=true`, `acks=all`), `compression.type`,
    /// `linger.ms`, `message.timeout.ms` = `write_timeout`, then `options` verbatim
    /// (they override the others).
    pub fn client_config(config: &KafkaSinkConfig) -> ClientConfig {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &config.compression)
            .set("linger.ms", config.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                config.write_timeout.as_millis().max(1).to_string(),
            );
        for (key, value) in &config.options {
            client.set(key, value);
        }
        let debug = config.options.iter().any(|(k, _)| k == "debug");
        client.set_log_level(if debug {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        });
        client
    }

    fn context(&self) -> String {
        format!(
            "kafka topic `{}` at {}",
            self.config.topic, self.config.brokers
        )
    }

    /// Creates the producer if there is none.
    fn producer(&mut self) -> Result<&ThreadedProducer<Reports>, SinkError> {
        if self.producer.is_none() {
            let config = Self::client_config(&self.config);
            let producer = ThreadedProducer::from_config_and_context(&config, Reports::default())
                .map_err(|e| SinkError::permanent(config_error(&self.context(), &e)))?;
            self.producer = Some(producer);
        }
        Ok(self.producer.as_ref().expect("created above"))
    }

    /// Checks that the topic exists, if the brokers answer within a few seconds.
    fn check_topic(&mut self) -> Result<(), SinkError> {
        let context = self.context();
        let topic = self.config.topic.clone();
        let timeout = self.config.write_timeout.min(OPEN_METADATA_TIMEOUT);
        let producer = self.producer()?;
        let metadata = match producer.client().fetch_metadata(Some(&topic), timeout) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    sink = %context,
                    error = %e,
                    "the Kafka brokers did not answer a metadata request; going on (writes fail and are retried until they do)"
                );
                return Ok(());
            }
        };
        let error = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .and_then(|t| t.error())
            .map(RDKafkaErrorCode::from);
        match error {
            Some(code @ RDKafkaErrorCode::UnknownTopicOrPartition)
            | Some(code @ RDKafkaErrorCode::UnknownTopic) => Err(SinkError::permanent(format!(
                "{context}: the topic does not exist ({code}); create it, or let the brokers \
                 create topics (auto.create.topics.enable)"
            ))),
            Some(code) if is_permanent(code) => {
                Err(SinkError::permanent(format!("{context}: {code}")))
            }
            _ => Ok(()),
        }
    }

    fn fail(&self, error: &str, e: SinkError) -> SinkError {
        metrics::counter!("lungfish_kafka_write_errors_total", "sink" => self.name.clone(), "error" => error.to_owned())
            .increment(1);
        e
    }

    /// After a failed write: unless the error is permanent, discards the producer, so
    /// that the retry starts with a new one (see the module's *Failures*). Returns the
    /// error to report.
    fn after_failure(&mut self, code: Option<RDKafkaErrorCode>, message: String) -> SinkError {
        let fatal = self
            .producer
            .as_ref()
            .and_then(|p| p.client().fatal_error());
        let (code, mut message) = match fatal {
            Some((fatal, reason)) => (
                Some(fatal),
                format!("{message}; fatal producer error {fatal}: {reason}"),
            ),
            None => (code, message),
        };
        let permanent = code.is_some_and(is_permanent);
        if !permanent && let Some(old) = self.producer.take() {
            // Dropping it stops its polling thread and purges what is left of the failed
            // batch, which takes up to about 0.6 s: not on the write's time.
            let _ = std::thread::Builder::new()
                .name("lungfish-kafka-drop".into())
                .spawn(move || drop(old));
            message.push_str("; the retry uses a new producer");
        }
        let label = code.map_or_else(|| "write_timeout".to_owned(), |c| format!("{c:?}"));
        let error = if permanent {
            SinkError::permanent(message)
        } else {
            SinkError::transient(message)
        };
        self.fail(&label, error)
    }
}

/// Why creating the client failed, naming the setting when librdkafka does.
fn config_error(context: &str, e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, value) => {
            format!("{context}: invalid client setting `{key}` = `{value}`: {description}")
        }
        KafkaError::ClientCreation(reason) => {
            format!("{context}: invalid client configuration: {reason}")
        }
        other => format!("{context}: creating the producer failed: {other}"),
    }
}

/// True for librdkafka errors that trying the same write again cannot fix.
pub(crate) fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        code,
        // The topic or partition does not exist (auto-creation off) or is not valid.
        E::UnknownTopic
            | E::UnknownPartition
            | E::UnknownTopicOrPartition
            | E::InvalidTopic
            | E::TopicDeletionDisabled
            // The message is over `message.max.bytes` (client or broker) or malformed.
            | E::MessageSizeTooLarge
            | E::InvalidMessageSize
            | E::MessageBatchTooLarge
            | E::InvalidRecord
            | E::InvalidMessage
            | E::BadMessage
            | E::InvalidTimestamp
            // Security: the credentials or the ACLs refuse this producer.
            | E::Authentication
            | E::SaslAuthenticationFailed
            | E::UnsupportedSASLMechanism
            | E::IllegalSASLState
            | E::TopicAuthorizationFailed
            | E::ClusterAuthorizationFailed
            | E::TransactionalIdAuthorizationFailed
            | E::SecurityDisabled
            // The brokers cannot take what this configuration sends.
            | E::InvalidRequiredAcks
            | E::UnsupportedCompressionType
            | E::UnsupportedForMessageFormat
            | E::UnsupportedVersion
            | E::UnsupportedFeature
            | E::InvalidConfig
            | E::InvalidArgument
            | E::PolicyViolation
            | E::NotImplemented
    )
}

/// The state of the batch being written, shared with the delivery callback.
#[derive(Debug, Default)]
struct Batch {
    /// The write the reports count for; reports of earlier (failed) writes are ignored.
    generation: usize,
    /// How many messages the write enqueued; `usize::MAX` while it enqueues.
    expected: usize,
    delivered: usize,
    failed: usize,
    /// The first failure's error.
    error: Option<RDKafkaErrorCode>,
    /// The writer waits for room in the queue: wake it on every report.
    waiting_for_room: bool,
}

/// The producer's context: counts delivery reports per write, keeps librdkafka's last
/// client error for messages, and sends librdkafka's log to `tracing`.
#[derive(Debug, Default)]
struct Reports {
    batch: Mutex<Batch>,
    changed: Condvar,
    /// librdkafka's last global error (a broker connection refused...), and when.
    last_error: Mutex<Option<(Instant, String)>>,
    /// When a global error was last logged as a warning (they repeat while a broker is
    /// down).
    warned: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reports {
    /// Starts counting a new write; returns its generation.
    fn begin(&self) -> usize {
        let mut b = lock(&self.batch);
        let generation = b.generation.wrapping_add(1);
        *b = Batch {
            generation,
            expected: usize::MAX,
            ..Batch::default()
        };
        generation
    }

    /// librdkafka's last global error if it came after `since`.
    fn last_error_since(&self, since: Instant) -> Option<String> {
        lock(&self.last_error)
            .as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, e)| e.clone())
    }
}

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{fac}: {message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac}: {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let text = match code {
            Some(code) => format!("{code:?}: {reason}"),
            None => format!("{error}: {reason}"),
        };
        let now = Instant::now();
        {
            // Keep the cause (`Connection refused`...) over the summary that follows it.
            let mut last = lock(&self.last_error);
            let keep = code == Some(RDKafkaErrorCode::AllBrokersDown)
                && last
                    .as_ref()
                    .is_some_and(|(at, _)| now.duration_since(*at) < Duration::from_secs(5));
            if !keep {
                *last = Some((now, text.clone()));
            }
        }
        let warn = {
            let mut warned = lock(&self.warned);
            let due = warned.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
            if due {
                *warned = Some(now);
            }
            due
        };
        if warn {
            tracing::warn!(target: "librdkafka", error = %text, "Kafka producer error");
        } else {
            tracing::debug!(target: "librdkafka", error = %text, "Kafka producer error");
        }
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, generation: usize) {
        let mut b = lock(&self.batch);
        if b.generation != generation {
            return;
        }
        let failed = match result {
            Ok(_) => {
                b.delivered += 1;
                false
            }
            Err((e, _)) => {
                b.failed += 1;
                b.error
                    .get_or_insert(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail));
                true
            }
        };
        if failed || b.waiting_for_room || b.delivered == b.expected {
            self.changed.notify_all();
        }
    }
}

impl Sink for KafkaSink {
    /// Creates the producer (a permanent error if a setting is invalid) and, if the
    /// brokers answer within 5 s (or `write_timeout`, if shorter), checks that the
    /// topic exists (a permanent error if it does not). Brokers that do not answer are
    /// not an error here: the writes fail and are retried until they do.
    fn open(&mut self, _schema: &RowSchema) -> Result<(), SinkError> {
        self.producer()?;
        self.check_topic()
    }

    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        let rows: usize = batch.iter().map(|b| b.len()).sum();
        if rows == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let deadline = started + self.config.write_timeout;
        let context = self.context();
        self.producer()?;
        let producer = self.producer.as_ref().expect("created above");
        let reports = producer.context().clone();
        let generation = reports.begin();
        let topic = self.config.topic.as_str();
        let buf = &mut self.buf;
        let mut bytes = 0u64;
        let mut queue_full = 0u64;
        // Enqueue every row; on a full queue wait for reports (room) until the deadline.
        let mut enqueue_error: Option<(Option<RDKafkaErrorCode>, String)> = None;
        'rows: for rows in batch {
            for i in 0..rows.len() {
                buf.clear();
                write_json_row(rows, i, buf);
                let key = rows.key(i);
                bytes += (key.len() + buf.len()) as u64;
                let mut record = BaseRecord::with_opaque_to(topic, generation)
                    .key(key)
                    .payload(buf.as_slice());
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            queue_full += 1;
                            let mut b = lock(&reports.batch);
                            if let Some(code) = b.error {
                                enqueue_error = Some((
                                    Some(code),
                                    format!("{context}: delivery failed: {code}"),
                                ));
                                break 'rows;
                            }
                            let now = Instant::now();
                            if now >= deadline {
                                enqueue_error = Some((
                                    None,
                                    format!(
                                        "{context}: the producer's queue stayed full for the write timeout ({:?})",
                                        self.config.write_timeout
                                    ),
                                ));
                                break 'rows;
                            }
                            b.waiting_for_room = true;
                            let wait = (deadline - now).min(Duration::from_millis(50));
                            let (mut b, _) = reports
                                .changed
                                .wait_timeout(b, wait)
                                .unwrap_or_else(PoisonError::into_inner);
                            b.waiting_for_room = false;
                        }
                        Err((e, _)) => {
                            let code = e.rdkafka_error_code();
                            enqueue_error = Some((
                                code,
                                format!("{context}: enqueueing a message failed: {e}"),
                            ));
                            break 'rows;
                        }
                    }
                }
            }
        }
        if queue_full > 0 {
            self.queue_full += queue_full;
            metrics::counter!("lungfish_kafka_queue_full_total", "sink" => self.name.clone())
                .increment(queue_full);
        }
        if let Some((code, message)) = enqueue_error {
            let delivered = lock(&reports.batch).delivered;
            metrics::counter!("lungfish_kafka_produced_total", "sink" => self.name.clone())
                .increment(delivered as u64);
            let message = with_last_error(
                format!("{message} ({delivered} of {rows} messages acknowledged)"),
                &reports,
                started,
            );
            return Err(self.after_failure(code, message));
        }
        // Wait for every delivery report, or the first failure, or the deadline.
        let outcome = {
            let mut b = lock(&reports.batch);
            b.expected = rows;
            loop {
                if let Some(code) = b.error {
                    break Err((Some(code), b.delivered, b.failed));
                }
                if b.delivered >= rows {
                    break Ok(());
                }
                let now = Instant::now();
                if now >= deadline {
                    break Err((None, b.delivered, b.failed));
                }
                b = reports
                    .changed
                    .wait_timeout(b, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        match outcome {
            Ok(()) => {
                metrics::counter!("lungfish_kafka_produced_total", "sink" => self.name.clone())
                    .increment(rows as u64);
                metrics::counter!("lungfish_kafka_produced_bytes_total", "sink" => self.name.clone())
                    .increment(bytes);
                Ok(())
            }
            Err((code, delivered, failed)) => {
                metrics::counter!("lungfish_kafka_produced_total", "sink" => self.name.clone())
                    .increment(delivered as u64);
                let message = match code {
                    Some(code) => format!(
                        "{context}: delivery failed: {code} ({failed} of {rows} messages failed so far, \
                         {delivered} acknowledged; a retry produces the whole batch again)"
                    ),
                    None => format!(
                        "{context}: {delivered} of {rows} messages acknowledged within the write timeout ({:?})",
                        self.config.write_timeout
                    ),
                };
                let message = with_last_error(message, &reports, started);
                Err(self.after_failure(code, message))
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "Kafka topic {} at {} (JSON messages keyed by the row key)",
            self.config.topic, self.config.brokers
        )
    }

    fn query_hint(&self) -> Option<String> {
        Some(format!(
            "kcat -C -b {} -t {} -e -K '\\t'",
            self.config.brokers, self.config.topic
        ))
    }
}

/// `message`, with librdkafka's last client error if one came during the write.
fn with_last_error(message: String, reports: &Reports, since: Instant) -> String {
    match reports.last_error_since(since) {
        Some(e) => format!("{message}; last client error: {e}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AggFunc, AggregateSpec};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    fn schema() -> Arc<RowSchema> {
        Arc::new(RowSchema::new(
            &[
                AggregateSpec {
                    func: AggFunc::Count,
                    field: None,
                    column: "count".into(),
                },
                AggregateSpec {
                    func: AggFunc::Sum,
                    field: Some("amount".into()),
                    column: "total".into(),
                },
            ],
            &["amount".to_owned()],
        ))
    }

    fn rows(n: usize) -> Arc<WindowRows> {
        let mut rows = WindowRows::new(schema());
        for i in 0..n {
            rows.push(0, 1000, &format!("key-{i}"), &[i as f64, i as f64 * 1.5]);
        }
        Arc::new(rows)
    }

    #[test]
    fn the_client_config_maps_the_sink_config_and_options_override_it() {
        let mut config = KafkaSinkConfig::new("b1:9092,b2:9092", "rows");
        config.compression = "zstd".into();
        config.linger = Duration::from_millis(20);
        config.write_timeout = Duration::from_secs(7);
        let client = KafkaSink::client_config(&config);
        assert_eq!(client.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("compression.type"), Some("zstd"));
        assert_eq!(client.get("linger.ms"), Some("20"));
        assert_eq!(client.get("message.timeout.ms"), Some("7000"));
        assert!(matches!(client.log_level, RDKafkaLogLevel::Warning));

        config.options = vec![
            ("linger.ms".into(), "50".into()),
            ("security.protocol".into(), "SASL_SSL".into()),
            ("debug".into(), "msg".into()),
        ];
        let client = KafkaSink::client_config(&config);
        assert_eq!(client.get("linger.ms"), Some("50"));
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert!(matches!(client.log_level, RDKafkaLogLevel::Debug));
    }

    #[test]
    fn driver_settings_take_the_batch_limits() {
        let mut config = KafkaSinkConfig::new("b:9092", "rows");
        config.batch_max_rows = 123;
        config.batch_max_age = Duration::from_millis(45);
        let s = KafkaSink::driver_settings(&config);
        assert_eq!(s.batch_max_rows, 123);
        assert_eq!(s.batch_max_age, Duration::from_millis(45));
        assert!(s.hold_when_failing);
    }

    #[test]
    fn errors_a_retry_cannot_fix_are_permanent() {
        use RDKafkaErrorCode as E;
        for code in [
            E::UnknownTopic,
            E::UnknownTopicOrPartition,
            E::MessageSizeTooLarge,
            E::TopicAuthorizationFailed,
            E::ClusterAuthorizationFailed,
            E::SaslAuthenticationFailed,
            E::UnsupportedCompressionType,
        ] {
            assert!(is_permanent(code), "{code:?}");
        }
        for code in [
            E::MessageTimedOut,
            E::AllBrokersDown,
            E::BrokerTransportFailure,
            E::QueueFull,
            E::NotEnoughReplicas,
            E::NotLeaderForPartition,
            E::RequestTimedOut,
            E::OutOfOrderSequenceNumber,
            E::Fatal,
        ] {
            assert!(!is_permanent(code), "{code:?}");
        }
    }

    #[test]
    fn an_invalid_setting_fails_open_permanently_naming_it() {
        let mut config = KafkaSinkConfig::new("127.0.0.1:1", "rows");
        config.options = vec![("no.such.setting".into(), "1".into())];
        let e = KafkaSink::new(&config).open(&schema()).unwrap_err();
        assert!(!e.retryable, "{e:?}");
        assert!(e.message.contains("no.such.setting"), "{e}");

        let mut config = KafkaSinkConfig::new("127.0.0.1:1", "rows");
        config.compression = "brotli".into();
        let e = KafkaSink::new(&config).open(&schema()).unwrap_err();
        assert!(!e.retryable && e.message.contains("compression"), "{e}");

        // A combination librdkafka refuses when the client is created.
        let mut config = KafkaSinkConfig::new("127.0.0.1:1", "rows");
        config.options = vec![("acks".into(), "1".into())];
        let e = KafkaSink::new(&config).open(&schema()).unwrap_err();
        assert!(!e.retryable && e.message.contains("acks"), "{e}");
    }

    #[test]
    fn an_unreachable_broker_fails_the_write_transiently_within_the_timeout() {
        // Nothing listens on port 1.
        let mut config = KafkaSinkConfig::new("127.0.0.1:1", "rows");
        config.write_timeout = Duration::from_millis(1500);
        let mut sink = KafkaSink::new(&config);
        sink.open(&schema()).unwrap();
        let started = Instant::now();
        let e = sink.write(&[rows(10)]).unwrap_err();
        let took = started.elapsed();
        assert!(e.retryable, "{e:?}");
        assert!(took < Duration::from_millis(2500), "{took:?}");
        assert!(e.message.contains("`rows`"), "{e}");
        // Our write timeout or librdkafka's message timeout (set to the same) may fire
        // first on a loaded machine; either way nothing was acknowledged.
        assert!(
            e.message.contains("0 of 10 messages acknowledged")
                || e.message
                    .contains("10 of 10 messages failed so far, 0 acknowledged"),
            "{e}"
        );
    }

    fn mock_sink(cluster: &MockCluster<'_, impl rdkafka::ClientContext>) -> KafkaSink {
        let mut config = KafkaSinkConfig::new(&cluster.bootstrap_servers(), "rows");
        config.write_timeout = Duration::from_secs(5);
        config.linger = Duration::from_millis(1);
        KafkaSink::new(&config).named("mock")
    }

    #[test]
    fn a_batch_is_written_once_every_message_is_delivered() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("rows", 3, 1).unwrap();
        let mut sink = mock_sink(&cluster);
        sink.open(&schema()).unwrap();
        sink.write(&[rows(500), rows(7)]).unwrap();
        // A transient broker error is retried by librdkafka inside the write.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS],
        );
        // Ok means every message of the batch had its successful delivery report
        // (librdkafka's out-queue length is no measure of that: it also counts pending
        // log and error callbacks, such as those of the injected error).
        sink.write(&[rows(20)]).unwrap();
    }

    #[test]
    fn a_full_queue_is_waited_out() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("rows", 2, 1).unwrap();
        let mut sink = mock_sink(&cluster);
        // Room for 10 messages: a batch of 2000 waits for deliveries 199 times or more.
        sink.config.options = vec![("queue.buffering.max.messages".into(), "10".into())];
        sink.open(&schema()).unwrap();
        sink.write(&[rows(2000)]).unwrap();
        assert!(sink.queue_full > 0);
    }

    #[test]
    fn an_authorization_failure_is_permanent() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("rows", 1, 1).unwrap();
        let mut sink = mock_sink(&cluster);
        sink.open(&schema()).unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10],
        );
        let e = sink.write(&[rows(3)]).unwrap_err();
        assert!(!e.retryable, "{e:?}");
        assert!(e.message.contains("TopicAuthorizationFailed"), "{e}");
    }

    #[test]
    fn a_message_over_the_size_limit_is_permanent() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("rows", 1, 1).unwrap();
        let mut sink = mock_sink(&cluster);
        sink.config.options = vec![("message.max.bytes".into(), "1000".into())];
        sink.open(&schema()).unwrap();
        let mut big = WindowRows::new(schema());
        big.push(0, 1000, &"k".repeat(2000), &[1.0, 2.0]);
        let e = sink.write(&[Arc::new(big)]).unwrap_err();
        assert!(!e.retryable, "{e:?}");
        assert!(e.message.contains("MessageSizeTooLarge"), "{e}");
    }

    #[test]
    fn open_refuses_a_topic_that_does_not_exist() {
        let cluster = MockCluster::new(1).unwrap();
        cluster
            .topic_error(
                "rows",
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
            )
            .unwrap();
        let mut sink = mock_sink(&cluster);
        let e = sink.open(&schema()).unwrap_err();
        assert!(!e.retryable, "{e:?}");
        assert!(e.message.contains("does not exist"), "{e}");
    }
}
