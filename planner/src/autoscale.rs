//! The autoscaler of one model: how many nodes it should have, from its queue and arrival rate.
//!
//! Scale out: the target is the larger of
//! - the rate term: arrival rate × mean service time (how long a request holds a batch slot) /
//!   (slots per node × `target_utilization`) — Little's law — where the rate is the larger of
//!   the rate over the last `window_s` and the rate of the last `burst_arrivals` arrivals
//!   (that many over the time since the first of them): a burst is seen after a few dozen
//!   requests and answered with several nodes at once, instead of one more node per tick
//!   while a windowed average catches up; a lull must last the long window before the target
//!   falls;
//! - the backlog term: (queued + in service) / slots per node, rounded up.
//!
//! and never below `min_nodes`, nor below 1 while any request waits or runs. Scale in is
//! left to the caller with `keep_alive_s`: a node is released only after it has been idle that
//! long *and* the model has more nodes than the target.

use std::collections::VecDeque;

/// Settings of the policy.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoscalePolicy {
    /// Arrivals over this many seconds give the sustained rate.
    pub window_s: f64,
    /// The most recent this many arrivals give the burst rate (≥ 2).
    pub burst_arrivals: usize,
    /// Fraction of batch slots the rate term aims to fill.
    pub target_utilization: f64,
    /// How long an idle node is kept before release.
    pub keep_alive_s: f64,
    pub min_nodes: usize,
    pub max_nodes: usize,
}

impl Default for AutoscalePolicy {
    fn default() -> Self {
        AutoscalePolicy {
            window_s: 10.0,
            burst_arrivals: 32,
            target_utilization: 0.7,
            keep_alive_s: 30.0,
            min_nodes: 0,
            max_nodes: 1024,
        }
    }
}

impl AutoscalePolicy {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.window_s.is_finite() && self.window_s > 0.0) {
            return Err(format!("autoscaler window {} s must be positive", self.window_s));
        }
        if self.burst_arrivals < 2 || self.burst_arrivals > MAX_WINDOW_ARRIVALS {
            return Err(format!("burst arrivals {}: need 2 ..= {MAX_WINDOW_ARRIVALS}", self.burst_arrivals));
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            return Err(format!("target utilization {} must be in (0, 1]", self.target_utilization));
        }
        if !(self.keep_alive_s.is_finite() && self.keep_alive_s >= 0.0) {
            return Err(format!("keep-alive {} s must be finite and ≥ 0", self.keep_alive_s));
        }
        if self.min_nodes > self.max_nodes {
            return Err(format!("min nodes {} is more than max nodes {}", self.min_nodes, self.max_nodes));
        }
        Ok(())
    }
}

/// The most arrivals remembered for the rate (older ones are dropped first; a rate above this
/// many per window is counted as this many).
pub const MAX_WINDOW_ARRIVALS: usize = 1 << 20;

/// The state of one model's autoscaler.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    pub policy: AutoscalePolicy,
    arrivals: VecDeque<f64>,
    service_s_mean: f64,
}

impl Autoscaler {
    /// `service_s_prior`: the mean service time assumed before any request completes.
    pub fn new(policy: AutoscalePolicy, service_s_prior: f64) -> Autoscaler {
        Autoscaler { policy, arrivals: VecDeque::new(), service_s_mean: service_s_prior.max(1e-6) }
    }

    pub fn on_arrival(&mut self, t: f64) {
        if self.arrivals.len() == MAX_WINDOW_ARRIVALS {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(t);
    }

    /// A request held a slot for `service_s`: the mean moves 1/16 of the way towards it.
    pub fn on_completion(&mut self, service_s: f64) {
        if service_s.is_finite() && service_s > 0.0 {
            self.service_s_mean += (service_s - self.service_s_mean) / 16.0;
        }
    }

    /// Arrivals per second: the larger of the rate over the window ending at `now` and the
    /// rate of the last `burst_arrivals` arrivals.
    pub fn rate_per_s(&mut self, now: f64) -> f64 {
        while self.arrivals.front().is_some_and(|&t| t < now - self.policy.window_s) {
            self.arrivals.pop_front();
        }
        let long = self.arrivals.len() as f64 / self.policy.window_s;
        let k = self.policy.burst_arrivals;
        let burst = match self.arrivals.len().checked_sub(k) {
            // k arrivals in (now − first of them]; at least a millisecond, so k arrivals at one
            // instant do not make an infinite rate.
            Some(i) => k as f64 / (now - self.arrivals[i]).max(1e-3),
            None => 0.0,
        };
        long.max(burst)
    }

    /// The number of nodes the model should have now.
    pub fn target_nodes(&mut self, now: f64, queued: usize, in_service: usize, slots_per_node: usize) -> usize {
        let slots = slots_per_node.max(1) as f64;
        let rate = self.rate_per_s(now);
        let by_rate = (rate * self.service_s_mean / (slots * self.policy.target_utilization)).ceil();
        let by_backlog = ((queued + in_service) as f64 / slots).ceil();
        let mut target = by_rate.max(by_backlog).min(self.policy.max_nodes as f64) as usize;
        if queued + in_service > 0 {
            target = target.max(1);
        }
        target.max(self.policy.min_nodes).min(self.policy.max_nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_backlog_terms() {
        let mut a = Autoscaler::new(AutoscalePolicy::default(), 2.0);
        assert_eq!(a.target_nodes(0.0, 0, 0, 32), 0);
        assert_eq!(a.target_nodes(0.0, 1, 0, 32), 1);
        assert_eq!(a.target_nodes(0.0, 65, 0, 32), 3);
        // 100 arrivals per second, 2 s each, 32 slots at 70 %: ceil(200 / 22.4) = 9.
        for i in 0..1000 {
            a.on_arrival(i as f64 / 100.0);
        }
        assert_eq!(a.target_nodes(10.0, 0, 0, 32), 9);
        // The window moves on: 20 s later the rate has gone.
        assert_eq!(a.target_nodes(30.0, 0, 0, 32), 0);
        // A burst: 32 arrivals in the 0.1 s after a quiet minute are seen at once
        // (320 /s · 2 s / 22.4 slots = 29 nodes); 5 s later the burst rate has decayed to
        // 32 / 5.1 s and the window's 32 / 10 s: 1 node.
        for i in 0..32 {
            a.on_arrival(60.0 + i as f64 / 320.0);
        }
        assert_eq!(a.target_nodes(60.1, 0, 0, 32), 29);
        assert_eq!(a.target_nodes(65.1, 0, 0, 32), 1);
        let mut p = AutoscalePolicy { min_nodes: 2, max_nodes: 4, ..Default::default() };
        let mut b = Autoscaler::new(p.clone(), 2.0);
        assert_eq!(b.target_nodes(0.0, 0, 0, 32), 2);
        assert_eq!(b.target_nodes(0.0, 10_000, 0, 32), 4);
        p.min_nodes = 5;
        assert!(p.validate().is_err());
        b.on_completion(4.0);
        assert!((b.service_s_mean - 2.125).abs() < 1e-12);
    }
}
