//! Small, mergeable summaries of a stream, for windowed aggregates.
//!
//! Each sketch is a plain value: no threads, no clocks, no allocation per update on its
//! hot path (amortised growth only), and an `encode`/`decode` pair for state
//! checkpoints. The sketches whose state is made of integers ([`Distinct`],
//! [`Quantiles`]) are *order-independent and merge-exact*: building a sketch from
//! `a ∪ b` in one go gives a value `==` to merging the sketches of `a` and `b`, in any
//! order, so two-stage aggregation (per shard, then across shards) gives exactly the
//! same answer as one stage.
//!
//! | sketch | answers | error |
//! |---|---|---|
//! | [`Distinct`] (HyperLogLog) | number of distinct values | exact-ish while sparse (up to `2^p / 4` distinct hashes); then standard error `1.04 / sqrt(2^p)`, 1.6% at the default `p = 12` |
//! | [`Quantiles`] (DDSketch) | the q-quantile, min, max, count | relative: `\|v - x\| <= alpha * \|x\|` for the rank-`floor(q (n - 1))` value `x` (alpha 1% by default), for quantiles above any collapsed range |
//! | [`HeavyHitters`] (Space-Saving) | the top keys by weight | `count - error <= true <= count`; every key over `total / capacity` is listed |
//! | [`DecayedMean`] | mean weighted by `2^(-age / half_life)` in event time | floating-point rounding only (order-independent to ~1e-12 relative) |
//!
//! Dedup of event ids within an event-time horizon is in [`crate::dedup`].
//!
//! Callers hash values themselves (a 64-bit hash that looks uniform, such as xxh3);
//! [`hash_f64`] is the hash of a number that treats `-0.0` as `0.0` and every NaN alike.

mod decay;
mod heavy;
mod hll;
mod quantile;

pub use decay::DecayedMean;
pub use heavy::{HeavyHitter, HeavyHitters};
pub use hll::{Distinct, hash_f64};
pub use quantile::Quantiles;

/// Little helpers for the sketches' byte encodings (LEB128 varints, zigzag, LE floats).
pub(crate) mod wire {
    /// Appends `v` as a LEB128 varint.
    pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Reads a LEB128 varint, advancing `input`; `None` if truncated or over 64 bits.
    pub(crate) fn get_varint(input: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = input.split_first()?;
            *input = rest;
            if i == 9 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// Appends a signed value zigzag-encoded as a varint.
    pub(crate) fn put_ivarint(out: &mut Vec<u8>, v: i64) {
        put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
    }

    /// Reads a zigzag varint.
    pub(crate) fn get_ivarint(input: &mut &[u8]) -> Option<i64> {
        let u = get_varint(input)?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// Reads one byte.
    pub(crate) fn get_u8(input: &mut &[u8]) -> Option<u8> {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        Some(b)
    }

    /// Reads `n` bytes.
    pub(crate) fn get_bytes<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if input.len() < n {
            return None;
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Some(head)
    }

    /// Appends a little-endian u64.
    pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// Reads a little-endian u64.
    pub(crate) fn get_u64(input: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(get_bytes(input, 8)?.try_into().ok()?))
    }

    /// Appends an f64's bits.
    pub(crate) fn put_f64(out: &mut Vec<u8>, v: f64) {
        put_u64(out, v.to_bits());
    }

    /// Reads an f64's bits.
    pub(crate) fn get_f64(input: &mut &[u8]) -> Option<f64> {
        get_u64(input).map(f64::from_bits)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn varints_round_trip() {
            let mut out = Vec::new();
            let vals = [0u64, 1, 127, 128, 300, u64::MAX >> 1, u64::MAX];
            for v in vals {
                put_varint(&mut out, v);
            }
            for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
                put_ivarint(&mut out, v);
            }
            let mut input = &out[..];
            for v in vals {
                assert_eq!(get_varint(&mut input), Some(v));
            }
            for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
                assert_eq!(get_ivarint(&mut input), Some(v));
            }
            assert!(input.is_empty());
            assert_eq!(get_varint(&mut &[0x80u8][..]), None);
            assert_eq!(get_varint(&mut &[0xffu8; 10][..]), None);
        }
    }
}

/// A small deterministic generator for the sketches' tests (splitmix64).
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box-Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}
