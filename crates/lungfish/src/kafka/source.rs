//! The Kafka poll loop: one thread that polls the group's consumer, feeds each held
//! partition's [`Consumer`], commits durable offsets, follows rebalances, and pauses
//! the partitions while the shards are full. See the [module documentation](super).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::{KafkaSourceConfig, KafkaStart};
use crate::consumer::{Committer, Consumer, ConsumerSettings, Origin, RecordRef, ReplayState};
use crate::control::Control;
use crate::dlq::DeadLetters;
use crate::operator::OperatorChain;
use crate::shard::ShardMsg;

/// Longest wait for the brokers' answer to a metadata, offsets or commit request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one poll waits for a message when there is nothing else to do.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How long one poll waits while batches wait for room in the shards' queues.
const BACKED_UP_WAIT: Duration = Duration::from_millis(5);
/// Messages taken from the client before they are processed (one burst).
const BURST: usize = 4096;
/// A bounded run that holds no partition for this long gives up.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The partitions of a pipeline's topics, numbered densely: topic by topic, in the
/// order of the configuration, partition by partition. The shards keep state per
/// dense number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `(topic, first dense number, partitions)`.
    topics: Vec<(String, u32, u32)>,
}

impl Topology {
    /// The topology of `config`'s topics, asked of its brokers.
    ///
    /// # Errors
    /// The brokers cannot be reached within 10 s, or a topic does not exist.
    pub fn fetch(config: &KafkaSourceConfig) -> Result<Self, String> {
        let mut client = base_config(config);
        let probe: BaseConsumer = client
            .set_log_level(RDKafkaLogLevel::Error)
            .create()
            .map_err(|e| format!("kafka client: {e}"))?;
        let mut topics = Vec::new();
        let mut next = 0u32;
        for topic in &config.topics {
            let metadata = probe
                .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                .map_err(|e| {
                    format!(
                        "brokers {}: metadata of topic {topic:?}: {e}",
                        config.brokers
                    )
                })?;
            let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(format!("brokers {}: no topic {topic:?}", config.brokers));
            };
            if let Some(err) = t.error() {
                return Err(format!(
                    "brokers {}: topic {topic:?}: {}",
                    config.brokers,
                    rdkafka::error::RDKafkaErrorCode::from(err)
                ));
            }
            let count = t.partitions().len() as u32;
            if count == 0 {
                return Err(format!(
                    "brokers {}: topic {topic:?} has no partitions",
                    config.brokers
                ));
            }
            topics.push((topic.clone(), next, count));
            next += count;
        }
        Ok(Topology { topics })
    }

    /// A topology of the given topics and partition counts (for tests).
    pub fn of(topics: &[(&str, u32)]) -> Self {
        let mut next = 0;
        let topics = topics
            .iter()
            .map(|(t, n)| {
                let entry = ((*t).to_owned(), next, *n);
                next += n;
                entry
            })
            .collect();
        Topology { topics }
    }

    /// Partitions over all topics.
    pub fn partitions(&self) -> u32 {
        self.topics.iter().map(|(_, _, n)| n).sum()
    }

    /// The dense number of `topic`'s `partition`.
    pub fn dense(&self, topic: &str, partition: i32) -> Option<u32> {
        let (_, first, count) = self.topics.iter().find(|(t, _, _)| t == topic)?;
        u32::try_from(partition)
            .ok()
            .filter(|p| p < count)
            .map(|p| first + p)
    }

    /// The topic and Kafka partition of dense number `dense`.
    pub fn kafka(&self, dense: u32) -> (&str, i32) {
        let (topic, first, _) = self
            .topics
            .iter()
            .find(|(_, first, count)| (*first..first + count).contains(&dense))
            .expect("a dense partition number of this topology");
        (topic, (dense - first) as i32)
    }
}

/// What a Kafka source did in a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaReport {
    /// Messages taken from the topics.
    pub messages: u64,
    /// Partitions held at the end.
    pub partitions_held: usize,
    /// Times partitions were assigned to this instance.
    pub assignments: u64,
    /// Times partitions were taken from it.
    pub revocations: u64,
    /// Times the partitions were paused because the shards' queues were full.
    pub pauses: u64,
    /// The longest time between two polls.
    pub max_poll_gap: Duration,
    /// From the first message taken to the last (the reading rate's time base, without
    /// joining the group or closing).
    pub reading: Duration,
    /// Offset commits the group refused (each retried with the next commit).
    pub commit_failures: u64,
    /// True if a bounded run reached the end of every partition it held.
    pub finished: bool,
}

/// What happened in a rebalance, for the poll loop to act on after the poll.
#[derive(Debug)]
enum GroupEvent {
    Assigned(Vec<u32>),
    Revoked(Vec<u32>),
}

/// The consumer's context: commits durable offsets of revoked partitions while they
/// are still held, and queues rebalances for the loop.
struct GroupContext {
    topology: Arc<Topology>,
    committer: Arc<Committer>,
    events: Mutex<Vec<GroupEvent>>,
    commit_failures: AtomicU64,
}

impl GroupContext {
    fn dense(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        tpl.elements()
            .iter()
            .filter_map(|e| self.topology.dense(e.topic(), e.partition()))
            .collect()
    }

    /// A partition list with the latest published (durable) state of `partitions`.
    fn durable_offsets(
        &self,
        partitions: impl Iterator<Item = (u32, (u64, Vec<u8>))>,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, (offset, metadata)) in partitions {
            let (topic, partition) = self.topology.kafka(p);
            let Ok(offset) = i64::try_from(offset) else {
                continue;
            };
            let mut elem = tpl.add_partition(topic, partition);
            if elem.set_offset(Offset::Offset(offset)).is_ok() {
                elem.set_metadata(super::encode_metadata(&metadata));
            }
        }
        tpl
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is news for a bounded run, handled in the poll loop.
        if !matches!(
            error,
            KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!("kafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = self.dense(tpl);
        // Commit what is durable while the partitions are still ours (not possible if
        // the group already gave them away, e.g. after a session timeout).
        if !consumer.assignment_lost() {
            let offsets = self.durable_offsets(
                revoked
                    .iter()
                    .filter_map(|&p| self.committer.published(p).map(|s| (p, s))),
            );
            if offsets.count() > 0
                && let Err(e) = consumer.commit(&offsets, CommitMode::Sync)
            {
                self.commit_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("lungfish_kafka_commit_failures_total").increment(1);
                tracing::warn!("kafka: committing revoked partitions' offsets: {e}");
            }
        }
        for &p in &revoked {
            self.committer.forget(p);
        }
        metrics::counter!("lungfish_kafka_rebalances_total", "kind" => "revoke").increment(1);
        self.events
            .lock()
            .unwrap()
            .push(GroupEvent::Revoked(revoked));
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            metrics::counter!("lungfish_kafka_rebalances_total", "kind" => "assign").increment(1);
            self.events
                .lock()
                .unwrap()
                .push(GroupEvent::Assigned(self.dense(tpl)));
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            self.commit_failures.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("lungfish_kafka_commit_failures_total").increment(1);
            tracing::warn!("kafka: committing offsets failed (retried with the next commit): {e}");
        }
    }
}

/// Everything the poll loop needs from the pipeline.
pub(crate) struct KafkaInputParts {
    /// The source's configuration.
    pub config: KafkaSourceConfig,
    /// The consumer group.
    pub group: String,
    /// The topics' partitions.
    pub topology: Arc<Topology>,
    /// The template of every partition's consumer settings.
    pub settings: ConsumerSettings,
    /// The dead-letter queue.
    pub dead_letters: DeadLetters,
    /// The shards' queues.
    pub shards: Vec<Sender<ShardMsg>>,
    /// The run's control.
    pub control: Arc<Control>,
    /// Makes a partition's operator chain (`None`: no operators).
    pub chains: Box<dyn Fn(u32) -> Option<OperatorChain> + Send>,
    /// Bytes librdkafka may prefetch.
    pub prefetch_bytes: u64,
    /// How often durable offsets are committed.
    pub commit_interval: Duration,
}

/// A Kafka source's poll loop, ready to run.
pub(crate) struct KafkaInput {
    parts: KafkaInputParts,
}

/// The client settings every Lungfish Kafka client shares, then the user's options.
fn base_config(config: &KafkaSourceConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.options {
        c.set(k, v);
    }
    c
}

/// The group consumer's settings: offsets committed by Lungfish only, cooperative
/// assignment, prefetch within `prefetch_bytes`; the user's options last.
pub(crate) fn consumer_config(
    config: &KafkaSourceConfig,
    group: &str,
    prefetch_bytes: u64,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    let fetch = (prefetch_bytes / 4).clamp(1 << 20, 64 << 20);
    let queued_kb = (prefetch_bytes / 2 / 1024).max(1024);
    c.set("bootstrap.servers", &config.brokers)
        .set("group.id", group)
        .set("client.id", format!("lungfish-{group}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "auto.offset.reset",
            match config.start {
                KafkaStart::Earliest => "earliest",
                KafkaStart::Latest => "latest",
            },
        )
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set(
            "max.poll.interval.ms",
            config.max_poll_interval.as_millis().to_string(),
        )
        .set("queued.max.messages.kbytes", queued_kb.to_string())
        .set("fetch.max.bytes", fetch.to_string())
        .set(
            "max.partition.fetch.bytes",
            (1u64 << 20).min(fetch).to_string(),
        )
        .set(
            "enable.partition.eof",
            if config.bounded { "true" } else { "false" },
        );
    for (k, v) in &config.options {
        c.set(k, v);
    }
    c
}

/// The partitions' loop state.
struct Partitions<'a> {
    parts: &'a KafkaInputParts,
    committer: Arc<Committer>,
    /// Per dense partition: its consumer while this instance holds it.
    held: Vec<Option<Consumer>>,
    /// Consumers of partitions given up whose notices to the shards are not all sent.
    retiring: Vec<Option<Consumer>>,
}

impl Partitions<'_> {
    /// Starts consumers for newly assigned partitions, from their committed offsets.
    fn assign(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        dense: &[u32],
    ) -> Result<(), String> {
        if dense.is_empty() {
            return Ok(());
        }
        let topology = &self.parts.topology;
        let mut tpl = TopicPartitionList::new();
        for &p in dense {
            let (topic, partition) = topology.kafka(p);
            tpl.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(tpl, REQUEST_TIMEOUT)
            .map_err(|e| format!("reading the group's committed offsets: {e}"))?;
        for elem in committed.elements() {
            let Some(p) = topology.dense(elem.topic(), elem.partition()) else {
                continue;
            };
            let (start, restored) = match elem.offset() {
                Offset::Offset(o) if o >= 0 => {
                    let state = super::decode_metadata(elem.metadata())
                        .and_then(|bytes| ReplayState::decode(&bytes));
                    match state {
                        Some(state) => (o as u64, state),
                        None => {
                            // Offsets set by other tools carry no state: start fresh there.
                            tracing::warn!(
                                topic = elem.topic(),
                                partition = elem.partition(),
                                offset = o,
                                "kafka: the committed offset came without Lungfish's state in its \
                                 metadata (set by another tool, or a broker that does not keep \
                                 commit metadata): windows restart from it, which is exact only \
                                 if the partition's events are in time order"
                            );
                            (o as u64, ReplayState::INITIAL)
                        }
                    }
                }
                _ => (0, ReplayState::INITIAL),
            };
            let mut core = Consumer::resuming(
                p,
                Origin::Kafka {
                    topic: elem.topic().into(),
                    partition: elem.partition(),
                },
                start,
                restored,
                self.parts.dead_letters.clone(),
                self.parts.settings.clone(),
                self.parts.shards.clone(),
                self.parts.control.clone(),
                self.committer.clone(),
                (self.parts.chains)(p),
            );
            if let Some(old) = self.retiring[p as usize].take() {
                core.inherit_outbox(old);
            }
            tracing::info!(
                topic = elem.topic(),
                partition = elem.partition(),
                offset = start,
                "kafka: partition assigned"
            );
            self.held[p as usize] = Some(core);
        }
        Ok(())
    }

    /// Gives up revoked partitions: their open windows are dropped in the shards.
    fn revoke(&mut self, dense: &[u32]) {
        for &p in dense {
            if let Some(mut core) = self.held[p as usize].take() {
                core.abandon();
                self.retiring[p as usize] = Some(core);
                let (topic, partition) = self.parts.topology.kafka(p);
                tracing::info!(topic, partition, "kafka: partition revoked");
            }
        }
    }

    /// Feeds a burst of messages to their partitions' consumers, in order.
    fn process(&mut self, messages: &[BorrowedMessage<'_>]) {
        let topology = &self.parts.topology;
        let mut at = 0;
        while at < messages.len() {
            let first = &messages[at];
            let run = messages[at..]
                .iter()
                .take_while(|m| m.partition() == first.partition() && m.topic() == first.topic())
                .count();
            let batch = &messages[at..at + run];
            at += run;
            let Some(p) = topology.dense(first.topic(), first.partition()) else {
                continue;
            };
            let Some(core) = self.held[p as usize].as_mut() else {
                // Revoked in this burst: the new owner reads these again.
                continue;
            };
            core.process_records(
                batch.iter().map(|m| {
                    (
                        m.offset() as u64,
                        RecordRef::Message {
                            key: m.key(),
                            payload: m.payload().unwrap_or_default(),
                        },
                    )
                }),
                run,
            );
        }
    }

    /// Ages, sends and publishes every consumer's work; true if any is backed up.
    fn tick(&mut self) -> bool {
        let mut backed_up = false;
        for core in self.held.iter_mut().flatten() {
            core.tick();
            backed_up |= core.is_backed_up();
        }
        for slot in &mut self.retiring {
            if let Some(core) = slot {
                if core.send_outbox() {
                    *slot = None;
                } else {
                    backed_up = true;
                }
            }
        }
        backed_up
    }

    fn held_count(&self) -> usize {
        self.held.iter().flatten().count()
    }
}

impl KafkaInput {
    /// A poll loop for `parts`.
    pub(crate) fn new(parts: KafkaInputParts) -> Self {
        KafkaInput { parts }
    }

    /// Runs until a stop, an abort or, if bounded, the end of every held partition;
    /// then closes the partitions' consumers and commits what is durable.
    ///
    /// # Errors
    /// The client cannot be made, the topics cannot be subscribed, or a bounded run
    /// got no partition within a minute.
    pub(crate) fn run(self) -> Result<KafkaReport, String> {
        let parts = &self.parts;
        let partitions = parts.topology.partitions();
        let committer = Arc::new(Committer::external(partitions));
        let context = GroupContext {
            topology: parts.topology.clone(),
            committer: committer.clone(),
            events: Mutex::new(Vec::new()),
            commit_failures: AtomicU64::new(0),
        };
        let consumer: BaseConsumer<GroupContext> =
            consumer_config(&parts.config, &parts.group, parts.prefetch_bytes)
                // librdkafka's own debug lines (its `debug` option, e.g. "cgrp") reach
                // the log only when debug logging is on for this module.
                .set_log_level(if tracing::enabled!(tracing::Level::DEBUG) {
                    RDKafkaLogLevel::Debug
                } else {
                    RDKafkaLogLevel::Info
                })
                .create_with_context(context)
                .map_err(|e| format!("kafka consumer: {e}"))?;
        let topics: Vec<&str> = parts.config.topics.iter().map(String::as_str).collect();
        // A bounded run stops once every held partition is at its end: the client
        // reported the end (`enable.partition.eof`, one topic: see the configuration's
        // check) since the partitions were last paused (a pause drops what was fetched,
        // and an end reported before it may be ahead of what was processed), or the
        // partition's position reached the high watermark of the latest fetch.
        let bounded = parts.config.bounded;
        let mut at_end = vec![false; partitions as usize];
        consumer
            .subscribe(&topics)
            .map_err(|e| format!("subscribing to {topics:?}: {e}"))?;
        let mut state = Partitions {
            parts,
            committer: committer.clone(),
            held: (0..partitions).map(|_| None).collect(),
            retiring: (0..partitions).map(|_| None).collect(),
        };
        let mut report = KafkaReport::default();
        let mut paused = false;
        let mut last_poll = Instant::now();
        let mut last_commit = Instant::now();
        let started = Instant::now();
        let mut first_message: Option<Instant> = None;
        let gap_histogram = metrics::histogram!("lungfish_kafka_poll_gap_seconds");
        let paused_gauge = metrics::gauge!("lungfish_kafka_paused");
        let held_gauge = metrics::gauge!("lungfish_kafka_partitions");
        let control = &parts.control;
        let result = loop {
            if control.is_aborting() {
                break Ok(());
            }
            if control.is_stopping() {
                break Ok(());
            }
            let backed_up = state.tick();
            if backed_up != paused {
                if let Ok(assigned) = consumer.assignment() {
                    let r = if backed_up {
                        consumer.pause(&assigned)
                    } else {
                        consumer.resume(&assigned)
                    };
                    if let Err(e) = r {
                        tracing::warn!("kafka: pausing or resuming partitions: {e}");
                    }
                }
                paused = backed_up;
                paused_gauge.set(if paused { 1.0 } else { 0.0 });
                if paused {
                    at_end.fill(false);
                    report.pauses += 1;
                    metrics::counter!("lungfish_kafka_pauses_total").increment(1);
                }
            }
            if last_commit.elapsed() >= parts.commit_interval {
                last_commit = Instant::now();
                commit(&consumer, &committer, CommitMode::Async);
            }
            if bounded {
                let held = state.held_count();
                if held > 0
                    && !backed_up
                    && state
                        .held
                        .iter()
                        .enumerate()
                        .zip(&at_end)
                        .all(|((p, c), end)| {
                            c.as_ref().is_none_or(|c| {
                                *end || fetched_high_watermark(&consumer, &parts.topology, p as u32)
                                    .is_some_and(|high| c.position() >= high)
                            })
                        })
                {
                    report.finished = true;
                    break Ok(());
                }
                if held == 0 && report.assignments == 0 && started.elapsed() > ASSIGNMENT_TIMEOUT {
                    break Err(format!(
                        "no partition of {topics:?} was assigned to group {:?} within {} s",
                        parts.group,
                        ASSIGNMENT_TIMEOUT.as_secs()
                    ));
                }
            }
            // One burst: poll until the client has nothing ready or the burst is full.
            let mut burst: Vec<BorrowedMessage<'_>> = Vec::new();
            let mut wait = if backed_up { BACKED_UP_WAIT } else { POLL_WAIT };
            let mut failed = None;
            // The time since the last poll, spent on the pipeline's work: measured once a
            // burst (the polls within one follow each other at once).
            let gap = last_poll.elapsed();
            gap_histogram.record(gap.as_secs_f64());
            report.max_poll_gap = report.max_poll_gap.max(gap);
            loop {
                let polled = consumer.poll(wait);
                last_poll = Instant::now();
                wait = Duration::ZERO;
                let events = std::mem::take(&mut *consumer.context().events.lock().unwrap());
                if !events.is_empty() {
                    // Messages polled before the rebalance belong to the old assignment.
                    took(&mut report, &burst, &mut first_message, control);
                    state.process(&burst);
                    burst.clear();
                    for event in events {
                        match event {
                            GroupEvent::Assigned(dense) => {
                                report.assignments += 1;
                                for &p in &dense {
                                    at_end[p as usize] = false;
                                }
                                if let Err(e) = state.assign(&consumer, &dense) {
                                    failed = Some(e);
                                }
                                // Paused partitions stay paused across a reassignment
                                // (librdkafka): set new ones as the others are.
                                let mut tpl = TopicPartitionList::new();
                                for &p in &dense {
                                    let (topic, partition) = parts.topology.kafka(p);
                                    tpl.add_partition(topic, partition);
                                }
                                let _ = if paused {
                                    consumer.pause(&tpl)
                                } else {
                                    consumer.resume(&tpl)
                                };
                            }
                            GroupEvent::Revoked(dense) => {
                                report.revocations += 1;
                                state.revoke(&dense);
                            }
                        }
                    }
                    held_gauge.set(state.held_count() as f64);
                }
                match polled {
                    Some(Ok(message)) => {
                        burst.push(message);
                        if burst.len() >= BURST {
                            break;
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(partition))) => {
                        let topic = parts.config.topics.first().map_or("", String::as_str);
                        if let Some(p) = parts.topology.dense(topic, partition) {
                            at_end[p as usize] = true;
                        }
                    }
                    Some(Err(e)) => {
                        metrics::counter!("lungfish_kafka_errors_total").increment(1);
                        if matches!(&e, KafkaError::MessageConsumption(code) if *code == rdkafka::error::RDKafkaErrorCode::Fatal)
                        {
                            failed = Some(format!("kafka consumer: {e}"));
                        } else {
                            tracing::warn!("kafka: {e}");
                        }
                        break;
                    }
                    None => break,
                }
            }
            took(&mut report, &burst, &mut first_message, control);
            state.process(&burst);
            drop(burst);
            if let Some(e) = failed {
                break Err(e);
            }
        };
        // Close what is held: cut the last micro-batches (closing every window if the
        // bounded input is finished), wait for them to be durable, commit.
        if !control.is_aborting() {
            for core in state.held.iter_mut().flatten() {
                if let Err(e) = core.close(report.finished) {
                    control.abort(format!("dead-letter queue: {e}"));
                }
            }
            commit(&consumer, &committer, CommitMode::Sync);
        }
        report.partitions_held = state.held_count();
        report.commit_failures = consumer.context().commit_failures.load(Ordering::Relaxed);
        drop(state);
        // Leaving the group revokes what is held (committing it again: no change).
        drop(consumer);
        result.map(|()| report)
    }
}

/// The high watermark of `dense`'s partition as the latest fetch response gave it
/// (no request is made); `None` before the first fetch.
fn fetched_high_watermark(
    consumer: &BaseConsumer<GroupContext>,
    topology: &Topology,
    dense: u32,
) -> Option<u64> {
    let (topic, partition) = topology.kafka(dense);
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a valid
    // NUL-terminated string for the call; `low` and `high` are valid for writes.
    // (rust-rdkafka has no safe wrapper for this cached, request-free read.)
    #[allow(unsafe_code)]
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high as u64)
}

/// Counts a burst of messages taken from the client.
fn took(
    report: &mut KafkaReport,
    burst: &[BorrowedMessage<'_>],
    first: &mut Option<Instant>,
    control: &Control,
) {
    if burst.is_empty() {
        return;
    }
    let now = Instant::now();
    report.reading = now - *first.get_or_insert(now);
    report.messages += burst.len() as u64;
    metrics::counter!("lungfish_kafka_messages_total").increment(burst.len() as u64);
    // What the progress bar shows as events in.
    control
        .stats
        .events_in
        .fetch_add(burst.len() as u64, Ordering::Relaxed);
}

/// Commits every partition whose durable state changed since its last commit.
fn commit(consumer: &BaseConsumer<GroupContext>, committer: &Committer, mode: CommitMode) {
    let changed = committer.changed();
    if changed.is_empty() {
        return;
    }
    let tpl = consumer
        .context()
        .durable_offsets(changed.iter().map(|(p, s)| (*p, s.clone())));
    match consumer.commit(&tpl, mode) {
        Ok(()) => committer.mark_committed(changed),
        Err(e) => {
            consumer
                .context()
                .commit_failures
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("lungfish_kafka_commit_failures_total").increment(1);
            tracing::warn!("kafka: committing offsets failed (retried with the next commit): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_numbers_partitions_densely_topic_by_topic() {
        let t = Topology::of(&[("a", 3), ("b", 2)]);
        assert_eq!(t.partitions(), 5);
        assert_eq!(t.dense("a", 0), Some(0));
        assert_eq!(t.dense("a", 2), Some(2));
        assert_eq!(t.dense("a", 3), None);
        assert_eq!(t.dense("b", 1), Some(4));
        assert_eq!(t.dense("c", 0), None);
        assert_eq!(t.dense("b", -1), None);
        for p in 0..5 {
            let (topic, partition) = t.kafka(p);
            assert_eq!(t.dense(topic, partition), Some(p));
        }
    }

    #[test]
    fn the_consumer_commits_by_itself_only_and_bounds_its_prefetch() {
        let mut config = KafkaSourceConfig::new("127.0.0.1:9092", &["t"]);
        config
            .options
            .push(("fetch.max.bytes".to_owned(), "2000000".to_owned()));
        let c = consumer_config(&config, "g", 64 << 20);
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("32768"));
        // The user's options come last and win.
        assert_eq!(c.get("fetch.max.bytes"), Some("2000000"));
        assert_eq!(c.get("group.id"), Some("g"));
    }
}
