//! [`Metrics`]: the proxy's `/metrics` Prometheus text, parsed into samples that can be summed
//! by label.

use std::collections::BTreeMap;

/// A Prometheus text exposition, parsed into samples.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The raw text.
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses the text format (comments skipped; label values without escaped quotes).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(parts) => parts,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.trim_end_matches('}');
                    let mut labels = BTreeMap::new();
                    for pair in split_labels(inner) {
                        if let Some((k, v)) = pair.split_once('=') {
                            labels.insert(
                                k.trim().to_string(),
                                v.trim().trim_matches('"').to_string(),
                            );
                        }
                    }
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The sum of every sample of `name` whose labels include all of `labels`; `None` when no
    /// sample matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (n, l, v) in &self.samples {
            if n == name
                && labels
                    .iter()
                    .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))
            {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// As [`Metrics::get`], 0 when no sample matches (counters not yet incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// Splits `a="x",b="y,z"` on the commas outside quotes.
fn split_labels(inner: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        out.push(&inner[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_parsed_and_summed_by_label_subset() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE drawbridge_requests_total counter\n\
             drawbridge_requests_total{route=\"ui\",kind=\"page\",status=\"200\",mode=\"normal\"} 3\n\
             drawbridge_requests_total{route=\"ui\",kind=\"page\",status=\"503\",mode=\"maintenance\"} 2\n\
             drawbridge_gate_applied_index 42\n",
        );
        assert_eq!(
            m.get("drawbridge_requests_total", &[("route", "ui")]),
            Some(5.0)
        );
        assert_eq!(
            m.value("drawbridge_requests_total", &[("status", "503")]),
            2.0
        );
        assert_eq!(m.get("drawbridge_gate_applied_index", &[]), Some(42.0));
        assert_eq!(
            m.get("drawbridge_requests_total", &[("route", "api")]),
            None
        );
    }
}
