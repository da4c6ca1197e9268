//! What `maintctl canary` reads of the proxies' `/metrics`: each side of a split route's answers
//! by class and its duration histogram ([`SideCounts`], [`sides`]), summed over the proxies, and
//! what a window between two readings says (error rate, p99).

use std::collections::BTreeMap;

/// The answers metric of split routes, by route, pool and class.
const ANSWERS: &str = "drawbridge_split_answers_total";
/// The duration histogram of split routes, by route and pool.
const DURATION_BUCKETS: &str = "drawbridge_split_request_duration_seconds_bucket";

/// One side of a split route as counted so far (or over a window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideCounts {
    /// Answers of every class.
    pub answers: f64,
    /// Answers that were 5xx, or none written.
    pub errors: f64,
    /// The duration histogram: cumulative counts by upper bound in seconds (`+Inf` last).
    pub buckets: BTreeMap<Bound, f64>,
}

/// A histogram bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy)]
pub struct Bound(pub f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl SideCounts {
    /// Adds what another proxy counted.
    pub fn add(&mut self, other: &SideCounts) {
        self.answers += other.answers;
        self.errors += other.errors;
        for (bound, count) in &other.buckets {
            *self.buckets.entry(*bound).or_insert(0.0) += count;
        }
    }

    /// What one proxy counted after `before`, its reading at the start of a window. When any
    /// of its counters went down, the proxy restarted: everything it counts now is since then.
    pub fn since(&self, before: &SideCounts) -> SideCounts {
        let restarted = self.answers < before.answers
            || self.errors < before.errors
            || before
                .buckets
                .iter()
                .any(|(bound, then)| self.buckets.get(bound).is_none_or(|now| now < then));
        if restarted {
            return self.clone();
        }
        SideCounts {
            answers: self.answers - before.answers,
            errors: self.errors - before.errors,
            buckets: self
                .buckets
                .iter()
                .map(|(bound, count)| {
                    let then = before.buckets.get(bound).copied().unwrap_or(0.0);
                    (*bound, count - then)
                })
                .collect(),
        }
    }

    /// The share of answers that were errors; `None` without answers.
    pub fn error_rate(&self) -> Option<f64> {
        (self.answers > 0.0).then(|| self.errors / self.answers)
    }

    /// The 99th percentile duration in seconds, interpolated within its bucket as Prometheus's
    /// `histogram_quantile` does; `None` without observations. A quantile in the `+Inf` bucket
    /// is the largest finite bound.
    pub fn p99(&self) -> Option<f64> {
        let total = self.buckets.get(&Bound(f64::INFINITY)).copied()?;
        if total <= 0.0 {
            return None;
        }
        let rank = 0.99 * total;
        let mut lower = (0.0, 0.0);
        for (bound, count) in &self.buckets {
            if *count >= rank {
                if bound.0.is_infinite() {
                    return Some(lower.0);
                }
                let within = (count - lower.1).max(f64::MIN_POSITIVE);
                return Some(lower.0 + (bound.0 - lower.0) * (rank - lower.1) / within);
            }
            lower = (bound.0, *count);
        }
        Some(lower.0)
    }
}

/// What one proxy's `/metrics` text counted on split route `route`: for its own pool (every
/// pool but `second`), and for `second`.
pub fn sides(text: &str, route: &str, second: &str) -> (SideCounts, SideCounts) {
    let mut own = SideCounts::default();
    let mut new = SideCounts::default();
    for Sample {
        name,
        labels,
        value,
    } in text.lines().filter_map(sample)
    {
        if label(&labels, "route") != Some(route) {
            continue;
        }
        let counts = match label(&labels, "pool") {
            Some(pool) if pool == second => &mut new,
            Some(_) => &mut own,
            None => continue,
        };
        match name {
            ANSWERS => {
                counts.answers += value;
                if matches!(label(&labels, "class"), Some("5xx" | "none")) {
                    counts.errors += value;
                }
            }
            DURATION_BUCKETS => {
                let bound = match label(&labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                *counts.buckets.entry(Bound(bound)).or_insert(0.0) += value;
            }
            _ => {}
        }
    }
    (own, new)
}

fn label<'a>(labels: &'a [(&'a str, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// One sample line of the text format.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// One sample line: its name, labels and value; `None` for comments and anything else.
fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(at) => (&line[..at], &line[at + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name,
                labels: Vec::new(),
                value: value.trim().parse().ok()?,
            });
        }
    };
    let mut labels = Vec::new();
    let mut rest = rest;
    loop {
        rest = rest.trim_start_matches(',').trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            let value = after.split_whitespace().next()?.parse().ok()?;
            return Some(Sample {
                name,
                labels,
                value,
            });
        }
        let (label_name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (at, '"') => break at,
                (_, c) => value.push(c),
            }
        };
        labels.push((label_name.trim(), value));
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP drawbridge_split_answers_total Answers of split routes
# TYPE drawbridge_split_answers_total counter
drawbridge_split_answers_total{class="2xx",pool="api-green",route="api"} 90
drawbridge_split_answers_total{class="5xx",pool="api-green",route="api"} 8
drawbridge_split_answers_total{class="none",pool="api-green",route="api"} 2
drawbridge_split_answers_total{class="2xx",pool="api",route="api"} 400
drawbridge_split_answers_total{class="5xx",pool="api-green",route="ui"} 1000
drawbridge_split_request_duration_seconds_bucket{pool="api-green",route="api",le="0.1"} 50
drawbridge_split_request_duration_seconds_bucket{pool="api-green",route="api",le="0.5"} 98
drawbridge_split_request_duration_seconds_bucket{pool="api-green",route="api",le="1"} 100
drawbridge_split_request_duration_seconds_bucket{pool="api-green",route="api",le="+Inf"} 100
drawbridge_split_request_duration_seconds_count{pool="api-green",route="api"} 100
drawbridge_requests_total{kind="api",mode="normal",route="a\"pi",status="200"} 3
"#;

    #[test]
    fn a_side_is_read_by_route_and_pool_with_its_errors() {
        let (blue, green) = sides(TEXT, "api", "api-green");
        assert_eq!(green.answers, 100.0);
        assert_eq!(green.errors, 10.0);
        assert_eq!(green.error_rate(), Some(0.1));
        assert_eq!(green.buckets.len(), 4);
        assert_eq!((blue.answers, blue.errors), (400.0, 0.0));
        let (own, new) = sides(TEXT, "admin", "api");
        assert_eq!((own.error_rate(), new.error_rate()), (None, None));
    }

    #[test]
    fn the_p99_is_interpolated_in_its_bucket() {
        let (_, green) = sides(TEXT, "api", "api-green");
        // Rank 99 of 100 lies halfway between 98 (at 0.5 s) and 100 (at 1 s).
        let p99 = green.p99().unwrap();
        assert!((p99 - 0.75).abs() < 1e-9, "{p99}");
        let mut slow = SideCounts::default();
        slow.buckets.insert(Bound(1.0), 0.0);
        slow.buckets.insert(Bound(f64::INFINITY), 10.0);
        assert_eq!(slow.p99(), Some(1.0));
        assert_eq!(SideCounts::default().p99(), None);
    }

    #[test]
    fn a_window_counts_what_came_after_its_start() {
        let (_, start) = sides(TEXT, "api", "api-green");
        let mut end = start.clone();
        end.add(&start);
        let window = end.since(&start);
        assert_eq!(window, start);
        // A proxy restarted: its counters start over, all of them.
        let restarted = SideCounts {
            answers: 5.0,
            errors: 20.0,
            ..SideCounts::default()
        };
        assert_eq!(restarted.since(&start), restarted);
    }

    #[test]
    fn escaped_labels_and_bare_samples_parse() {
        let quoted = sample(r#"x{a="q\"uote",b="back\\slash"} 2.5"#).unwrap();
        assert_eq!((quoted.name, quoted.value), ("x", 2.5));
        assert_eq!(quoted.labels[0], ("a", "q\"uote".to_string()));
        assert_eq!(quoted.labels[1], ("b", "back\\slash".to_string()));
        assert_eq!(sample("up 1").unwrap().value, 1.0);
        assert!(sample("# TYPE x counter").is_none());
        assert!(sample("x{a=\"unterminated} 1").is_none());
    }
}
