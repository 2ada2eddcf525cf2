//! The `generator` source: synthetic, seeded JSON events.
//!
//! Event `i` is a pure function of the seed and `i` (a counter-based random stream,
//! SplitMix64, defined here so it never changes with a dependency's version). So a run
//! can be replayed exactly, and a generator resuming after a crash at event `i`
//! produces exactly what an uninterrupted run would have.
//!
//! Event `i` looks like `{"id":"NAME-i","user":"u-K","ts":T,"value":V}` (field names are
//! the pipeline's), where
//! * `K` is uniform in `0..keys`, or Zipf-distributed with rank 0 the hottest;
//! * `T = start_time + i * 1000 / events_per_second - U(0, disorder)`, so event time
//!   advances at the configured density and events arrive up to `disorder` late;
//! * `V` is uniform in `[0, 1000)` with two decimals;
//! * with probability `malformed`, the line is broken in one of five ways instead
//!   (truncated JSON, missing key, wrong-typed time, not an object, wrong-typed value).

use std::io::Write;
use std::sync::Arc;

use crate::codec::json::FieldNames;
use crate::config::{GeneratorConfig, KeyDistribution, Rate};
use crate::ingest::{Positions, RawChunk};

use super::{ChunkSource, SourceError};

/// SplitMix64's finalizer: a bijective mix of 64 bits.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small random stream for one event, seeded by (seed, event index).
#[derive(Debug, Clone)]
pub struct EventRng(u64);

impl EventRng {
    /// The stream of event `index` under `seed`.
    pub fn new(seed: u64, index: u64) -> Self {
        EventRng(mix64(seed ^ mix64(index)))
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Zipf sampler over ranks `1..=n` with exponent `s`, by rejection-inversion
/// (Hörmann and Derflinger, 1996): constant memory, a few operations per sample.
#[derive(Debug, Clone, Copy)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_x1: f64,
    h_n: f64,
    squeeze: f64,
}

impl Zipf {
    /// A sampler of `n >= 1` ranks with exponent `s > 0`.
    pub fn new(n: u64, s: f64) -> Self {
        let mut z = Zipf {
            n: n.max(1) as f64,
            s,
            h_x1: 0.0,
            h_n: 0.0,
            squeeze: 0.0,
        };
        z.h_x1 = z.h_integral(1.5) - 1.0;
        z.h_n = z.h_integral(z.n + 0.5);
        z.squeeze = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }

    /// A rank in `1..=n`; 1 is the most frequent.
    pub fn sample(&self, rng: &mut EventRng) -> u64 {
        loop {
            let u = self.h_n + rng.next_f64() * (self.h_x1 - self.h_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).clamp(1.0, self.n).floor();
            if k - x <= self.squeeze || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }
}

fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

/// Writes event `index` of a generator as one JSON line (with its `\n`).
#[derive(Debug, Clone)]
pub struct EventWriter {
    name: String,
    config: GeneratorConfig,
    key_field: String,
    time_field: String,
    id_field: String,
    number_fields: Vec<String>,
    zipf: Option<Zipf>,
    disorder_ms: u64,
}

impl EventWriter {
    /// A writer for generator `name` producing the fields in `fields`.
    pub fn new(name: &str, config: GeneratorConfig, fields: &FieldNames) -> Self {
        let zipf = (config.distribution == KeyDistribution::Zipf)
            .then(|| Zipf::new(config.keys, config.zipf_exponent));
        let mut number_fields = fields.numbers.clone();
        if number_fields.is_empty() {
            number_fields.push("value".to_owned());
        }
        EventWriter {
            name: name.to_owned(),
            disorder_ms: config.disorder.as_millis() as u64,
            config,
            key_field: fields.key.clone(),
            time_field: fields.time.clone(),
            id_field: fields.id.clone().unwrap_or_else(|| "id".to_owned()),
            number_fields,
            zipf,
        }
    }

    /// Appends event `index` to `out`.
    pub fn write(&self, index: u64, out: &mut Vec<u8>) {
        let c = &self.config;
        let mut rng = EventRng::new(c.seed, index);
        let broken = c.malformed > 0.0 && rng.next_f64() < c.malformed;
        let key = match &self.zipf {
            Some(z) => z.sample(&mut rng) - 1,
            None if c.distribution == KeyDistribution::Hot && rng.next_f64() < c.hot_share => 0,
            None => rng.below(c.keys.max(1)),
        };
        let base = c.start_time as i128 + index as i128 * 1000 / c.events_per_second.max(1) as i128;
        let jitter = if self.disorder_ms > 0 {
            rng.below(self.disorder_ms + 1) as i128
        } else {
            0
        };
        let ts = (base - jitter).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        let (k, t, id) = (&self.key_field, &self.time_field, &self.id_field);
        let mut itoa = itoa::Buffer::new();
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\":\"");
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'-');
        out.extend_from_slice(itoa.format(index).as_bytes());
        out.extend_from_slice(b"\"");
        let kind = if broken { rng.below(5) } else { u64::MAX };
        if kind != 1 {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":\"u-");
            out.extend_from_slice(itoa.format(key).as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"");
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\":");
        if kind == 2 {
            let _ = write!(out, "\"{ts}\"");
        } else {
            out.extend_from_slice(itoa.format(ts).as_bytes());
        }
        if kind == 0 {
            // Truncated in the middle of the document.
            out.push(b'\n');
            return;
        }
        for f in &self.number_fields {
            let cents = rng.below(100_000);
            out.extend_from_slice(b",\"");
            out.extend_from_slice(f.as_bytes());
            out.extend_from_slice(b"\":");
            if kind == 4 {
                out.extend_from_slice(b"\"n/a\"");
            } else {
                out.extend_from_slice(itoa.format(cents / 100).as_bytes());
                out.push(b'.');
                let frac = cents % 100;
                out.push(b'0' + (frac / 10) as u8);
                out.push(b'0' + (frac % 10) as u8);
            }
        }
        out.push(b'}');
        if kind == 3 {
            // Not an object: wrap the event in an array.
            let at = out.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            out.insert(at, b'[');
            out.push(b']');
        }
        out.push(b'\n');
    }
}

/// Generates events as [`RawChunk`]s; positions are event indexes.
#[derive(Debug)]
pub struct GeneratorSource {
    writer: EventWriter,
    origin: Arc<str>,
    next: u64,
    count: Option<u64>,
    duration: Option<std::time::Duration>,
    /// When this run's `duration` ends; set by the first chunk.
    deadline: Option<std::time::Instant>,
    chunk_events: u64,
}

impl GeneratorSource {
    /// A generator named `name` writing the pipeline's `fields`.
    pub fn new(name: &str, config: GeneratorConfig, fields: &FieldNames) -> Self {
        let chunk_events = match config.rate {
            Rate::Unlimited => 8192,
            // About 10 ms worth of events per chunk, so pacing stays smooth.
            Rate::PerSecond(r) => (r / 100).clamp(1, 8192),
        };
        GeneratorSource {
            origin: format!("generator {name}").into(),
            count: config.count,
            duration: config.duration,
            deadline: None,
            writer: EventWriter::new(name, config, fields),
            next: 0,
            chunk_events,
        }
    }
}

impl ChunkSource for GeneratorSource {
    fn seek(&mut self, position: u64) -> Result<(), SourceError> {
        self.next = position;
        Ok(())
    }

    fn next_chunk(&mut self, mut buf: Vec<u8>) -> Result<Option<RawChunk>, SourceError> {
        if let Some(d) = self.duration {
            // A duration bounds each run's wall-clock time.
            let deadline = *self
                .deadline
                .get_or_insert_with(|| std::time::Instant::now() + d);
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
        let end = match self.count {
            Some(c) => c.min(self.next + self.chunk_events),
            None => self.next + self.chunk_events,
        };
        if end <= self.next {
            return Ok(None);
        }
        buf.clear();
        for i in self.next..end {
            self.writer.write(i, &mut buf);
        }
        let first = self.next;
        self.next = end;
        Ok(Some(RawChunk {
            format: crate::codec::InputFormat::Json,
            data: buf,
            positions: Positions::Lines { first },
            end,
            origin: self.origin.clone(),
            first_line: first,
        }))
    }

    fn rate(&self) -> Option<u64> {
        match self.writer.config.rate {
            Rate::Unlimited => None,
            Rate::PerSecond(r) => Some(r),
        }
    }

    fn describe(&self) -> String {
        match self.count {
            Some(c) => format!("{} ({c} events)", self.origin),
            None => self.origin.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::json::JsonExtractor;
    use std::time::Duration;

    fn fields() -> FieldNames {
        FieldNames::default()
    }

    fn config() -> GeneratorConfig {
        GeneratorConfig {
            count: Some(10_000),
            keys: 1000,
            distribution: KeyDistribution::Zipf,
            disorder: Duration::from_secs(2),
            malformed: 0.1,
            seed: 7,
            ..GeneratorConfig::default()
        }
    }

    #[test]
    fn events_depend_only_on_seed_and_index() {
        let w = EventWriter::new("g", config(), &fields());
        let (mut a, mut b) = (vec![], vec![]);
        for i in 0..100 {
            w.write(i, &mut a);
        }
        for i in (0..100).rev() {
            let mut one = vec![];
            w.write(i, &mut one);
            b.splice(0..0, one);
        }
        assert_eq!(a, b);
        let other = EventWriter::new(
            "g",
            GeneratorConfig {
                seed: 8,
                ..config()
            },
            &fields(),
        );
        let mut c = vec![];
        for i in 0..100 {
            other.write(i, &mut c);
        }
        assert_ne!(a, c, "another seed gives other events");
    }

    #[test]
    fn malformed_share_disorder_and_validity() {
        let w = EventWriter::new("g", config(), &fields());
        let x = JsonExtractor::new(fields());
        let mut bad = 0;
        let mut nums = [0.0];
        let start = GeneratorConfig::DEFAULT_START_TIME;
        for i in 0..10_000u64 {
            let mut line = vec![];
            w.write(i, &mut line);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            match x.extract(&line[..line.len() - 1], &mut nums) {
                Ok(ev) => {
                    let base = start + i as i64 * 1000 / 100_000;
                    assert!(
                        ev.ts <= base && ev.ts >= base - 2000,
                        "ts within the disorder bound"
                    );
                    assert!((0.0..1000.0).contains(&nums[0]));
                    assert_eq!(ev.id.as_deref(), Some(format!("g-{i}").as_str()));
                }
                Err(_) => bad += 1,
            }
        }
        assert!((800..1200).contains(&bad), "about 10% malformed, got {bad}");
    }

    #[test]
    fn zipf_ranks_follow_the_law() {
        // s = 1 over 100 ranks: P(1) = 1 / H(100) ~ 0.1928, P(2) = P(1) / 2.
        let z = Zipf::new(100, 1.0);
        let mut counts = [0u32; 101];
        let n = 200_000;
        for i in 0..n {
            let k = z.sample(&mut EventRng::new(1, i));
            assert!((1..=100).contains(&k));
            counts[k as usize] += 1;
        }
        let p1 = counts[1] as f64 / n as f64;
        let p2 = counts[2] as f64 / n as f64;
        assert!((p1 - 0.1928).abs() < 0.005, "p1 = {p1}");
        assert!((p2 - 0.0964).abs() < 0.004, "p2 = {p2}");
    }

    #[test]
    fn a_duration_ends_the_input() {
        let config = GeneratorConfig {
            count: None,
            duration: Some(Duration::from_millis(300)),
            rate: Rate::PerSecond(10_000),
            ..GeneratorConfig::default()
        };
        let mut g = GeneratorSource::new("g", config, &fields());
        let started = std::time::Instant::now();
        let mut chunks = 0;
        while g.next_chunk(Vec::new()).unwrap().is_some() {
            chunks += 1;
            std::thread::sleep(Duration::from_millis(10));
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the duration must end the input"
            );
        }
        assert!(
            chunks >= 10,
            "it produced until the deadline ({chunks} chunks)"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn chunks_cover_the_count_exactly_and_resume_anywhere() {
        let mut g = GeneratorSource::new("g", config(), &fields());
        let mut all = vec![];
        while let Some(c) = g.next_chunk(Vec::new()).unwrap() {
            all.extend_from_slice(&c.data);
        }
        assert_eq!(all.iter().filter(|&&b| b == b'\n').count(), 10_000);
        let mut g2 = GeneratorSource::new("g", config(), &fields());
        g2.seek(4321).unwrap();
        let c = g2.next_chunk(Vec::new()).unwrap().unwrap();
        assert_eq!(c.positions, Positions::Lines { first: 4321 });
        let skip: usize = all
            .split(|&b| b == b'\n')
            .take(4321)
            .map(|l| l.len() + 1)
            .sum();
        assert!(all[skip..].starts_with(&c.data));
    }
}
