//! The server's metrics, rendered in Prometheus' text format with vLLM's names under a
//! `faascale:` prefix and a `model_name` label (as vLLM labels them).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// vLLM's bucket bounds (seconds) for each histogram.
const TTFT_BUCKETS_S: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
const ITL_BUCKETS_S: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const REQUEST_BUCKETS_S: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];

pub struct Histogram {
    bounds: &'static [f64],
    /// counts[i]: observations <= bounds[i] and > bounds[i-1]; the last is past every bound.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_ns: AtomicU64::new(0) }
    }

    pub fn observe(&self, seconds: f64) {
        let s = if seconds.is_finite() && seconds > 0.0 { seconds } else { 0.0 };
        let i = self.bounds.iter().position(|&b| s <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add((s * 1e9).min(u64::MAX as f64 / 4.0) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0u64;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"{b:?}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{label}}} {sum:?}\n{name}_count{{{label}}} {cum}");
    }
}

/// What the scheduler reports at the moment `/metrics` is read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub running: usize,
    pub waiting: usize,
    /// Fraction of the KV cache in use, 0 ..= 1 (vLLM's `kv_cache_usage_perc` is a fraction too).
    pub kv_usage: f64,
}

pub struct Metrics {
    label: String,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub success_stop: AtomicU64,
    pub success_length: AtomicU64,
    pub model_load_time_s: f64,
}

impl Metrics {
    pub fn new(model_name: &str, model_load_time_s: f64) -> Self {
        Metrics {
            label: format!("model_name=\"{}\"", escape_label(model_name)),
            ttft: Histogram::new(TTFT_BUCKETS_S),
            itl: Histogram::new(ITL_BUCKETS_S),
            e2e: Histogram::new(REQUEST_BUCKETS_S),
            queue: Histogram::new(REQUEST_BUCKETS_S),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            success_stop: AtomicU64::new(0),
            success_length: AtomicU64::new(0),
            model_load_time_s,
        }
    }

    pub fn render(&self, g: Gauges) -> String {
        let l = &self.label;
        let mut out = String::with_capacity(8 << 10);
        self.ttft.render(&mut out, "faascale:time_to_first_token_seconds", "Time to first token in seconds.", l);
        self.itl.render(&mut out, "faascale:inter_token_latency_seconds", "Time between output tokens in seconds.", l);
        self.e2e.render(&mut out, "faascale:e2e_request_latency_seconds", "End-to-end request latency in seconds.", l);
        self.queue.render(
            &mut out,
            "faascale:request_queue_time_seconds",
            "Time a request waited in the queue before it was first scheduled, in seconds.",
            l,
        );
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP faascale:{name} {help}\n# TYPE faascale:{name} gauge\nfaascale:{name}{{{l}}} {v:?}"
            );
        };
        gauge(&mut out, "num_requests_running", "Requests in the running batch.", g.running as f64);
        gauge(&mut out, "num_requests_waiting", "Requests waiting to be scheduled.", g.waiting as f64);
        gauge(&mut out, "kv_cache_usage_perc", "KV-cache usage: 0 is empty, 1 is full.", g.kv_usage);
        gauge(&mut out, "model_load_time_seconds", "Time the model took to load, in seconds.", self.model_load_time_s);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP faascale:{name} {help}\n# TYPE faascale:{name} counter\nfaascale:{name}{{{l}}} {v}"
            );
        };
        counter(
            &mut out,
            "prompt_tokens_total",
            "Prompt tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "generation_tokens_total",
            "Tokens generated.",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP faascale:request_success_total Requests that finished, by finish reason.\n\
             # TYPE faascale:request_success_total counter\n\
             faascale:request_success_total{{{l},finished_reason=\"stop\"}} {}\n\
             faascale:request_success_total{{{l},finished_reason=\"length\"}} {}",
            self.success_stop.load(Ordering::Relaxed),
            self.success_length.load(Ordering::Relaxed)
        );
        out
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the line that starts with `key ` in Prometheus text.
    fn value(text: &str, key: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(' ')).unwrap_or_else(|| {
            panic!("no {key} in\n{text}");
        });
        line[key.len() + 1..].parse().unwrap()
    }

    #[test]
    fn renders_prometheus_text_with_vllm_names() {
        let m = Metrics::new("my \"model\"", 1.5);
        m.ttft.observe(0.003);
        m.ttft.observe(0.2);
        m.ttft.observe(1e6);
        m.itl.observe(0.02);
        m.prompt_tokens.fetch_add(10, Ordering::Relaxed);
        m.success_length.fetch_add(2, Ordering::Relaxed);
        let t = m.render(Gauges { running: 3, waiting: 1, kv_usage: 0.25 });
        let l = r#"model_name="my \"model\"""#;
        let b = |le: &str| value(&t, &format!("faascale:time_to_first_token_seconds_bucket{{{l},le=\"{le}\"}}"));
        assert_eq!((b("0.001"), b("0.005"), b("0.25"), b("2560.0"), b("+Inf")), (0.0, 1.0, 2.0, 2.0, 3.0));
        assert_eq!(value(&t, &format!("faascale:time_to_first_token_seconds_count{{{l}}}")), 3.0);
        let sum = value(&t, &format!("faascale:time_to_first_token_seconds_sum{{{l}}}"));
        assert!((sum - (1e6 + 0.203)).abs() < 1e-3, "{sum}");
        assert_eq!(value(&t, &format!("faascale:num_requests_running{{{l}}}")), 3.0);
        assert_eq!(value(&t, &format!("faascale:num_requests_waiting{{{l}}}")), 1.0);
        assert_eq!(value(&t, &format!("faascale:kv_cache_usage_perc{{{l}}}")), 0.25);
        assert_eq!(value(&t, &format!("faascale:prompt_tokens_total{{{l}}}")), 10.0);
        assert_eq!(value(&t, &format!("faascale:generation_tokens_total{{{l}}}")), 0.0);
        assert_eq!(value(&t, &format!("faascale:request_success_total{{{l},finished_reason=\"length\"}}")), 2.0);
        assert_eq!(value(&t, &format!("faascale:model_load_time_seconds{{{l}}}")), 1.5);
        for name in ["inter_token_latency_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"] {
            assert!(t.contains(&format!("# TYPE faascale:{name} histogram")), "{name}");
        }
        // every sample line is `name{labels} number`
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
