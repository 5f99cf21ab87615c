//! Request traces: the Azure LLM inference trace format, time scaling, mapping onto several
//! models, and synthetic bursts.

use super::rng::Rng;
use std::fmt;

/// The most requests one trace may hold (the Azure traces have 8,818 and 19,365).
pub const MAX_REQUESTS: usize = 10_000_000;
/// The most tokens of one request's prompt or output.
pub const MAX_TOKENS: u32 = 1 << 20;

/// One request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Seconds after the trace's first request.
    pub arrival_s: f64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Index into the simulation's model list.
    pub model: usize,
}

/// A trace that cannot be read, with the line (1-based) where it went wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceError {
    pub source: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{} line {}: {}", self.source, self.line, self.message)
        }
    }
}

impl std::error::Error for TraceError {}

/// Parses the Azure LLM inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`,
/// timestamps `YYYY-MM-DD HH:MM:SS.fffffff`). Arrivals are made relative to the earliest
/// request and sorted (stably); every request gets model 0. `source` names the input in errors.
pub fn parse_azure_csv(text: &str, source: &str) -> Result<Vec<Request>, TraceError> {
    let err = |line: usize, message: String| TraceError { source: source.to_string(), line, message };
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().ok_or_else(|| err(0, "the trace is empty".into()))?;
    let cols: Vec<String> = header.trim().split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    if cols != ["timestamp", "contexttokens", "generatedtokens"] {
        return Err(err(1, format!("header {:?}: expected TIMESTAMP,ContextTokens,GeneratedTokens", truncate(header))));
    }
    let mut reqs = Vec::new();
    let mut t0 = f64::INFINITY;
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if reqs.len() == MAX_REQUESTS {
            return Err(err(n, format!("more than {MAX_REQUESTS} requests")));
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 3 {
            return Err(err(n, format!("{:?}: expected 3 comma-separated fields, found {}", truncate(line), f.len())));
        }
        let t = parse_timestamp(f[0].trim()).map_err(|m| err(n, format!("timestamp {:?}: {m}", truncate(f[0]))))?;
        let input =
            parse_tokens(f[1].trim()).map_err(|m| err(n, format!("ContextTokens {:?}: {m}", truncate(f[1]))))?;
        let output =
            parse_tokens(f[2].trim()).map_err(|m| err(n, format!("GeneratedTokens {:?}: {m}", truncate(f[2]))))?;
        if input == 0 {
            return Err(err(n, "ContextTokens 0: a request has at least one prompt token".into()));
        }
        if output == 0 {
            return Err(err(n, "GeneratedTokens 0: a request generates at least one token".into()));
        }
        t0 = t0.min(t);
        reqs.push(Request { arrival_s: t, input_tokens: input, output_tokens: output, model: 0 });
    }
    if reqs.is_empty() {
        return Err(err(0, "the trace has a header but no requests".into()));
    }
    for r in &mut reqs {
        r.arrival_s -= t0;
    }
    reqs.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(reqs)
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

fn parse_tokens(s: &str) -> Result<u32, String> {
    let v: u64 = s.parse().map_err(|_| "not a whole number".to_string())?;
    if v > MAX_TOKENS as u64 {
        return Err(format!("more than {MAX_TOKENS} tokens"));
    }
    Ok(v as u32)
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` → seconds since 1970-01-01 (proleptic Gregorian, UTC).
fn parse_timestamp(s: &str) -> Result<f64, String> {
    let (date, time) = s.split_once(' ').ok_or("expected 'YYYY-MM-DD HH:MM:SS.fffffff'")?;
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() != 3 {
        return Err("expected 'YYYY-MM-DD HH:MM:SS.fffffff'".into());
    }
    let num = |x: &str, what: &str, lo: i64, hi: i64| -> Result<i64, String> {
        if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) || x.len() > 4 {
            return Err(format!("{what} {x:?} is not a number"));
        }
        let v: i64 = x.parse().map_err(|_| format!("{what} {x:?} is not a number"))?;
        if v < lo || v > hi {
            return Err(format!("{what} {v} outside {lo}..={hi}"));
        }
        Ok(v)
    };
    let (y, m, day) = (num(d[0], "year", 1970, 9999)?, num(d[1], "month", 1, 12)?, num(d[2], "day", 1, 31)?);
    let (hh, mm) = (num(t[0], "hour", 0, 23)?, num(t[1], "minute", 0, 59)?);
    let (sec_int, frac) = match t[2].split_once('.') {
        Some((a, b)) => (a, b),
        None => (t[2], ""),
    };
    let ss = num(sec_int, "second", 0, 60)?;
    let frac_s = if frac.is_empty() {
        0.0
    } else {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("fraction of a second {frac:?} is not 1 to 9 digits"));
        }
        frac.parse::<u64>().map_err(|_| "bad fraction".to_string())? as f64 / 10f64.powi(frac.len() as i32)
    };
    Ok((days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac_s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// How requests are spread over several models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelMapping {
    /// Request i goes to model i mod M.
    RoundRobin,
    /// Each request to a model drawn uniformly with the simulation's seed.
    Random,
}

/// Divides every arrival time by `speedup` (> 1 compresses the trace) and maps the requests
/// onto `num_models` models. Keeps the order.
pub fn reshape(reqs: &mut [Request], speedup: f64, num_models: usize, mapping: ModelMapping, seed: u64) {
    let mut rng = Rng::new(seed ^ 0x6d6f_6465_6c73);
    for (i, r) in reqs.iter_mut().enumerate() {
        r.arrival_s /= speedup;
        r.model = match mapping {
            ModelMapping::RoundRobin => i % num_models.max(1),
            ModelMapping::Random => rng.below(num_models.max(1) as u64) as usize,
        };
    }
}

/// The requests of a window of `window_s` seconds of the trace (seconds of the trace as
/// recorded, before any speed-up), its start drawn uniformly with `seed` from
/// [first arrival, last arrival − `window_s`], re-based to start at 0. The whole trace when
/// `window_s` covers it. This is what a seed varies on a real trace (with the model mapping).
pub fn window(reqs: &[Request], window_s: f64, seed: u64) -> Vec<Request> {
    let (Some(first), Some(last)) = (reqs.first(), reqs.last()) else { return Vec::new() };
    let span = last.arrival_s - first.arrival_s;
    if window_s.is_nan() || window_s >= span {
        return reqs.to_vec();
    }
    let mut rng = Rng::new(seed ^ 0x7769_6e64_6f77);
    let start = first.arrival_s + rng.next_f64() * (span - window_s);
    reqs.iter()
        .filter(|r| r.arrival_s >= start && r.arrival_s < start + window_s)
        .map(|r| Request { arrival_s: r.arrival_s - start, ..r.clone() })
        .collect()
}

/// A synthetic trace: Poisson arrivals at `rate_per_s`, multiplied by `burst` during
/// `[burst_at_s, burst_at_s + burst_len_s)`, for `duration_s`; prompt and output lengths
/// uniform in [x/2, 3x/2].
#[derive(Clone, Debug, PartialEq)]
pub struct Synthetic {
    pub duration_s: f64,
    pub rate_per_s: f64,
    pub burst: f64,
    pub burst_at_s: f64,
    pub burst_len_s: f64,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

impl Synthetic {
    /// Parses `synthetic[:key=value,...]` with keys `duration_s`, `rate`, `burst`, `burst_at_s`,
    /// `burst_len_s`, `input`, `output` (defaults: 600 s, 1 request/s, a 10× burst at 300 s for
    /// 60 s, 1024 prompt tokens, 128 output tokens).
    pub fn parse(spec: &str) -> Result<Synthetic, String> {
        let rest = spec.strip_prefix("synthetic").ok_or_else(|| format!("{spec:?} is not a synthetic trace"))?;
        let mut s = Synthetic {
            duration_s: 600.0,
            rate_per_s: 1.0,
            burst: 10.0,
            burst_at_s: 300.0,
            burst_len_s: 60.0,
            input_tokens: 1024,
            output_tokens: 128,
        };
        let rest = match rest {
            "" => "",
            r => r.strip_prefix(':').ok_or_else(|| format!("{spec:?}: expected synthetic:key=value,..."))?,
        };
        for kv in rest.split(',').filter(|x| !x.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("synthetic trace: {kv:?} is not key=value"))?;
            let x: f64 = v.parse().map_err(|_| format!("synthetic trace: {k}={v:?} is not a number"))?;
            if !x.is_finite() || x < 0.0 {
                return Err(format!("synthetic trace: {k}={v} must be a finite number ≥ 0"));
            }
            match k {
                "duration_s" => s.duration_s = x,
                "rate" => s.rate_per_s = x,
                "burst" => s.burst = x,
                "burst_at_s" => s.burst_at_s = x,
                "burst_len_s" => s.burst_len_s = x,
                "input" | "output" => {
                    if x < 1.0 || x > MAX_TOKENS as f64 / 2.0 || x.fract() != 0.0 {
                        return Err(format!("synthetic trace: {k}={v} must be a whole number of tokens ≥ 1"));
                    }
                    if k == "input" {
                        s.input_tokens = x as u32
                    } else {
                        s.output_tokens = x as u32
                    }
                }
                other => {
                    return Err(format!(
                        "synthetic trace: unknown key {other:?} (known: duration_s, rate, burst, burst_at_s, burst_len_s, input, output)"
                    ))
                }
            }
        }
        if s.rate_per_s <= 0.0 || s.duration_s <= 0.0 {
            return Err("synthetic trace: rate and duration_s must be positive".into());
        }
        let expected = s.rate_per_s * s.duration_s + s.rate_per_s * s.burst * s.burst_len_s;
        if expected > MAX_REQUESTS as f64 / 2.0 {
            return Err(format!("synthetic trace: about {expected:.0} requests, more than {}", MAX_REQUESTS / 2));
        }
        Ok(s)
    }

    /// The requests, drawn with `seed` (all on model 0).
    pub fn generate(&self, seed: u64) -> Vec<Request> {
        let mut rng = Rng::new(seed ^ 0x7379_6e74_6865_7469);
        let mut out = Vec::new();
        let mut t = 0.0;
        let len = |rng: &mut Rng, x: u32| -> u32 { (x / 2).max(1) + rng.below(u64::from(x) + 1) as u32 };
        loop {
            let in_burst = t >= self.burst_at_s && t < self.burst_at_s + self.burst_len_s;
            let rate = if in_burst { self.rate_per_s * self.burst.max(1e-9) } else { self.rate_per_s };
            let next = t + rng.exp(1.0 / rate);
            // A gap that crosses the start of the burst restarts at it (memorylessness).
            if t < self.burst_at_s && next > self.burst_at_s && self.burst_len_s > 0.0 {
                t = self.burst_at_s;
                continue;
            }
            t = next;
            if t >= self.duration_s || out.len() >= MAX_REQUESTS {
                break;
            }
            let input_tokens = len(&mut rng, self.input_tokens);
            let output_tokens = len(&mut rng, self.output_tokens);
            out.push(Request { arrival_s: t, input_tokens, output_tokens, model: 0 });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_azure_lines_across_midnight() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 23:59:59.5000000,100,10\n\
                    2023-11-17 00:00:00.2500000,200,20\n";
        let r = parse_azure_csv(text, "t.csv").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].arrival_s, 0.0);
        assert!((r[1].arrival_s - 0.75).abs() < 1e-9);
        assert_eq!((r[1].input_tokens, r[1].output_tokens), (200, 20));
    }

    #[test]
    fn names_the_bad_line() {
        let cases = [
            ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,10,1\n2023-11-16 18:00:01,x,1\n", 3),
            ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,10\n", 2),
            ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-13-16 18:00:00.0,10,1\n", 2),
            ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:61:00.0,10,1\n", 2),
            ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,10,0\n", 2),
            ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,10,-3\n", 2),
            ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,99999999999,3\n", 2),
            ("time,in,out\n", 1),
        ];
        for (text, line) in cases {
            let e = parse_azure_csv(text, "t.csv").unwrap_err();
            assert_eq!(e.line, line, "{e}");
            assert!(e.to_string().starts_with(&format!("t.csv line {line}: ")), "{e}");
        }
        assert!(parse_azure_csv("", "t.csv").unwrap_err().to_string().contains("empty"));
        assert!(parse_azure_csv("TIMESTAMP,ContextTokens,GeneratedTokens\n", "t.csv").is_err());
    }

    #[test]
    fn reshape_and_synthetic() {
        let mut r = vec![Request { arrival_s: 10.0, input_tokens: 1, output_tokens: 1, model: 0 }; 6];
        reshape(&mut r, 2.0, 3, ModelMapping::RoundRobin, 1);
        assert_eq!(r.iter().map(|x| x.model).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2]);
        assert_eq!(r[0].arrival_s, 5.0);
        let s = Synthetic::parse("synthetic:rate=2,burst=10,burst_at_s=100,burst_len_s=50,duration_s=300").unwrap();
        let a = s.generate(3);
        assert_eq!(a, s.generate(3));
        let in_burst = a.iter().filter(|r| (100.0..150.0).contains(&r.arrival_s)).count() as f64;
        let before = a.iter().filter(|r| r.arrival_s < 100.0).count() as f64;
        // 1,000 expected in the burst, 200 before it.
        assert!((850.0..1150.0).contains(&in_burst), "{in_burst}");
        assert!((150.0..250.0).contains(&before), "{before}");
        assert!(a.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
        for bad in ["synthetic:rate=0", "synthetic:foo=1", "synthetic:rate=x", "synthetic;rate=1", "synthetic:input=0"]
        {
            assert!(Synthetic::parse(bad).is_err(), "{bad}");
        }
    }
}
