//! Kafka and Redpanda: a topic read in a consumer group in place of the embedded log.
//!
//! A pipeline whose source is `type = "kafka"` has no local log: the topics'
//! partitions are shared out among the pipeline's instances by Kafka's group protocol
//! (cooperative-sticky assignment), and each instance runs, for every partition it
//! holds, the same consumer as for a log partition (`consumer::Consumer`):
//! watermark, lateness, micro-batches routed by key hash to the shards, checkpoints.
//! Nothing here is specific to a broker: it speaks plain Kafka through librdkafka, and
//! is meant for Apache Kafka and Redpanda.
//!
//! # Offsets
//!
//! A partition's offset is committed to the group only once every effect of the
//! events before it is durable in every sink, with the consumer's replay state
//! (`consumer::ReplayState`) in the commit's metadata: the same rule, and the
//! same replay, as for the embedded log. An instance that takes a partition over
//! (after a rebalance, or the death of its owner) reads from the committed offset and
//! reaches exactly the state the owner would have: windows already emitted are
//! skipped, the others are rebuilt.
//!
//! # Rebalances
//!
//! When a partition is revoked, the instance commits what is durable for it (while
//! it still owns it), drops what it had not sent to the shards, and tells the shards
//! to drop its open windows: the new owner rebuilds them. Windows it had already
//! closed were complete; the sinks upsert them, so the new owner's identical rows
//! change nothing. When a partition is assigned, its consumer starts from the
//! committed offset and state.
//!
//! # Backpressure
//!
//! The poll loop never blocks on the pipeline. When the shards' queues are full, the
//! loop pauses every partition it holds (librdkafka then stops fetching and drops what
//! it had prefetched) and keeps polling every few milliseconds, so the group never
//! sees a member that stopped polling and no rebalance follows a slow sink; it
//! resumes them once the queued batches are sent. librdkafka's own prefetch is capped
//! at a quarter of `[pipeline] memory_limit` (`queued.max.messages.kbytes`, which
//! librdkafka may overshoot by one fetch, `fetch.max.bytes`). The gap between two
//! polls is measured (`lungfish_kafka_poll_gap_seconds`).

mod source;

pub(crate) use source::{KafkaInput, KafkaInputParts};
pub use source::{KafkaReport, Topology};

/// Prefix of the offset metadata Lungfish commits with a partition's offset.
const METADATA_PREFIX: &str = "lungfish:1:";

/// The commit metadata for a consumer's encoded replay state (Kafka's metadata is a
/// string: hex of the bytes, after a prefix).
pub fn encode_metadata(state: &[u8]) -> String {
    let mut out = String::with_capacity(METADATA_PREFIX.len() + state.len() * 2);
    out.push_str(METADATA_PREFIX);
    for b in state {
        out.push(char::from_digit(u32::from(b >> 4), 16).expect("a nibble"));
        out.push(char::from_digit(u32::from(b & 15), 16).expect("a nibble"));
    }
    out
}

/// The replay-state bytes of commit metadata written by [`encode_metadata`]; `None`
/// for metadata written by anything else (or none).
pub fn decode_metadata(metadata: &str) -> Option<Vec<u8>> {
    let hex = metadata.strip_prefix(METADATA_PREFIX)?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::ReplayState;

    #[test]
    fn replay_state_round_trips_through_commit_metadata() {
        let state = ReplayState {
            max_ts: 1_700_000_000_123,
            emitted_through: -4,
            processed_through: 99,
            state_id: None,
        };
        let text = encode_metadata(&state.encode());
        assert!(text.starts_with("lungfish:1:"), "{text}");
        let bytes = decode_metadata(&text).expect("decodes");
        assert_eq!(ReplayState::decode(&bytes), Some(state));
        assert_eq!(decode_metadata(""), None);
        assert_eq!(decode_metadata("someone else's"), None);
        assert_eq!(decode_metadata("lungfish:1:abc"), None);
        assert_eq!(decode_metadata("lungfish:1:zz"), None);
    }
}
