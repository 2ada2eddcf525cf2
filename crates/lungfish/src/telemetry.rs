//! Metric names and the helpers stages report through, once per batch.
//!
//! Every name starts with `lungfish_`; labels are bounded (stage, source and sink names,
//! partition numbers, reject kinds). The binary exports them as Prometheus text.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `lungfish_stage_events_in_total` | counter | `stage` | events (rows, for `sink`) a stage received |
//! | `lungfish_stage_events_out_total` | counter | `stage` | events (rows) it passed on |
//! | `lungfish_events_in_total` | counter | `source` | events a source appended to the log |
//! | `lungfish_events_rejected_total` | counter | `stage`, `kind` | lines rejected into the dead-letter queue |
//! | `lungfish_dead_letters_total` | counter | `stage`, `kind` | entries appended to the dead-letter queue, all stages (`source:NAME`, `consumer`, `window`, `operator:NAME`, `sink:NAME`) and kinds (the reject kinds of the sources, `late`, `panic`, `unavailable`, an operator's own, `rejected_row`); a replay after a crash may count entries the log already had |
//! | `lungfish_source_bytes_total` | counter | `source` | input bytes read |
//! | `lungfish_batch_events` | histogram | `stage` | events (rows) per batch |
//! | `lungfish_log_end_offset` | gauge | `partition` | durable end of each log partition |
//! | `lungfish_log_bytes` | gauge | `partition` | bytes of each log partition |
//! | `lungfish_consumer_offset` | gauge | `partition` | next offset the consumer reads |
//! | `lungfish_consumer_lag` | gauge | `partition` | records between the consumer's committed offset and the log's end (every 100 ms, also while the consumer waits) |
//! | `lungfish_late_events_total` | counter | | late events sent to the dead-letter queue |
//! | `lungfish_queue_bytes` | gauge | `stage` | bytes of batches waiting for a stage: `shards` (micro-batches from the consumers), `sinks` (rows from the shards, until every sink wrote them); at most their share of `memory_limit` |
//! | `lungfish_queue_waits_total` | counter | `stage` | times the stage before waited for room in that queue (backpressure in bytes) |
//! | `lungfish_state_bytes` | gauge | `shard` | bytes of open window state a shard holds |
//! | `lungfish_windows_emitted_total` | counter | | window rows emitted by shards (corrections included) |
//! | `lungfish_window_corrections_total` | counter | | rows emitted again because late events within `allowed_lateness` changed a fired window |
//! | `lungfish_duplicates_dropped_total` | counter | | events dropped because their id was seen within `dedup_horizon` |
//! | `lungfish_idle_advances_total` | counter | | times an idle partition's watermark followed the busy partitions' (`idle_timeout`) |
//! | `lungfish_hot_keys` | gauge | `partition` | keys pre-aggregated in the consumer (the first stage), at the last review |
//! | `lungfish_hot_key_share` | gauge | `partition`, `rank` | share of the partition's events on its heaviest keys, ranks 1 to 3 (names in the run summary) |
//! | `lungfish_sink_write_seconds` | histogram | `sink` | duration of one sink batch write |
//! | `lungfish_sink_rows_total` | counter | `sink` | rows durably written |
//! | `lungfish_sink_errors_total` | counter | `sink` | failed write attempts |
//! | `lungfish_sink_retries_total` | counter | `sink` | retries of failed writes (inside the retry budget) |
//! | `lungfish_sink_retry_budget_exhausted_total` | counter | `sink` | failures not retried because the budget was spent |
//! | `lungfish_breaker_state` | gauge | `component` | 0 closed, 1 half-open, 2 open |
//! | `lungfish_http_responses_total` | counter | `source`, `status` | HTTP source answers by status code |
//! | `lungfish_http_connections_refused_total` | counter | `source` | connections over `max_connections` |
//! | `lungfish_http_idempotency_evicted_total` | counter | | idempotency answers forgotten before their horizon (over `idempotency_max_keys`) |
//! | `lungfish_concurrency_limit` | gauge | `component` | an adaptive concurrency limit: `enrich:NAME` (an enrichment client's calls in flight), `sink:NAME` (connections loading a Postgres sink's batch) |
//! | `lungfish_enrich_cache_hits_total` | counter | `operator` | distinct keys of an enrichment lookup answered from the cache |
//! | `lungfish_enrich_cache_misses_total` | counter | `operator` | distinct keys of an enrichment lookup not in the cache |
//! | `lungfish_enrich_calls_total` | counter | `operator`, `outcome` | calls to the enrichment service: `ok`, `failed`, `bad_answer`, `refused`, or `circuit_open` (not made) |
//! | `lungfish_enrich_retries_total` | counter | `operator` | retries of failed enrichment calls (inside the retry budget) |
//! | `lungfish_enrich_concurrency_limit` | gauge | `operator` | the enrichment client's adaptive concurrency limit |
//! | `lungfish_enrich_breaker_state` | gauge | `operator` | the enrichment breaker: 0 closed, 1 half-open, 2 open |
//! | `lungfish_operator_events_total` | counter | `operator`, `outcome` | events an operator worked on: `passed`, `dropped` (a filter), `failed` (dead-lettered) |
//! | `lungfish_operator_retries_total` | counter | | events retried by the operator chains after a transient failure |
//! | `lungfish_operator_panics_total` | counter | `operator` | operator calls that panicked (caught; the batch is bisected to the poison pill) |
//! | `lungfish_operator_retry_budget_remaining` | gauge | | retries the operators' shared budget still allows |
//! | `lungfish_kafka_messages_total` | counter | | messages the Kafka source took from its topics |
//! | `lungfish_kafka_partitions` | gauge | | partitions of the topics this instance holds |
//! | `lungfish_kafka_paused` | gauge | | 1 while the held partitions are paused because the shards' queues are full |
//! | `lungfish_kafka_pauses_total` | counter | | times the partitions were paused |
//! | `lungfish_kafka_rebalances_total` | counter | `kind` | partitions `assign`ed to or `revoke`d from this instance |
//! | `lungfish_kafka_poll_gap_seconds` | histogram | | time between two polls of the Kafka consumer (stays short while the sinks stall) |
//! | `lungfish_kafka_commit_failures_total` | counter | | offset commits the group refused (retried with the next commit) |
//! | `lungfish_kafka_errors_total` | counter | | errors the Kafka consumer reported (logged; a fatal one stops the run) |
//! | `lungfish_kafka_produced_total` | counter | `sink` | messages a Kafka sink produced with a successful delivery report |
//! | `lungfish_kafka_produced_bytes_total` | counter | `sink` | key and value bytes of a Kafka sink's written batches |
//! | `lungfish_kafka_write_errors_total` | counter | `sink`, `error` | a Kafka sink's failed writes, by librdkafka error (`MessageTimedOut`, `TopicAuthorizationFailed`...) or `write_timeout` |
//! | `lungfish_kafka_queue_full_total` | counter | `sink` | times a Kafka sink waited for room in librdkafka's queue |
//!
//! Stages: `source` (lines in, events appended out), `consumer` (records read in,
//! events routed to shards out; the difference is late or skipped events), `window`
//! (events aggregated in, rows emitted out), `sink` (rows received in, rows written out).

/// Counts events through `stage`: `events_in` received, `events_out` passed on.
pub fn stage(stage: &'static str, events_in: u64, events_out: u64) {
    metrics::counter!("lungfish_stage_events_in_total", "stage" => stage).increment(events_in);
    metrics::counter!("lungfish_stage_events_out_total", "stage" => stage).increment(events_out);
}

/// Records the size of one batch handled by `stage`.
pub fn batch_size(stage: &'static str, events: u64) {
    metrics::histogram!("lungfish_batch_events", "stage" => stage).record(events as f64);
}
