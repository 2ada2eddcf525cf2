//! [`DecayedMean`]: an exponentially weighted mean over event time, with a half-life.

use super::wire;

/// A mean in which each value counts `2^(-(T - t) / h)`, with `t` its event time, `T`
/// the latest event time seen and `h` the half-life:
/// `value = Σ x_i 2^(-(T - t_i)/h) / Σ 2^(-(T - t_i)/h)`.
///
/// State: the weighted sum and total weight, both scaled to `T`, and `T`. When `T`
/// moves forward both are rescaled, so the newest value always has weight 1 and weights
/// of values far older than `T` underflow to 0 (never NaN or infinity; the total weight
/// is at least 1 once anything was added). The result does not depend on the order of
/// adds and merges except for floating-point rounding (relative differences of order
/// 1e-15 per operation). Memory: the 24-byte struct, nothing on the heap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecayedMean {
    sum: f64,
    weight: f64,
    /// The latest event time seen (`i64::MIN` while empty).
    latest: i64,
}

impl Default for DecayedMean {
    fn default() -> Self {
        Self::new()
    }
}

/// `2^(-age / half_life)`, for `age >= 0`.
fn decay_factor(age: i64, half_life_ms: i64) -> f64 {
    let h = half_life_ms.max(1) as f64;
    (-(age as f64) / h).exp2()
}

impl DecayedMean {
    /// An empty mean.
    pub const fn new() -> Self {
        DecayedMean {
            sum: 0.0,
            weight: 0.0,
            latest: i64::MIN,
        }
    }

    /// Whether nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.weight == 0.0
    }

    /// Adds value `x` at event time `t_ms`, with half-life `half_life_ms` (at least 1 ms;
    /// use the same half-life for every call on one mean). Non-finite `x` is ignored.
    pub fn add(&mut self, x: f64, t_ms: i64, half_life_ms: i64) {
        if !x.is_finite() {
            return;
        }
        if self.is_empty() {
            *self = DecayedMean {
                sum: x,
                weight: 1.0,
                latest: t_ms,
            };
        } else if t_ms > self.latest {
            let f = decay_factor(
                t_ms.abs_diff(self.latest).min(i64::MAX as u64) as i64,
                half_life_ms,
            );
            self.sum = self.sum * f + x;
            self.weight = self.weight * f + 1.0;
            self.latest = t_ms;
        } else {
            let f = decay_factor(
                self.latest.abs_diff(t_ms).min(i64::MAX as u64) as i64,
                half_life_ms,
            );
            self.sum += x * f;
            self.weight += f;
        }
    }

    /// Adds `other` (same half-life): both are rescaled to the later of their latest
    /// event times and summed.
    pub fn merge(&mut self, other: &Self, half_life_ms: i64) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = *other;
            return;
        }
        let latest = self.latest.max(other.latest);
        let scale = |m: &Self| {
            decay_factor(
                latest.abs_diff(m.latest).min(i64::MAX as u64) as i64,
                half_life_ms,
            )
        };
        let (fa, fb) = (scale(self), scale(other));
        self.sum = self.sum * fa + other.sum * fb;
        self.weight = self.weight * fa + other.weight * fb;
        self.latest = latest;
    }

    /// The decayed mean; `None` when empty.
    pub fn value(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.sum / self.weight)
    }

    /// The latest event time seen; `None` when empty.
    pub fn latest(&self) -> Option<i64> {
        (!self.is_empty()).then_some(self.latest)
    }

    /// The total weight, scaled to the latest event time (the newest value counts 1).
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Appends the encoding (25 bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        wire::put_u64(out, self.latest as u64);
        wire::put_f64(out, self.sum);
        wire::put_f64(out, self.weight);
    }

    /// Reads a mean written by [`encode`](Self::encode), advancing `input` past it;
    /// `None` if the bytes are malformed.
    pub fn decode(input: &mut &[u8]) -> Option<Self> {
        if wire::get_u8(input)? != 1 {
            return None;
        }
        let latest = wire::get_u64(input)? as i64;
        let sum = wire::get_f64(input)?;
        let weight = wire::get_f64(input)?;
        let empty = weight == 0.0 && sum == 0.0 && latest == i64::MIN;
        let valid = empty || (sum.is_finite() && weight.is_finite() && weight >= 1.0);
        valid.then_some(DecayedMean {
            sum,
            weight,
            latest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::TestRng;

    fn direct(points: &[(f64, i64)], h: i64) -> f64 {
        let t_max = points.iter().map(|p| p.1).max().unwrap();
        let mut num = 0.0;
        let mut den = 0.0;
        for &(x, t) in points {
            let w = (-((t_max - t) as f64) / h as f64).exp2();
            num += x * w;
            den += w;
        }
        num / den
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
    }

    fn random_points(rng: &mut TestRng, n: usize, spread: u64) -> Vec<(f64, i64)> {
        (0..n)
            .map(|_| {
                (
                    rng.normal() * 10.0 + 50.0,
                    1_700_000_000_000 + rng.below(spread) as i64,
                )
            })
            .collect()
    }

    #[test]
    fn matches_the_direct_formula_in_any_order() {
        let mut rng = TestRng(3);
        for (n, spread, h) in [
            (1, 10, 1_000),
            (100, 60_000, 10_000),
            (5_000, 3_600_000, 60_000),
        ] {
            let mut points = random_points(&mut rng, n, spread);
            let expected = direct(&points, h);
            let build = |pts: &[(f64, i64)]| {
                let mut m = DecayedMean::new();
                for &(x, t) in pts {
                    m.add(x, t, h);
                }
                m
            };
            let forward = build(&points);
            assert!(
                close(forward.value().unwrap(), expected),
                "{forward:?} vs {expected}"
            );
            points.sort_by_key(|p| p.1);
            assert!(close(build(&points).value().unwrap(), expected));
            points.reverse();
            assert!(close(build(&points).value().unwrap(), expected));
            // Merge of pieces in any order.
            let mut merged = DecayedMean::new();
            for chunk in points.chunks(17) {
                merged.merge(&build(chunk), h);
            }
            assert!(close(merged.value().unwrap(), expected));
            assert_eq!(merged.latest(), points.iter().map(|p| p.1).max());
        }
    }

    #[test]
    fn half_life_halves_the_weight() {
        let mut m = DecayedMean::new();
        m.add(0.0, 0, 1_000);
        m.add(3.0, 1_000, 1_000);
        // Weights 0.5 and 1: (0 * 0.5 + 3) / 1.5.
        assert!(close(m.value().unwrap(), 2.0));
        assert!(close(m.weight(), 1.5));
    }

    #[test]
    fn huge_gaps_never_make_nan_or_infinity() {
        let mut m = DecayedMean::new();
        m.add(1e300, i64::MIN + 1, 1);
        m.add(5.0, i64::MAX, 1);
        assert_eq!(m.value(), Some(5.0));
        m.add(7.0, i64::MIN, 1);
        assert_eq!(m.value(), Some(5.0));
        let mut other = DecayedMean::new();
        other.add(9.0, 0, 1);
        let mut a = m;
        a.merge(&other, 1);
        assert_eq!(a.value(), Some(5.0));
        other.merge(&m, 1);
        assert_eq!(other.value(), Some(5.0));
        // Many old values then a jump far ahead.
        let mut m = DecayedMean::new();
        for t in 0..10_000 {
            m.add(1e10, t, 1);
        }
        m.add(2.0, 1 << 40, 1);
        assert_eq!(m.value(), Some(2.0));
        assert!(m.weight().is_finite());
        assert_eq!(DecayedMean::new().value(), None);
        m.add(f64::NAN, 1 << 41, 1);
        assert_eq!(m.value(), Some(2.0));
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut rng = TestRng(5);
        let mut m = DecayedMean::new();
        for (x, t) in random_points(&mut rng, 100, 10_000) {
            m.add(x, t, 500);
        }
        for mean in [m, DecayedMean::new()] {
            let mut out = vec![3u8];
            mean.encode(&mut out);
            out.push(4);
            let mut input = &out[1..];
            assert_eq!(DecayedMean::decode(&mut input), Some(mean));
            assert_eq!(input, &[4]);
            assert!(DecayedMean::decode(&mut &out[1..out.len() - 2]).is_none());
        }
        let mut bad = Vec::new();
        DecayedMean {
            sum: 1.0,
            weight: 0.5,
            latest: 0,
        }
        .encode(&mut bad);
        assert!(DecayedMean::decode(&mut &bad[..]).is_none());
    }
}
