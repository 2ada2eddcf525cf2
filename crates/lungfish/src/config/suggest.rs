//! "Did you mean ...?" suggestions by edit distance.

/// The candidate closest to `input`, if one is close enough to be a likely typo.
pub(crate) fn closest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (distance(input, candidate), *candidate))
        .filter(|(d, candidate)| {
            *d <= (input.chars().count().max(candidate.chars().count()) / 4).max(1)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, candidate)| candidate)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// adjacent characters each cost 1.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("", ""), 0);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("segment_szie", "segment_size"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("rate", "rate"), 0);
    }

    #[test]
    fn suggestions() {
        let known = ["partitions", "segment_size", "fsync", "max_batch_size"];
        assert_eq!(closest("segment_szie", &known), Some("segment_size"));
        assert_eq!(closest("partition", &known), Some("partitions"));
        assert_eq!(closest("fsnyc", &known), Some("fsync"));
        assert_eq!(closest("colour", &known), None);
        assert_eq!(closest("typ", &["type", "path"]), Some("type"));
        // Several close candidates: the closest wins, whatever the order.
        let sink = ["batch_max_age", "batch_max_rows"];
        assert_eq!(distance("batch_max_row", "batch_max_age"), 3);
        assert_eq!(closest("batch_max_row", &sink), Some("batch_max_rows"));
    }
}
