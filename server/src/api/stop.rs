//! Stop strings over streamed text: text that could still be the start of a stop string is held
//! back until it is known not to be; at a match the output ends just before the stop string
//! (OpenAI leaves the stop string out).

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// Text safe to send now.
    pub emit: String,
    /// A stop string was found: the output ends after `emit`.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops, held: String::new() }
    }

    pub fn push(&mut self, delta: &str) -> Step {
        if self.stops.is_empty() {
            return Step { emit: delta.to_string(), stopped: false };
        }
        self.held.push_str(delta);
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(pos) = first {
            let emit = self.held[..pos].to_string();
            self.held.clear();
            return Step { emit, stopped: true };
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let emit = self.held[..keep].to_string();
        self.held.drain(..keep);
        Step { emit, stopped: false }
    }

    /// The text held back, at the end of the generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let s = m.push(p);
            out.push_str(&s.emit);
            if s.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stops_across_pieces_and_leaves_the_stop_out() {
        assert_eq!(run(&["END"], &["abc E", "N", "D more"]), ("abc ".into(), true));
        assert_eq!(run(&["END"], &["abc EN", "d"]), ("abc ENd".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["\n\n", "x"], &["hi\n", "\nthere"]), ("hi".into(), true));
        // the earliest match wins, whichever string it is
        assert_eq!(run(&["long stop", "p"], &["a long stop"]), ("a ".into(), true));
        assert_eq!(run(&["stop", "lo"], &["a long stop"]), ("a ".into(), true));
        assert_eq!(run(&["ü"], &["aü"]), ("a".into(), true));
    }

    #[test]
    fn holds_back_only_possible_prefixes() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("aaS").emit, "aa");
        assert_eq!(m.push("T").emit, "");
        assert_eq!(m.push("x").emit, "STx");
        assert_eq!(m.push("日本").emit, "日本");
    }
}
