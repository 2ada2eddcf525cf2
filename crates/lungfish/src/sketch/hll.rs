//! [`Distinct`]: a HyperLogLog approximate distinct count that starts sparse.
//!
//! A hash `h` (64 bits, uniform) goes to register `h >> (64 - p)` and sets it to at least
//! `rho`, one plus the number of leading zeros of the other `64 - p` bits. The dense
//! form is `2^p` one-byte registers.
//!
//! The sparse form keeps, per 25-bit prefix `h >> 39` seen, the largest `rho'` of the
//! remaining 39 bits, as sorted `u32` entries `prefix << 6 | rho'`. That is enough to
//! rebuild every dense register exactly (a register's `rho` is either the position of
//! the first one bit among the 25 - p prefix bits past the register index, or
//! `25 - p + rho'`), so the switch to dense loses nothing and a sketch's value depends
//! only on the *set* of hashes added: order-independent and merge-exact. The sketch
//! goes dense once it holds more than `2^p / 4` entries (4 bytes each, so never more
//! bytes than the dense form); whether it is dense is itself a function of the set.
//!
//! Estimates: sparse, linear counting over the `2^25` prefixes (exact but for prefix
//! collisions, which it corrects: well under one in error below a few thousand);
//! dense, linear counting `m ln(m / zeros)` while that is at most `2m` (where it is the
//! more accurate), else Ertl's improved raw estimator ("New cardinality estimation
//! algorithms for HyperLogLog sketches", 2017), which needs no bias tables. Standard
//! error `1.04 / sqrt(2^p)`.

use xxhash_rust::xxh3::xxh3_64;

use super::wire;

/// Bits of the sparse prefix.
const SPARSE_P: u32 = 25;
/// Bits after the sparse prefix.
const SPARSE_REST: u32 = 64 - SPARSE_P;

/// The hash of a number for [`Distinct`]: xxh3 of its bit pattern, with `-0.0` hashed
/// as `0.0` and every NaN as the one canonical NaN (so equal numbers hash alike).
pub fn hash_f64(x: f64) -> u64 {
    let bits = if x == 0.0 {
        0u64
    } else if x.is_nan() {
        f64::NAN.to_bits()
    } else {
        x.to_bits()
    };
    xxh3_64(&bits.to_le_bytes())
}

/// Approximate distinct count (HyperLogLog with a sparse start).
///
/// Standard error `1.04 / sqrt(2^p)`: 1.6% at the default `p = 12`, 0.4% at 16. While
/// sparse (up to `2^p / 4` distinct 25-bit hash prefixes, 1024 at `p = 12`) the estimate
/// is exact up to rare prefix collisions. Memory: 4 bytes per entry while sparse
/// (at most `2^p` bytes), exactly `2^p` bytes dense (4 KiB at `p = 12`), plus the
/// 32-byte struct.
///
/// The state depends only on the set of hashes added, so `==` compares sketches
/// logically: a sketch of `a ∪ b` built in one go equals the merge of the sketches of
/// `a` and `b`, whatever the order of adds and merges.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// ```
/// use lungfish::sketch::{Distinct, hash_f64};
///
/// let mut visitors = Distinct::new(12);
/// for v in 0..100_000 {
///     visitors.add_hash(hash_f64((v % 20_000) as f64));
/// }
/// let estimate = visitors.estimate();
/// assert!((estimate - 20_000.0).abs() < 20_000.0 * 3.0 * visitors.standard_error());
/// ```
pub struct Distinct {
    p: u8,
    repr: Repr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    /// Sorted by prefix, one entry per prefix: `prefix << 6 | rho'`.
    Sparse(Vec<u32>),
    /// `2^p` registers.
    Dense(Vec<u8>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::new(Distinct::DEFAULT_PRECISION)
    }
}

impl Distinct {
    /// The default precision: 4096 registers, 1.6% standard error, 4 KiB when dense.
    pub const DEFAULT_PRECISION: u8 = 12;
    /// The smallest precision accepted.
    pub const MIN_PRECISION: u8 = 4;
    /// The largest precision accepted.
    pub const MAX_PRECISION: u8 = 16;

    /// An empty sketch of `2^precision` registers.
    ///
    /// # Panics
    /// If `precision` is outside `4..=16`.
    pub fn new(precision: u8) -> Self {
        assert!(
            (Self::MIN_PRECISION..=Self::MAX_PRECISION).contains(&precision),
            "HyperLogLog precision {precision} outside 4..=16"
        );
        Distinct {
            p: precision,
            repr: Repr::Sparse(Vec::new()),
        }
    }

    /// The precision `p` (the sketch has `2^p` registers).
    pub fn precision(&self) -> u8 {
        self.p
    }

    /// The standard error of [`estimate`](Self::estimate) once dense: `1.04 / sqrt(2^p)`.
    pub fn standard_error(&self) -> f64 {
        1.04 / f64::from(1u32 << self.p).sqrt()
    }

    /// Whether the sketch is still in its sparse form.
    pub fn is_sparse(&self) -> bool {
        matches!(self.repr, Repr::Sparse(_))
    }

    fn sparse_limit(&self) -> usize {
        (1usize << self.p) / 4
    }

    /// Adds a value by its 64-bit hash (the caller hashes; the bits must look uniform).
    pub fn add_hash(&mut self, hash: u64) {
        let p = self.p;
        let limit = self.sparse_limit();
        match &mut self.repr {
            Repr::Dense(regs) => {
                let (i, rho) = dense_index(hash, p);
                if regs[i] < rho {
                    regs[i] = rho;
                }
            }
            Repr::Sparse(entries) => {
                if sparse_insert(entries, sparse_entry(hash), limit) && entries.len() > limit {
                    self.make_dense();
                }
            }
        }
    }

    fn make_dense(&mut self) {
        if let Repr::Sparse(entries) = &self.repr {
            let mut regs = vec![0u8; 1 << self.p];
            for &e in entries {
                let (i, rho) = entry_to_dense(e, self.p);
                if regs[i] < rho {
                    regs[i] = rho;
                }
            }
            self.repr = Repr::Dense(regs);
        }
    }

    /// The estimated number of distinct hashes added.
    pub fn estimate(&self) -> f64 {
        match &self.repr {
            Repr::Sparse(entries) => {
                let m = (1u64 << SPARSE_P) as f64;
                let zeros = m - entries.len() as f64;
                m * (m / zeros).ln()
            }
            Repr::Dense(regs) => dense_estimate(regs, self.p),
        }
    }

    /// Adds everything `other` holds: afterwards `self` is the sketch of the union.
    ///
    /// # Panics
    /// If the precisions differ (sketches of different precision do not merge exactly).
    pub fn merge(&mut self, other: &Self) {
        assert_eq!(
            self.p, other.p,
            "merging HyperLogLog sketches of different precision"
        );
        let limit = self.sparse_limit();
        match (&mut self.repr, &other.repr) {
            (Repr::Sparse(a), Repr::Sparse(b)) => {
                let merged = merge_sparse(a, b);
                *a = merged;
                if a.len() > limit {
                    self.make_dense();
                }
            }
            (Repr::Sparse(_), Repr::Dense(_)) => {
                self.make_dense();
                self.merge(other);
            }
            (Repr::Dense(regs), Repr::Sparse(b)) => {
                for &e in b {
                    let (i, rho) = entry_to_dense(e, self.p);
                    if regs[i] < rho {
                        regs[i] = rho;
                    }
                }
            }
            (Repr::Dense(a), Repr::Dense(b)) => {
                for (x, &y) in a.iter_mut().zip(b) {
                    if *x < y {
                        *x = y;
                    }
                }
            }
        }
    }

    /// Bytes held on the heap (the struct itself not included).
    pub fn heap_bytes(&self) -> usize {
        match &self.repr {
            Repr::Sparse(e) => e.capacity() * 4,
            Repr::Dense(r) => r.capacity(),
        }
    }

    /// Appends the sketch's encoding: a tag, `p`, then the sparse entries as
    /// delta varints or the `2^p` register bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match &self.repr {
            Repr::Sparse(entries) => {
                out.push(0);
                out.push(self.p);
                wire::put_varint(out, entries.len() as u64);
                let mut prev = 0u32;
                for &e in entries {
                    wire::put_varint(out, u64::from(e - prev));
                    prev = e;
                }
            }
            Repr::Dense(regs) => {
                out.push(1);
                out.push(self.p);
                out.extend_from_slice(regs);
            }
        }
    }

    /// Reads a sketch written by [`encode`](Self::encode), advancing `input` past it;
    /// `None` if the bytes are malformed.
    pub fn decode(input: &mut &[u8]) -> Option<Self> {
        let tag = wire::get_u8(input)?;
        let p = wire::get_u8(input)?;
        if !(Self::MIN_PRECISION..=Self::MAX_PRECISION).contains(&p) {
            return None;
        }
        let limit = (1usize << p) / 4;
        let repr = match tag {
            0 => {
                let n = usize::try_from(wire::get_varint(input)?).ok()?;
                if n > limit {
                    return None;
                }
                let mut entries = Vec::with_capacity(n);
                let mut prev: Option<u32> = None;
                for _ in 0..n {
                    let d = u32::try_from(wire::get_varint(input)?).ok()?;
                    let e = prev.unwrap_or(0).checked_add(d)?;
                    let rho = e & 63;
                    if e >> 6 >= 1 << SPARSE_P || rho == 0 || rho > SPARSE_REST + 1 {
                        return None;
                    }
                    if prev.is_some_and(|q| q >> 6 >= e >> 6) {
                        return None;
                    }
                    entries.push(e);
                    prev = Some(e);
                }
                Repr::Sparse(entries)
            }
            1 => {
                let regs = wire::get_bytes(input, 1 << p)?;
                let max_rho = 65 - p;
                if regs.iter().any(|&r| r > max_rho) {
                    return None;
                }
                Repr::Dense(regs.to_vec())
            }
            _ => return None,
        };
        Some(Distinct { p, repr })
    }
}

/// Register index and `rho` of a hash at precision `p`.
fn dense_index(hash: u64, p: u8) -> (usize, u8) {
    let i = (hash >> (64 - u32::from(p))) as usize;
    let w = hash << p;
    let rho = if w == 0 {
        65 - p
    } else {
        w.leading_zeros() as u8 + 1
    };
    (i, rho)
}

/// The sparse entry of a hash: 25-bit prefix, then `rho'` of the other 39 bits.
fn sparse_entry(hash: u64) -> u32 {
    let prefix = (hash >> SPARSE_REST) as u32;
    let w = hash << SPARSE_P;
    let rho = if w == 0 {
        SPARSE_REST + 1
    } else {
        w.leading_zeros() + 1
    };
    prefix << 6 | rho
}

/// The dense register and `rho` a sparse entry stands for.
fn entry_to_dense(e: u32, p: u8) -> (usize, u8) {
    let prefix = e >> 6;
    let rho_rest = (e & 63) as u8;
    let extra = SPARSE_P - u32::from(p);
    let i = (prefix >> extra) as usize;
    let low = prefix & ((1u32 << extra) - 1);
    let rho = if low != 0 {
        (low.leading_zeros() - (32 - extra)) as u8 + 1
    } else {
        extra as u8 + rho_rest
    };
    (i, rho)
}

/// Inserts or raises the entry for its prefix; true if the entry count grew.
fn sparse_insert(entries: &mut Vec<u32>, e: u32, limit: usize) -> bool {
    let prefix = e >> 6;
    match entries.binary_search_by_key(&prefix, |x| x >> 6) {
        Ok(at) => {
            if entries[at] < e {
                entries[at] = e;
            }
            false
        }
        Err(at) => {
            if entries.len() == entries.capacity() {
                // Grow geometrically, but never past what the dense form would take.
                let want = (entries.len() * 2).clamp(4, limit + 1);
                entries.reserve_exact(want - entries.len());
            }
            entries.insert(at, e);
            true
        }
    }
}

/// The union of two sparse entry lists (per prefix, the larger `rho'`).
fn merge_sparse(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        match (x >> 6).cmp(&(y >> 6)) {
            std::cmp::Ordering::Less => {
                out.push(x);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(y);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(x.max(y));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The dense estimate: linear counting while it is at most `2m`, else Ertl's
/// improved raw estimator.
fn dense_estimate(regs: &[u8], p: u8) -> f64 {
    let m = regs.len() as f64;
    let q = 64 - usize::from(p);
    let mut c = [0u32; 66];
    for &r in regs {
        c[usize::from(r)] += 1;
    }
    let zeros = f64::from(c[0]);
    if zeros > 0.0 {
        let lc = m * (m / zeros).ln();
        if lc <= 2.0 * m {
            return lc;
        }
    }
    let mut z = m * tau(1.0 - f64::from(c[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(c[k]));
    }
    z += m * sigma(zeros / m);
    m * m / (2.0 * std::f64::consts::LN_2) / z
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let prev = z;
        z += x * y;
        y += y;
        if z == prev {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let prev = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if z == prev {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::TestRng;
    use proptest::prelude::*;

    fn h(i: u64) -> u64 {
        xxh3_64(&i.to_le_bytes())
    }

    fn within_sigmas(d: &Distinct, n: u64, sigmas: f64) {
        let est = d.estimate();
        let err = (est - n as f64).abs() / n as f64;
        assert!(
            err <= sigmas * d.standard_error(),
            "n = {n}, p = {}, estimate {est}, relative error {err}",
            d.p
        );
    }

    #[test]
    fn estimates_within_three_standard_errors() {
        let sizes: &[u64] = if cfg!(debug_assertions) {
            &[
                1, 10, 100, 1_000, 2_000, 5_000, 9_000, 15_000, 30_000, 100_000, 300_000,
            ]
        } else {
            &[
                1, 10, 100, 1_000, 2_000, 5_000, 9_000, 12_000, 15_000, 20_000, 30_000, 60_000,
                100_000, 300_000, 1_000_000,
            ]
        };
        let mut rng = TestRng(7);
        for &n in sizes {
            for p in [10u8, 12, 14] {
                let mut d = Distinct::new(p);
                let salt = rng.next_u64();
                for i in 0..n {
                    d.add_hash(h(i ^ salt));
                }
                within_sigmas(&d, n, 3.0);
            }
        }
    }

    #[test]
    fn mean_error_is_near_the_standard_error() {
        // Over many independent sketches the root-mean-square relative error should be
        // close to 1.04 / sqrt(m) (a biased estimator would show here).
        let m_p = 8u8;
        let mut rng = TestRng(11);
        for n in [100u64, 300, 600, 1_500, 5_000] {
            let mut sq = 0.0;
            let mut bias = 0.0;
            let runs = 200;
            for _ in 0..runs {
                let mut d = Distinct::new(m_p);
                for _ in 0..n {
                    d.add_hash(rng.next_u64());
                }
                let r = d.estimate() / n as f64 - 1.0;
                sq += r * r;
                bias += r;
            }
            let rmse = (sq / f64::from(runs)).sqrt();
            let bias = bias / f64::from(runs);
            let se = 1.04 / 16.0;
            assert!(rmse < 1.25 * se, "n = {n}: rmse {rmse} vs {se}");
            assert!(bias.abs() < 0.3 * se, "n = {n}: bias {bias}");
        }
    }

    #[test]
    fn small_counts_are_exact_while_sparse() {
        let mut d = Distinct::default();
        assert_eq!(d.estimate(), 0.0);
        for i in 0..1_000u64 {
            d.add_hash(h(i));
            d.add_hash(h(i)); // duplicates change nothing
            assert!(d.is_sparse());
            assert_eq!(d.estimate().round() as u64, i + 1);
        }
        for i in 1_000..2_000u64 {
            d.add_hash(h(i));
        }
        assert!(!d.is_sparse());
        assert!(d.heap_bytes() <= 1 << 12);
    }

    #[test]
    fn sparse_memory_never_exceeds_dense() {
        for p in 4..=16u8 {
            let mut d = Distinct::new(p);
            let mut i = 0;
            while d.is_sparse() {
                assert!(d.heap_bytes() <= 1 << p, "p = {p}: {}", d.heap_bytes());
                d.add_hash(h(i));
                i += 1;
            }
            assert_eq!(d.heap_bytes(), 1 << p);
        }
    }

    #[test]
    fn sparse_entries_rebuild_dense_registers_exactly() {
        let mut rng = TestRng(3);
        for p in 4..=16u8 {
            for _ in 0..2_000 {
                let mut x = rng.next_u64();
                // Plenty of hashes with long zero runs.
                x >>= rng.below(64);
                x = x.rotate_right(rng.below(2) as u32 * 40);
                assert_eq!(
                    entry_to_dense(sparse_entry(x), p),
                    dense_index(x, p),
                    "{x:#x}"
                );
            }
            assert_eq!(entry_to_dense(sparse_entry(0), p), dense_index(0, p));
            assert_eq!(entry_to_dense(sparse_entry(1), p), dense_index(1, p));
        }
    }

    fn build(p: u8, hashes: &[u64]) -> Distinct {
        let mut d = Distinct::new(p);
        for &x in hashes {
            d.add_hash(x);
        }
        d
    }

    fn round_trip(d: &Distinct) {
        let mut out = vec![9u8];
        d.encode(&mut out);
        out.push(42);
        let mut input = &out[1..];
        let back = Distinct::decode(&mut input).unwrap();
        assert_eq!(&back, d);
        assert_eq!(input, &[42]);
        assert_eq!(back.estimate(), d.estimate());
        let len = out.len() - 2;
        for cut in (0..len).filter(|c| *c < 64 || c % (len / 64 + 1) == 0 || *c + 64 > len) {
            let mut short = &out[1..1 + cut];
            assert!(Distinct::decode(&mut short).is_none());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn merge_equals_union_and_order_does_not_matter(
            p in 4u8..=12,
            a in prop::collection::vec(any::<u64>(), 0..1_500),
            b in prop::collection::vec(any::<u64>(), 0..1_500),
            small in any::<bool>(),
        ) {
            // Some runs with hashes that share prefixes, so raised entries are covered.
            let fix = |v: &Vec<u64>| -> Vec<u64> {
                if small { v.iter().map(|x| x & 0xff00_0000_0000_00ff).collect() } else { v.clone() }
            };
            let (a, b) = (fix(&a), fix(&b));
            let mut all = a.clone();
            all.extend_from_slice(&b);
            let one_go = build(p, &all);

            let mut merged = build(p, &a);
            merged.merge(&build(p, &b));
            prop_assert_eq!(&merged, &one_go);
            let mut merged_rev = build(p, &b);
            merged_rev.merge(&build(p, &a));
            prop_assert_eq!(&merged_rev, &one_go);

            let mut rev = all.clone();
            rev.reverse();
            prop_assert_eq!(&build(p, &rev), &one_go);
            let mut sorted = all.clone();
            sorted.sort_unstable();
            prop_assert_eq!(&build(p, &sorted), &one_go);

            // Merging in pieces of any size, including into an empty sketch.
            let mut pieces = Distinct::new(p);
            for chunk in all.chunks(97) {
                pieces.merge(&build(p, chunk));
            }
            prop_assert_eq!(&pieces, &one_go);
            round_trip(&one_go);
        }
    }

    #[test]
    fn merge_across_the_switch_is_exact() {
        let mut rng = TestRng(5);
        for p in [4u8, 8, 12] {
            let limit = (1usize << p) / 4;
            for (na, nb) in [
                (limit, limit),
                (limit / 2, limit),
                (3 * limit, 3),
                (0, 5 * limit),
            ] {
                let a: Vec<u64> = (0..na).map(|_| rng.next_u64()).collect();
                let b: Vec<u64> = (0..nb).map(|_| rng.next_u64()).collect();
                let mut all = a.clone();
                all.extend_from_slice(&b);
                let one_go = build(p, &all);
                let mut m = build(p, &a);
                m.merge(&build(p, &b));
                assert_eq!(m, one_go);
                let mut m = build(p, &b);
                m.merge(&build(p, &a));
                assert_eq!(m, one_go);
                round_trip(&one_go);
            }
        }
    }

    #[test]
    fn decode_rejects_malformed() {
        assert!(Distinct::decode(&mut &[][..]).is_none());
        assert!(Distinct::decode(&mut &[0u8, 3, 0][..]).is_none()); // p too small
        assert!(Distinct::decode(&mut &[2u8, 12, 0][..]).is_none()); // bad tag
        assert!(Distinct::decode(&mut &[0u8, 12, 1, 0][..]).is_none()); // rho 0
        assert!(Distinct::decode(&mut &[1u8, 4][..]).is_none()); // short registers
        let mut regs = vec![1u8, 4];
        regs.extend_from_slice(&[62; 16]);
        assert!(Distinct::decode(&mut &regs[..]).is_none()); // register too large
        assert!(Distinct::decode(&mut &[0u8, 12, 0][..]).is_some());
    }

    #[test]
    #[should_panic(expected = "different precision")]
    fn merge_of_different_precision_panics() {
        let mut a = Distinct::new(10);
        a.merge(&Distinct::new(12));
    }

    #[test]
    fn hash_f64_normalises_zero_and_nan() {
        assert_eq!(hash_f64(0.0), hash_f64(-0.0));
        assert_eq!(hash_f64(f64::NAN), hash_f64(-f64::NAN));
        assert_eq!(
            hash_f64(f64::NAN),
            hash_f64(f64::from_bits(0x7ff8_0000_0000_0001))
        );
        assert_ne!(hash_f64(1.0), hash_f64(-1.0));
        assert_ne!(hash_f64(1.0), hash_f64(0.0));
    }
}
