//! [`Quantiles`]: a DDSketch (Masson, Rim, Lee, VLDB 2019) with a bounded number of bins.
//!
//! A value `x > 0` goes to bin `i = ceil(ln x / ln gamma)`, `gamma = (1 + a) / (1 - a)`,
//! whose representative `2 gamma^i / (gamma + 1)` is within relative error `a` of every
//! value of the bin; negative values go to a second store by `|x|`, zeros (and values
//! below `f64::MIN_POSITIVE` in magnitude) to a zero count. Each store is a contiguous
//! `Vec<u64>` of counts with an offset, growing both ways.
//!
//! At most `max_bins` bins are kept in all, collapsing the *lowest values* first (the
//! paper's collapsing-lowest store, generalised to both signs): when the positive bins
//! span `max_bins` or more, every lower bin (smaller positives, zero, negatives) is
//! folded into the lowest kept positive bin; otherwise the most negative bins are folded
//! into the lowest kept negative bin so that negative and positive bins together span
//! at most `max_bins`. With the default accuracy and 2048 bins one sign spans a factor
//! of about `e^41` (4e17) before anything collapses.
//!
//! Counts are integers and what is collapsed depends only on the extreme bins of the
//! data, so the state depends only on the multiset of values: order-independent and
//! merge-exact.

use super::wire;

/// Values smaller than this in magnitude count as zero.
const MIN_INDEXABLE: f64 = f64::MIN_POSITIVE;

/// Quantiles with relative error (DDSketch), mergeable and bounded in memory.
///
/// Guarantee: for `n` values (NaN and infinities ignored) and the rank-based
/// q-quantile `x = sorted[floor(q (n - 1))]`, [`quantile`](Self::quantile) returns `v`
/// with `|v - x| <= alpha |x|`, provided `x` lies above the collapsed range (nothing
/// is collapsed until the bins would exceed `max_bins`) and `|x|` is zero or at least
/// `f64::MIN_POSITIVE`. `min`, `max` and `count` are exact; the 0- and 1-quantiles are
/// the exact min and max, and every answer lies within `[min, max]`.
///
/// Memory: 8 bytes per bin spanned between the smallest and largest magnitude of each
/// sign (`ln(max / min) / (2 alpha)` bins, about 460 bins = 3.7 KiB for values from 1 to
/// 10^4 at 1%), never more than `8 (3 max_bins + 16)` bytes (48 KiB by default; each
/// sign's vector is at most half as long again as its span), plus the struct.
///
/// `==` compares the logical state: a sketch built from `a ∪ b` in one go equals the
/// merge of the sketches of `a` and `b`, whatever the order.
#[derive(Debug, Clone)]
///
/// ```
/// use lungfish::sketch::Quantiles;
///
/// let mut latencies = Quantiles::new(0.01);
/// for ms in 1..=1000 {
///     latencies.add(ms as f64);
/// }
/// let p99 = latencies.quantile(0.99).unwrap();
/// assert!((p99 - 990.0).abs() <= 0.01 * 990.0, "{p99}");
/// ```
pub struct Quantiles {
    alpha: f64,
    max_bins: u32,
    ln_gamma: f64,
    inv_ln_gamma: f64,
    /// `2 / (gamma + 1)`: a bin's representative is this times `gamma^i`.
    rep_factor: f64,
    pos: Store,
    neg: Store,
    zero: u64,
    count: u64,
    min: f64,
    max: f64,
}

impl PartialEq for Quantiles {
    fn eq(&self, other: &Self) -> bool {
        self.alpha == other.alpha
            && self.max_bins == other.max_bins
            && self.count == other.count
            && self.zero == other.zero
            && (self.count == 0 || (self.min == other.min && self.max == other.max))
            && self.pos == other.pos
            && self.neg == other.neg
    }
}

impl Default for Quantiles {
    fn default() -> Self {
        Quantiles::new(Quantiles::DEFAULT_RELATIVE_ACCURACY)
    }
}

impl Quantiles {
    /// The default relative accuracy: 1%.
    pub const DEFAULT_RELATIVE_ACCURACY: f64 = 0.01;
    /// The default bound on the number of bins.
    pub const DEFAULT_MAX_BINS: u32 = 2048;
    /// The smallest bound on the number of bins accepted (smaller is raised to it).
    pub const MIN_MAX_BINS: u32 = 8;

    /// An empty sketch with relative accuracy `relative_accuracy` (clamped to
    /// `[1e-5, 0.5]`) and at most [`DEFAULT_MAX_BINS`](Self::DEFAULT_MAX_BINS) bins.
    pub fn new(relative_accuracy: f64) -> Self {
        Self::with_max_bins(relative_accuracy, Self::DEFAULT_MAX_BINS)
    }

    /// An empty sketch with relative accuracy `relative_accuracy` (clamped to
    /// `[1e-5, 0.5]`; NaN means the default) and at most `max_bins` bins (at least 8).
    pub fn with_max_bins(relative_accuracy: f64, max_bins: u32) -> Self {
        let alpha = if relative_accuracy.is_nan() {
            Self::DEFAULT_RELATIVE_ACCURACY
        } else {
            relative_accuracy.clamp(1e-5, 0.5)
        };
        // A hair tighter inside, so floating-point rounding of the logarithms can never
        // push an answer past `alpha`.
        let a = alpha * (1.0 - 1e-6);
        let gamma = (1.0 + a) / (1.0 - a);
        let ln_gamma = gamma.ln();
        Quantiles {
            alpha,
            max_bins: max_bins.max(Self::MIN_MAX_BINS),
            ln_gamma,
            inv_ln_gamma: 1.0 / ln_gamma,
            rep_factor: 2.0 / (gamma + 1.0),
            pos: Store::default(),
            neg: Store::default(),
            zero: 0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// The relative accuracy `alpha` the answers are guaranteed to.
    pub fn relative_accuracy(&self) -> f64 {
        self.alpha
    }

    /// The bound on the number of bins.
    pub fn max_bins(&self) -> u32 {
        self.max_bins
    }

    /// Adds a value. NaN and infinities are ignored (they have no bin and would make
    /// `min`/`max` meaningless); `-0.0` counts as `0.0`.
    pub fn add(&mut self, x: f64) {
        self.add_n(x, 1);
    }

    /// Adds `n` copies of a value (as `n` calls of [`add`](Self::add)).
    pub fn add_n(&mut self, x: f64, n: u64) {
        if !x.is_finite() || n == 0 {
            return;
        }
        let x = if x == 0.0 { 0.0 } else { x };
        self.count += n;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if x.abs() < MIN_INDEXABLE {
            self.insert_zero(n);
        } else if x > 0.0 {
            self.insert_pos(self.index(x), n);
        } else {
            self.insert_neg(self.index(-x), n);
        }
    }

    fn index(&self, magnitude: f64) -> i32 {
        (magnitude.ln() * self.inv_ln_gamma).ceil() as i32
    }

    fn representative(&self, i: i32) -> f64 {
        (f64::from(i) * self.ln_gamma).exp() * self.rep_factor
    }

    fn pos_full(&self) -> bool {
        self.pos.width() >= i64::from(self.max_bins)
    }

    fn insert_zero(&mut self, n: u64) {
        if self.pos_full() {
            self.pos.add(self.pos.lo, n);
        } else {
            self.zero += n;
        }
    }

    fn insert_pos(&mut self, i: i32, n: u64) {
        let max_bins = i64::from(self.max_bins);
        let (lo, hi) = self.pos.span_with(i);
        if i64::from(hi) - i64::from(lo) + 1 >= max_bins {
            let l = (i64::from(hi) - max_bins + 1) as i32;
            self.pos.collapse_below(l);
            self.pos.add(i.max(l), n);
            let folded = self.neg.take_all() + std::mem::take(&mut self.zero);
            if folded > 0 {
                self.pos.add(l, folded);
            }
            return;
        }
        self.pos.add(i, n);
        let room = max_bins - self.pos.width();
        if self.neg.width() > room {
            self.neg
                .collapse_above((i64::from(self.neg.lo) + room - 1) as i32);
        }
    }

    fn insert_neg(&mut self, i: i32, n: u64) {
        if self.pos_full() {
            self.pos.add(self.pos.lo, n);
            return;
        }
        let room = i64::from(self.max_bins) - self.pos.width();
        let (lo, hi) = self.neg.span_with(i);
        if i64::from(hi) - i64::from(lo) + 1 > room {
            let h = (i64::from(lo) + room - 1) as i32;
            self.neg.collapse_above(h);
            self.neg.add(i.min(h), n);
        } else {
            self.neg.add(i, n);
        }
    }

    /// The number of values added (NaN and infinities not counted).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether no value has been added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The smallest value added, exactly; `None` when empty.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// The largest value added, exactly; `None` when empty.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// The q-quantile (`q` clamped to `[0, 1]`): an approximation of the value of rank
    /// `floor(q (n - 1))` in sorted order, within the relative accuracy (see the type).
    /// `None` when empty or `q` is NaN.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * (self.count - 1) as f64).floor() as u64).min(self.count - 1);
        if rank == 0 {
            return Some(self.min);
        }
        if rank == self.count - 1 {
            return Some(self.max);
        }
        let clamp = |v: f64| v.clamp(self.min, self.max);
        let mut seen = 0u64;
        if let Some(bins) = self.neg.bins_slice() {
            for (k, &c) in bins.iter().enumerate().rev() {
                seen += c;
                if seen > rank {
                    return Some(clamp(-self.representative(self.neg.lo + k as i32)));
                }
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(clamp(0.0));
        }
        if let Some(bins) = self.pos.bins_slice() {
            for (k, &c) in bins.iter().enumerate() {
                seen += c;
                if seen > rank {
                    return Some(clamp(self.representative(self.pos.lo + k as i32)));
                }
            }
        }
        Some(self.max)
    }

    /// Adds everything `other` holds: afterwards `self` equals the sketch of both
    /// streams built in one go.
    ///
    /// # Panics
    /// If the relative accuracy or the bin bound differ.
    pub fn merge(&mut self, other: &Self) {
        assert!(
            self.alpha == other.alpha && self.max_bins == other.max_bins,
            "merging DDSketches of different accuracy or bin bound"
        );
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.zero > 0 {
            self.insert_zero(other.zero);
        }
        if let Some(bins) = other.neg.bins_slice() {
            for (k, &c) in bins.iter().enumerate() {
                if c > 0 {
                    self.insert_neg(other.neg.lo + k as i32, c);
                }
            }
        }
        if let Some(bins) = other.pos.bins_slice() {
            // From the top, so a collapse happens at most once per merge.
            for (k, &c) in bins.iter().enumerate().rev() {
                if c > 0 {
                    self.insert_pos(other.pos.lo + k as i32, c);
                }
            }
        }
    }

    /// Bytes held on the heap (the struct itself not included).
    pub fn heap_bytes(&self) -> usize {
        (self.pos.bins.capacity() + self.neg.bins.capacity()) * 8
    }

    /// Appends the sketch's encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        wire::put_f64(out, self.alpha);
        wire::put_varint(out, u64::from(self.max_bins));
        wire::put_varint(out, self.count);
        wire::put_varint(out, self.zero);
        wire::put_f64(out, self.min);
        wire::put_f64(out, self.max);
        self.pos.encode(out);
        self.neg.encode(out);
    }

    /// Reads a sketch written by [`encode`](Self::encode), advancing `input` past it;
    /// `None` if the bytes are malformed.
    pub fn decode(input: &mut &[u8]) -> Option<Self> {
        if wire::get_u8(input)? != 1 {
            return None;
        }
        let alpha = wire::get_f64(input)?;
        let max_bins = u32::try_from(wire::get_varint(input)?).ok()?;
        if !(1e-5..=0.5).contains(&alpha) || max_bins < Self::MIN_MAX_BINS {
            return None;
        }
        let mut q = Quantiles::with_max_bins(alpha, max_bins);
        q.count = wire::get_varint(input)?;
        q.zero = wire::get_varint(input)?;
        q.min = wire::get_f64(input)?;
        q.max = wire::get_f64(input)?;
        q.pos = Store::decode(input)?;
        q.neg = Store::decode(input)?;
        let total = q.pos.total.checked_add(q.neg.total)?.checked_add(q.zero)?;
        let budget = i64::from(max_bins);
        let valid = total == q.count
            && q.pos.width() + q.neg.width() <= budget
            && (q.count == 0 || (q.min.is_finite() && q.max.is_finite() && q.min <= q.max))
            && (!q.pos_full() || (q.neg.total == 0 && q.zero == 0));
        valid.then_some(q)
    }
}

/// Counts of a contiguous run of bin indexes.
#[derive(Debug, Clone, Default)]
struct Store {
    /// `bins[k]` counts index `offset + k`; may extend past `lo..=hi` with zeros.
    bins: Vec<u64>,
    offset: i32,
    /// The lowest and highest index with a nonzero count (when `total > 0`).
    lo: i32,
    hi: i32,
    total: u64,
}

impl PartialEq for Store {
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total
            && (self.total == 0 || (self.lo == other.lo && self.bins_slice() == other.bins_slice()))
    }
}

impl Store {
    /// Number of indexes from the lowest to the highest occupied, 0 when empty.
    fn width(&self) -> i64 {
        if self.total == 0 {
            0
        } else {
            i64::from(self.hi) - i64::from(self.lo) + 1
        }
    }

    /// `lo..=hi` extended to include `i`.
    fn span_with(&self, i: i32) -> (i32, i32) {
        if self.total == 0 {
            (i, i)
        } else {
            (self.lo.min(i), self.hi.max(i))
        }
    }

    /// The counts of `lo..=hi`.
    fn bins_slice(&self) -> Option<&[u64]> {
        if self.total == 0 {
            return None;
        }
        let a = (self.lo - self.offset) as usize;
        let b = (self.hi - self.offset) as usize;
        Some(&self.bins[a..=b])
    }

    fn add(&mut self, i: i32, n: u64) {
        if n == 0 {
            return;
        }
        self.ensure(i);
        self.bins[(i - self.offset) as usize] += n;
        (self.lo, self.hi) = self.span_with(i);
        self.total += n;
    }

    /// Makes `bins` cover index `i`, keeping `lo..=hi`: shifts in place when the
    /// vector is long enough, else reallocates with half as much again of room on the
    /// side it grows to.
    fn ensure(&mut self, i: i32) {
        let len = self.bins.len() as i64;
        let rel = i64::from(i) - i64::from(self.offset);
        if rel >= 0 && rel < len {
            return;
        }
        if self.total == 0 {
            if self.bins.is_empty() {
                self.bins = vec![0; 16];
            }
            self.offset = (i64::from(i) - (self.bins.len() as i64) / 2) as i32;
            return;
        }
        let (lo, hi) = self.span_with(i);
        let width = i64::from(hi) - i64::from(lo) + 1;
        let down = i < self.lo;
        let old_start = (self.lo - self.offset) as usize;
        let old_width = self.width() as usize;
        if width <= len {
            let new_offset = if down {
                i64::from(hi) - len + 1
            } else {
                i64::from(lo)
            } as i32;
            let dst = (self.lo - new_offset) as usize;
            self.bins.copy_within(old_start..old_start + old_width, dst);
            self.bins[..dst].fill(0);
            self.bins[dst + old_width..].fill(0);
            self.offset = new_offset;
        } else {
            let new_len = width + width / 2 + 8;
            let new_offset = if down {
                i64::from(hi) - new_len + 1
            } else {
                i64::from(lo)
            } as i32;
            let mut bins = vec![0u64; new_len as usize];
            let dst = (self.lo - new_offset) as usize;
            bins[dst..dst + old_width]
                .copy_from_slice(&self.bins[old_start..old_start + old_width]);
            self.bins = bins;
            self.offset = new_offset;
        }
    }

    /// Folds every count below index `l` into bin `l`.
    fn collapse_below(&mut self, l: i32) {
        if self.total == 0 || self.lo >= l {
            return;
        }
        let start = (self.lo - self.offset) as usize;
        let end = ((self.hi.min(l - 1)) - self.offset) as usize;
        let folded: u64 = self.bins[start..=end].iter().sum();
        self.bins[start..=end].fill(0);
        self.total -= folded;
        if self.total == 0 {
            self.bins.fill(0);
        } else {
            self.lo = l;
        }
        self.add(l, folded);
    }

    /// Folds every count above index `h` into bin `h`.
    fn collapse_above(&mut self, h: i32) {
        if self.total == 0 || self.hi <= h {
            return;
        }
        let start = ((self.lo.max(h + 1)) - self.offset) as usize;
        let end = (self.hi - self.offset) as usize;
        let folded: u64 = self.bins[start..=end].iter().sum();
        self.bins[start..=end].fill(0);
        self.total -= folded;
        if self.total == 0 {
            self.bins.fill(0);
        } else {
            self.hi = h;
        }
        self.add(h, folded);
    }

    /// Empties the store, returning its total.
    fn take_all(&mut self) -> u64 {
        if self.total > 0 {
            self.bins.fill(0);
        }
        std::mem::take(&mut self.total)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self.bins_slice() {
            None => wire::put_varint(out, 0),
            Some(bins) => {
                wire::put_varint(out, bins.len() as u64);
                wire::put_ivarint(out, i64::from(self.lo));
                for &c in bins {
                    wire::put_varint(out, c);
                }
            }
        }
    }

    fn decode(input: &mut &[u8]) -> Option<Store> {
        let width = usize::try_from(wire::get_varint(input)?).ok()?;
        let mut s = Store::default();
        if width == 0 {
            return Some(s);
        }
        if input.len() < width {
            return None;
        }
        let lo = i32::try_from(wire::get_ivarint(input)?).ok()?;
        let hi = lo.checked_add(i32::try_from(width - 1).ok()?)?;
        let mut bins = Vec::with_capacity(width);
        let mut total = 0u64;
        for _ in 0..width {
            let c = wire::get_varint(input)?;
            total = total.checked_add(c)?;
            bins.push(c);
        }
        if bins[0] == 0 || bins[width - 1] == 0 {
            return None;
        }
        s.bins = bins;
        s.offset = lo;
        s.lo = lo;
        s.hi = hi;
        s.total = total;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::TestRng;
    use proptest::prelude::*;

    const QS: [f64; 9] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0];

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn check(values: &[f64], alpha: f64, max_bins: u32) -> Quantiles {
        let mut s = Quantiles::with_max_bins(alpha, max_bins);
        for &v in values {
            s.add(v);
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(s.count(), values.len() as u64);
        assert_eq!(s.min(), sorted.first().copied());
        assert_eq!(s.max(), sorted.last().copied());
        for q in QS {
            let x = exact(&sorted, q);
            let v = s.quantile(q).unwrap();
            assert!(
                (v - x).abs() <= alpha * x.abs(),
                "q = {q}: {v} vs exact {x} (alpha {alpha})"
            );
        }
        s
    }

    fn round_trip(s: &Quantiles) {
        let mut out = vec![7u8];
        s.encode(&mut out);
        out.push(9);
        let mut input = &out[1..];
        let back = Quantiles::decode(&mut input).unwrap();
        assert_eq!(&back, s);
        assert_eq!(input, &[9]);
        for q in QS {
            assert_eq!(back.quantile(q), s.quantile(q));
        }
        let len = out.len() - 2;
        for cut in (0..len).filter(|c| *c < 64 || c % (len / 64 + 1) == 0 || *c + 64 > len) {
            assert!(Quantiles::decode(&mut &out[1..1 + cut]).is_none());
        }
    }

    #[test]
    fn within_relative_accuracy_on_many_distributions() {
        let mut rng = TestRng(1);
        let n = 20_000;
        let dists: Vec<(&str, Vec<f64>)> = vec![
            ("uniform", (0..n).map(|_| rng.unit() * 1000.0).collect()),
            (
                "lognormal",
                (0..n).map(|_| (rng.normal() * 2.0).exp()).collect(),
            ),
            (
                "negative",
                (0..n).map(|_| -(rng.normal() * 3.0).exp()).collect(),
            ),
            ("mixed", (0..n).map(|_| rng.normal() * 100.0).collect()),
            (
                "duplicates",
                (0..n).map(|_| (rng.below(5) as f64) - 2.0).collect(),
            ),
            (
                "tiny and huge",
                (0..n)
                    .map(|_| {
                        (rng.normal() * 100.0).exp() * if rng.below(2) == 0 { 1.0 } else { -1.0 }
                    })
                    .collect(),
            ),
            ("one value", vec![42.5; 100]),
            ("single", vec![-3.0]),
        ];
        for (name, values) in &dists {
            for alpha in [0.01, 0.05, 0.001] {
                // Enough bins that nothing collapses (the wide ones span ~40000).
                let s = check(values, alpha, 1 << 20);
                round_trip(&s);
                if *name != "tiny and huge" && alpha >= 0.01 {
                    // Nor with the default bound.
                    let d = check(values, alpha, Quantiles::DEFAULT_MAX_BINS);
                    for q in QS {
                        assert_eq!(d.quantile(q), s.quantile(q), "{name}");
                    }
                    assert!(d.heap_bytes() <= 8 * (3 * 2048 + 16), "{name}");
                }
            }
        }
    }

    #[test]
    fn nan_and_infinities_are_ignored() {
        let mut s = Quantiles::default();
        assert_eq!(s.quantile(0.5), None);
        assert_eq!(s.min(), None);
        s.add(f64::NAN);
        s.add(f64::INFINITY);
        s.add(f64::NEG_INFINITY);
        assert!(s.is_empty());
        s.add(-0.0);
        s.add(0.0);
        s.add(5.0);
        assert_eq!(s.count(), 3);
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert_eq!(s.quantile(-1.0), Some(0.0));
        assert_eq!(s.quantile(7.0), Some(5.0));
        assert_eq!(s.quantile(f64::NAN), None);
        assert!(s.min().unwrap().is_sign_positive());
    }

    #[test]
    fn collapse_keeps_high_quantiles_within_accuracy() {
        // 512 bins at 1% span a factor e^10.2; these positive values span about e^17,
        // so the lowest positives, the zero and the negatives collapse, the top stays.
        let mut rng = TestRng(2);
        let alpha = 0.01;
        let mut s = Quantiles::with_max_bins(alpha, 512);
        let mut values: Vec<f64> = (0..50_000)
            .map(|_| (rng.normal() * 2.0).exp() * if rng.below(10) == 0 { -1.0 } else { 1.0 })
            .collect();
        values.push(0.0);
        for &v in &values {
            s.add(v);
        }
        assert_eq!(s.pos.width(), 512);
        assert_eq!(
            (s.neg.total, s.zero),
            (0, 0),
            "folded into the lowest positive bin"
        );
        assert!(s.heap_bytes() <= 8 * (3 * 512 + 16));
        values.sort_by(f64::total_cmp);
        let top = s.representative(s.pos.lo);
        for q in [0.5, 0.75, 0.9, 0.99, 0.999, 1.0] {
            let x = exact(&values, q);
            assert!(x > top, "q = {q} should be above the collapsed range");
            let v = s.quantile(q).unwrap();
            assert!((v - x).abs() <= alpha * x.abs(), "q = {q}: {v} vs {x}");
        }
        // Below it, answers are the collapsed bin's (no accuracy promised).
        let x = exact(&values, 0.05);
        assert!(x < 0.0 && s.quantile(0.05).unwrap() > 0.0);
        // The low end is collapsed (an answer, but not within accuracy).
        assert_eq!(s.quantile(0.0), Some(values[0]));
        round_trip(&s);

        // Only negatives: the most negative collapse; quantiles above stay accurate.
        let mut s = Quantiles::with_max_bins(alpha, 512);
        let mut neg: Vec<f64> = (0..50_000).map(|_| -(rng.normal() * 2.0).exp()).collect();
        for &v in &neg {
            s.add(v);
        }
        assert_eq!(s.neg.width(), 512);
        neg.sort_by(f64::total_cmp);
        let x = exact(&neg, 0.01);
        assert!((s.quantile(0.01).unwrap() - x).abs() > alpha * x.abs());
        for q in [0.5, 0.9, 0.99, 1.0] {
            let x = exact(&neg, q);
            let v = s.quantile(q).unwrap();
            assert!((v - x).abs() <= alpha * x.abs(), "q = {q}: {v} vs {x}");
        }
    }

    #[test]
    fn memory_stays_bounded_on_a_sliding_range() {
        let mut s = Quantiles::with_max_bins(0.01, 256);
        let mut x = 1e-300;
        for _ in 0..200_000 {
            s.add(x);
            s.add(-x);
            x *= 1.003;
        }
        assert!(s.pos.width() + s.neg.width() <= 256);
        assert!(s.heap_bytes() <= 8 * (3 * 256 + 16), "{}", s.heap_bytes());
    }

    fn arb_values() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(
            prop_oneof![
                (-1e6f64..1e6),
                (0.001f64..10.0),
                (-20.0f64..20.0).prop_map(|e| e.exp()),
                (-20.0f64..20.0).prop_map(|e| -(e.exp())),
                Just(0.0),
                (0u8..4).prop_map(f64::from),
            ],
            0..400,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn merge_equals_one_go_and_order_does_not_matter(
            a in arb_values(),
            b in arb_values(),
            max_bins in prop_oneof![Just(8u32), Just(16), Just(64), Just(2048)],
        ) {
            let build = |vals: &[f64]| {
                let mut s = Quantiles::with_max_bins(0.02, max_bins);
                for &v in vals {
                    s.add(v);
                }
                s
            };
            let mut all = a.clone();
            all.extend_from_slice(&b);
            let one_go = build(&all);
            let mut m = build(&a);
            m.merge(&build(&b));
            prop_assert_eq!(&m, &one_go);
            let mut m = build(&b);
            m.merge(&build(&a));
            prop_assert_eq!(&m, &one_go);
            let mut sorted = all.clone();
            sorted.sort_by(f64::total_cmp);
            prop_assert_eq!(&build(&sorted), &one_go);
            sorted.reverse();
            prop_assert_eq!(&build(&sorted), &one_go);
            let mut pieces = Quantiles::with_max_bins(0.02, max_bins);
            for chunk in all.chunks(37) {
                pieces.merge(&build(chunk));
            }
            prop_assert_eq!(&pieces, &one_go);
            prop_assert!(one_go.pos.width() + one_go.neg.width() <= i64::from(max_bins));
            round_trip(&one_go);
            if max_bins == 2048 && !all.is_empty() {
                check(&all, 0.02, 2048);
            }
        }
    }

    #[test]
    fn decode_rejects_malformed() {
        assert!(Quantiles::decode(&mut &[][..]).is_none());
        let mut s = Quantiles::default();
        s.add(3.0);
        s.add(-1.0);
        let mut out = Vec::new();
        s.encode(&mut out);
        let mut bad = out.clone();
        bad[0] = 2;
        assert!(Quantiles::decode(&mut &bad[..]).is_none());
        // Change the count: totals no longer agree.
        let mut bad = out.clone();
        bad[1 + 8 + 2] = 3;
        assert!(Quantiles::decode(&mut &bad[..]).is_none());
        assert!(Quantiles::decode(&mut &out[..]).is_some());
    }

    #[test]
    #[should_panic(expected = "different accuracy")]
    fn merge_of_different_accuracy_panics() {
        let mut a = Quantiles::new(0.01);
        a.merge(&Quantiles::new(0.02));
    }
}
