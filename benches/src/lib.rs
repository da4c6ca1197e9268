//! Placeholder library so the workspace builds; the benchmarks land with their own issue.
