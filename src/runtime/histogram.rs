//! Latency histograms for `/metrics` that cost the hot path no allocation, no lock and no atomic
//! read-modify-write: classic Prometheus buckets, written by one thread, read by the exporter.
//!
//! Why not the `metrics` facade's histograms: its Prometheus recorder keeps every observation in a
//! lock-free list of 64-value blocks until the next scrape, so recording allocates (a block per 64
//! values) and memory grows with the rate (a million commands a second for a 15 s scrape interval
//! is 120 MB). Here each series is a fixed array of counters.
//!
//! Thread per core: a [`LatencyHistogram`] is owned by the executor that records into it (it is
//! `Send` but neither `Sync` nor `Clone`), so recording is a plain load and store of relaxed
//! atomics (no `lock` prefix). The exporter's thread reads them with relaxed loads: a scrape may
//! see an observation in its bucket and not yet in `_sum`, which Prometheus tolerates.

use std::cell::Cell;
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (`+Inf` is implied): 25 µs to 5 s, 1-2.5-5 steps, so
/// that a loopback round trip and a lost-message retry both land in a bucket of their own.
pub const BUCKET_BOUNDS_SECONDS: [f64; 17] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0,
];

/// The same bounds in nanoseconds, as the hot path compares them.
const BOUNDS_NANOS: [u64; 17] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// The bounds as `le` label values.
const LE: [&str; 18] = [
    "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf",
];

/// One series: per-bucket counts (not cumulative) and the sum of observations.
struct Series {
    name: &'static str,
    /// Rendered labels, `role="replica",node="7"`.
    labels: String,
    counts: [AtomicU64; 18],
    sum_nanos: AtomicU64,
}

/// Every series created while an exporter serves; read when `/metrics` is rendered.
static REGISTRY: Mutex<Vec<Arc<Series>>> = Mutex::new(Vec::new());
/// Whether histograms are recorded: once an exporter serves, unless `AUTOPAXOS_HISTOGRAMS=off`.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns recording on (from now on, new histograms register and record). Called by the exporter;
/// `AUTOPAXOS_HISTOGRAMS=off` keeps it off (to measure what histograms cost).
pub fn enable() {
    let off = std::env::var("AUTOPAXOS_HISTOGRAMS").is_ok_and(|v| v == "off" || v == "0");
    ENABLED.store(!off, Relaxed);
}

/// A histogram of durations, recorded by its one owner.
pub struct LatencyHistogram {
    series: Option<Arc<Series>>,
    /// Not `Sync`: one writer, so recording needs no atomic read-modify-write.
    _one_writer: PhantomData<Cell<()>>,
}

impl LatencyHistogram {
    /// A histogram `name` with `labels`, registered for `/metrics`; a no-op if no exporter serves.
    pub fn new(name: &'static str, labels: &[(&str, &str)]) -> Self {
        if !ENABLED.load(Relaxed) {
            return LatencyHistogram { series: None, _one_writer: PhantomData };
        }
        let mut rendered = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(rendered, "{sep}{k}=\"{}\"", escape(v));
        }
        let series = Arc::new(Series {
            name,
            labels: rendered,
            counts: Default::default(),
            sum_nanos: AtomicU64::new(0),
        });
        REGISTRY.lock().unwrap_or_else(|p| p.into_inner()).push(series.clone());
        LatencyHistogram { series: Some(series), _one_writer: PhantomData }
    }

    /// Records one observation.
    #[inline]
    pub fn record(&self, took: Duration) {
        self.record_nanos(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one observation of `micros` microseconds.
    #[inline]
    pub fn record_micros(&self, micros: u64) {
        self.record_nanos(micros.saturating_mul(1000));
    }

    /// Records one observation of `nanos` nanoseconds.
    #[inline]
    pub fn record_nanos(&self, nanos: u64) {
        let Some(series) = &self.series else { return };
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        // One writer (the type is not Sync): load and store, no read-modify-write needed.
        let count = &series.counts[bucket];
        count.store(count.load(Relaxed) + 1, Relaxed);
        series.sum_nanos.store(series.sum_nanos.load(Relaxed).saturating_add(nanos), Relaxed);
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Appends every histogram to a text exposition: `# HELP` (from `help(name)`) and `# TYPE` once
/// per name, cumulative buckets, `_sum`, `_count`. Series with the same name and labels (two
/// handles for one node) are added up.
pub fn render(out: &mut String, help: impl Fn(&str) -> &'static str) {
    let registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let mut order: Vec<&Arc<Series>> = registry.iter().collect();
    order.sort_by(|a, b| (a.name, &a.labels).cmp(&(b.name, &b.labels)));
    let mut i = 0;
    while i < order.len() {
        let name = order[i].name;
        let _ = writeln!(out, "# HELP {name} {}", help(name));
        let _ = writeln!(out, "# TYPE {name} histogram");
        while i < order.len() && order[i].name == name {
            let labels = &order[i].labels;
            let mut counts = [0u64; 18];
            let mut sum_nanos = 0u64;
            while i < order.len() && order[i].name == name && &order[i].labels == labels {
                for (total, c) in counts.iter_mut().zip(&order[i].counts) {
                    *total += c.load(Relaxed);
                }
                sum_nanos = sum_nanos.saturating_add(order[i].sum_nanos.load(Relaxed));
                i += 1;
            }
            let sep = if labels.is_empty() { "" } else { "," };
            let mut cumulative = 0;
            for (le, count) in LE.iter().zip(counts) {
                cumulative += count;
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_nanos as f64 / 1e9);
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree() {
        for (s, n) in BUCKET_BOUNDS_SECONDS.iter().zip(BOUNDS_NANOS) {
            assert_eq!((s * 1e9).round() as u64, n);
        }
        for (s, le) in BUCKET_BOUNDS_SECONDS.iter().zip(LE) {
            assert_eq!(le.parse::<f64>().unwrap(), *s);
        }
    }

    #[test]
    fn records_into_the_right_bucket_and_renders_cumulatively() {
        enable();
        let h = LatencyHistogram::new("test_histogram_seconds", &[("role", "r\"x"), ("node", "1")]);
        h.record_micros(10); // first bucket (<= 25 µs)
        h.record_micros(25); // le is inclusive: still the first
        h.record(Duration::from_millis(3)); // <= 5 ms
        h.record(Duration::from_secs(60)); // +Inf
        let mut out = String::new();
        render(&mut out, |_| "help text");
        let mine: Vec<&str> = out.lines().filter(|l| l.contains("test_histogram_seconds")).collect();
        assert!(mine.contains(&"# TYPE test_histogram_seconds histogram"), "{out}");
        let bucket = |le: &str| {
            let prefix = format!("test_histogram_seconds_bucket{{role=\"r\\\"x\",node=\"1\",le=\"{le}\"}} ");
            mine.iter().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("{le}: {out}"))
        };
        assert_eq!(bucket("0.000025"), "2");
        assert_eq!(bucket("0.0025"), "2");
        assert_eq!(bucket("0.005"), "3");
        assert_eq!(bucket("5"), "3");
        assert_eq!(bucket("+Inf"), "4");
        assert!(mine.contains(&"test_histogram_seconds_count{role=\"r\\\"x\",node=\"1\"} 4"), "{out}");
        assert!(mine.contains(&"test_histogram_seconds_sum{role=\"r\\\"x\",node=\"1\"} 60.003035"), "{out}");
    }

    /// What one observation costs: run by bench/histograms.sh (`-- --ignored --nocapture`), which
    /// prints it beside the throughput runs.
    #[test]
    #[ignore = "a benchmark: prints a figure"]
    fn record_cost() {
        enable();
        let h = LatencyHistogram::new("bench_record_cost_seconds", &[("role", "bench")]);
        let n = 50_000_000u64;
        let started = std::time::Instant::now();
        for i in 0..n {
            // Spread over the buckets as real latencies are (1 µs .. 16 ms).
            h.record_micros(std::hint::black_box(1 + (i * 7919) % 16_384));
        }
        let took = started.elapsed();
        println!(
            "histogram record: {:.2} ns per observation ({n} in {took:?})",
            took.as_nanos() as f64 / n as f64
        );
    }
}
