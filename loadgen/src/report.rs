//! The end-of-run report: one JSON object (`--json`, the shape fixed by the loadgen contract) or a
//! human table, both built from the same [`Report`].

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::service::Errors;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Latency {
    /// From a histogram of nanoseconds (all zero when it is empty).
    pub fn from_ns(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| round3(ns as f64 / 1000.0);
        Latency {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: round3(h.mean() / 1000.0),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ConnectStats {
    pub established: u64,
    pub failed: u64,
    /// Connections established per second, from the first open to the last login.
    pub rate_per_s: f64,
    /// Seconds from the first connection opened to the last one logged in.
    pub time_to_all_s: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cpu {
    /// CPU seconds loadgen used during the measured phase.
    pub loadgen: f64,
    /// CPU seconds the --pid process used during the measured phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

/// Rate workload extras.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RateInfo {
    pub target_qps: f64,
    /// Queries the schedule had made due but no free connection had sent when the run ended.
    pub backlog: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub workload: &'static str,
    pub target: String,
    pub connections: u32,
    pub threads: usize,
    pub duration_s: f64,
    pub queries: u64,
    pub qps: f64,
    /// Query latency; for the connect workload, open-to-logged-in time per connection.
    pub latency_us: Latency,
    pub errors: Errors,
    pub connect: ConnectStats,
    /// Seconds from the end of the measured phase until every connection was closed (each sent
    /// COM_QUIT and saw the server close, or the drain timeout closed what was left).
    pub close_s: f64,
    pub cpu_s: Cpu,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rss_kib_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockstat_mem_pages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockstat_mem_pages_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
}

impl Report {
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("the report serializes")
    }

    /// True when every connection was established and every reply verified.
    pub fn ok(&self) -> bool {
        self.errors.total() == 0 && self.connect.established == u64::from(self.connections)
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_us;
        let e = &self.errors;
        let c = &self.connect;
        let _ = writeln!(s, "workload        {} -> {}", self.workload, self.target);
        let _ = writeln!(
            s,
            "connections     {} established, {} failed ({} threads); {:.0}/s, all in {:.3} s",
            c.established, c.failed, self.threads, c.rate_per_s, c.time_to_all_s
        );
        let _ = writeln!(s, "duration        {:.3} s", self.duration_s);
        let _ = writeln!(s, "queries         {}  ({:.1} qps)", self.queries, self.qps);
        if let Some(r) = &self.rate {
            let _ = writeln!(
                s,
                "rate            target {:.1} qps, backlog {} at the end",
                r.target_qps, r.backlog
            );
        }
        if let Some(d) = self.depth {
            let _ = writeln!(s, "depth           {d} in flight per connection");
        }
        let what = if self.workload == "connect" {
            "connect us"
        } else {
            "latency us"
        };
        let _ = writeln!(
            s,
            "{what:<16}p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        let _ = writeln!(
            s,
            "errors          protocol {}  mismatch {}  connect {}  server_err {}  closed {}",
            e.protocol, e.mismatch, e.connect, e.server_err, e.closed
        );
        let mut cpu = format!("loadgen {:.2}", self.cpu_s.loadgen);
        if let Some(t) = self.cpu_s.target {
            let _ = write!(cpu, "  target {t:.2}");
            if self.queries > 0 {
                let _ = write!(
                    cpu,
                    " ({:.2} ms per 1000 queries)",
                    t * 1e6 / self.queries as f64
                );
            }
        }
        let _ = writeln!(s, "cpu s           {cpu}");
        if let (Some(b), Some(a)) = (self.target_rss_kib_before, self.target_rss_kib) {
            let _ = writeln!(s, "target rss KiB  before {b}  after {a}");
        }
        if let (Some(b), Some(a)) = (self.sockstat_mem_pages_before, self.sockstat_mem_pages) {
            let _ = writeln!(s, "tcp mem pages   before {b}  after {a}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_contract_keys_and_omits_target_fields_without_pid() {
        let mut h = crate::service::new_histogram();
        for v in [100_000u64, 200_000, 300_000] {
            h.record(v).unwrap();
        }
        let r = Report {
            workload: "qps",
            target: "127.0.0.1:6033".into(),
            connections: 64,
            threads: 2,
            duration_s: 10.0,
            queries: 3,
            qps: 0.3,
            latency_us: Latency::from_ns(&h),
            connect: ConnectStats {
                established: 64,
                ..Default::default()
            },
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        for k in [
            "workload",
            "target",
            "connections",
            "threads",
            "duration_s",
            "queries",
            "qps",
            "latency_us",
            "errors",
            "connect",
            "close_s",
            "cpu_s",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(v["latency_us"][k].as_f64().is_some(), "missing {k}");
        }
        assert!((v["latency_us"]["p50"].as_f64().unwrap() - 200.0).abs() < 0.5);
        assert!((v["latency_us"]["max"].as_f64().unwrap() - 300.0).abs() < 0.5);
        for k in ["protocol", "mismatch", "connect", "server_err", "closed"] {
            assert_eq!(v["errors"][k].as_u64(), Some(0));
        }
        assert!(v["cpu_s"].get("target").is_none());
        assert!(v.get("target_rss_kib").is_none());
        assert!(r.ok());
        let mut bad = r.clone();
        bad.errors.mismatch = 1;
        assert!(!bad.ok());
        bad.errors.mismatch = 0;
        bad.connect.established = 63;
        assert!(!bad.ok());
        assert!(r.human().contains("p99"));
    }
}
