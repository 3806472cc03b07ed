//! What the reliability tests look at from outside the processes: the filter's decision
//! line (`x-kvgate-decision`), the sidecar's `/v1/state` (index per worker, this
//! gateway's bookkeeping, other replicas' bookkeeping), the mock workers' true caches
//! (`/kvgate/cache`) and counters (`/kvgate/stats`), the filter's in-flight gauges in
//! Envoy's stats, and process memory from `/proc`.

use kvgate_stack::Envoy;
use serde_json::Value;
use std::collections::BTreeMap;

/// One candidate of a decision line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Worker instance id.
    pub worker: u64,
    /// Data-parallel rank.
    pub dp_rank: u32,
    /// Prefill candidate (disaggregated mode).
    pub prefill: bool,
    /// Blocks of the prompt the index says this worker holds.
    pub overlap: u64,
    /// The chosen one (`*`).
    pub chosen: bool,
}

/// A parsed `x-kvgate-decision` line:
/// `mode=aggregated isl=34 bs=16 | 1/0 ov=0 pf=0 dc=0 logit=4.12 | 3/0 ov=2 … logit=2.12* | degraded=why`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// `mode=`.
    pub mode: String,
    /// `isl=` (prompt tokens used for the decision).
    pub isl: u64,
    /// Every candidate.
    pub candidates: Vec<Candidate>,
    /// `degraded=` reason, if the decision was made on load alone.
    pub degraded: Option<String>,
}

impl Decision {
    /// Parses a decision line; None when it is not one.
    pub fn parse(line: &str) -> Option<Decision> {
        let mut parts = line.split(" | ");
        let head = parts.next()?;
        let mut d = Decision::default();
        for kv in head.split_whitespace() {
            match kv.split_once('=') {
                Some(("mode", v)) => d.mode = v.to_string(),
                Some(("isl", v)) => d.isl = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        if d.mode.is_empty() {
            return None;
        }
        // Disaggregated: `… prefill: | <prefill candidates> decode: | <decode candidates>`.
        let mut in_prefill = head.trim_end().ends_with("prefill:");
        for part in parts {
            let mut part = part.trim();
            if let Some(why) = part.strip_prefix("degraded=") {
                d.degraded = Some(why.to_string());
                continue;
            }
            let prefill = in_prefill;
            if let Some(before) = part.strip_suffix("decode:") {
                part = before.trim_end();
                in_prefill = false;
            }
            let (prefill, rest) = match part.strip_prefix("prefill:") {
                Some(r) => (true, r.trim()),
                None => (prefill, part),
            };
            let mut words = rest.split_whitespace();
            let Some((w, r)) = words.next().and_then(|id| id.split_once('/')) else {
                continue;
            };
            let (Ok(worker), Ok(dp_rank)) = (w.parse(), r.parse()) else {
                continue;
            };
            let mut c = Candidate {
                worker,
                dp_rank,
                prefill,
                overlap: 0,
                chosen: rest.ends_with('*'),
            };
            for kv in words {
                if let Some(v) = kv.strip_prefix("ov=") {
                    c.overlap = v.trim_end_matches('*').parse().unwrap_or(0);
                }
            }
            d.candidates.push(c);
        }
        Some(d)
    }

    /// The chosen decode candidate.
    pub fn chosen(&self) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.chosen && !c.prefill)
    }

    /// KV-aware: not degraded, and the chosen worker holds part of the prompt (the
    /// chosen prefill worker in disaggregated mode: the decode pick ignores the cache).
    pub fn kv_aware(&self) -> bool {
        let pick = self
            .candidates
            .iter()
            .find(|c| c.chosen && c.prefill)
            .or_else(|| self.chosen());
        self.degraded.is_none() && pick.is_some_and(|c| c.overlap > 0)
    }

    /// Worker ids of every candidate.
    pub fn worker_ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.candidates.iter().map(|c| c.worker).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

fn get_json(url: &str) -> Option<Value> {
    let r = kvgate_http::get(url).ok()?;
    (r.status == 200)
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}

/// A sidecar's `/v1/state` (`base` = `http://127.0.0.1:<port>`).
pub fn sidecar_state(base: &str) -> Option<Value> {
    get_json(&format!("{base}/v1/state"))
}

/// Indexed blocks per worker instance (summed over dp ranks) in a `/v1/state`.
pub fn index_blocks(state: &Value) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for w in state["index"]["by_worker"].as_array().into_iter().flatten() {
        if let Some(id) = w["worker_id"].as_u64() {
            *out.entry(id).or_insert(0) += w["blocks"].as_u64().unwrap_or(0);
        }
    }
    out
}

/// Worker instance ids in a `/v1/state`'s worker table.
pub fn table_workers(state: &Value) -> Vec<u64> {
    state["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["instance_id"].as_u64())
        .collect()
}

/// Booked load summed over workers: (requests, prefill tokens, decode blocks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Booked {
    /// Requests in flight.
    pub requests: u64,
    /// Queued prefill tokens.
    pub prefill_tokens: u64,
    /// Active decode blocks.
    pub decode_blocks: u64,
}

impl Booked {
    /// All zero.
    pub fn is_zero(&self) -> bool {
        *self == Booked::default()
    }

    fn add(&mut self, load: &Value) {
        self.requests += load["requests"].as_u64().unwrap_or(0);
        self.prefill_tokens += load["prefill_tokens"].as_u64().unwrap_or(0);
        self.decode_blocks += load["decode_blocks"].as_u64().unwrap_or(0);
    }
}

/// This gateway's own bookkeeping as its sidecar saw it (`own_loads`), summed.
pub fn own_booked(state: &Value) -> Booked {
    let mut b = Booked::default();
    for l in state["own_loads"].as_array().into_iter().flatten() {
        b.add(&l["load"]);
    }
    b
}

/// Other replicas' bookkeeping (`loads[].replicas`), summed; and `replica_requests`.
pub fn replica_booked(state: &Value) -> (Booked, u64) {
    let mut b = Booked::default();
    for l in state["loads"].as_array().into_iter().flatten() {
        b.add(&l["replicas"]);
    }
    (b, state["replica_requests"].as_u64().unwrap_or(0))
}

/// Cached blocks of a mock worker (`/kvgate/cache`, summed over ranks).
pub fn worker_cached_blocks(worker_base: &str) -> Option<u64> {
    let v = get_json(&format!("{worker_base}/kvgate/cache"))?;
    Some(
        v["ranks"]
            .as_array()?
            .iter()
            .map(|r| r["cached_blocks"].as_u64().unwrap_or(0))
            .sum(),
    )
}

/// A mock worker's `/kvgate/stats`.
pub fn worker_stats(worker_base: &str) -> Option<Value> {
    get_json(&format!("{worker_base}/kvgate/stats"))
}

/// HTTP requests a mock worker received on its serving endpoints.
pub fn worker_requests(worker_base: &str) -> Option<u64> {
    worker_stats(worker_base).and_then(|v| v["http_requests"].as_u64())
}

/// The filter's in-flight gauges of one Envoy (all VMs summed): requests, prefill tokens,
/// decode blocks (`kvgate.inflight.*`).
pub fn envoy_inflight(envoy: &Envoy) -> Booked {
    Booked {
        requests: envoy.stat("wasmcustom.kvgate.inflight.requests"),
        prefill_tokens: envoy.stat("wasmcustom.kvgate.inflight.prefill_tokens"),
        decode_blocks: envoy.stat("wasmcustom.kvgate.inflight.decode_blocks"),
    }
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The local address a process listens on for TCP port `port` (from `/proc/net/tcp*`),
/// e.g. `127.0.0.1` or `0.0.0.0`; None when nothing listens there.
pub fn listen_address(port: u16) -> Option<String> {
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            if *state != "0A" {
                continue; // not LISTEN
            }
            let Some((ip_hex, port_hex)) = local.split_once(':') else {
                continue;
            };
            if u16::from_str_radix(port_hex, 16).ok() != Some(port) {
                continue;
            }
            return Some(decode_proc_ip(ip_hex, v6));
        }
    }
    None
}

fn decode_proc_ip(hex: &str, v6: bool) -> String {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| hex.get(2 * i..2 * i + 2))
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    if !v6 {
        if let [a, b, c, d] = bytes.as_slice() {
            // Little-endian 32-bit word.
            return std::net::Ipv4Addr::new(*d, *c, *b, *a).to_string();
        }
        return hex.to_string();
    }
    // Four little-endian 32-bit words.
    let mut out = [0u8; 16];
    for (i, word) in bytes.chunks(4).enumerate().take(4) {
        for (j, b) in word.iter().rev().enumerate() {
            if let Some(slot) = out.get_mut(4 * i + j) {
                *slot = *b;
            }
        }
    }
    std::net::Ipv6Addr::from(out).to_string()
}

/// The `q`-quantile (0..=1) of `values` (nearest rank); 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v.get(rank - 1).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_decision_lines() {
        let d = Decision::parse("mode=aggregated isl=34 bs=16 | 1/0 ov=0 pf=0 dc=0 logit=4.12 | 3/0 ov=2 pf=0 dc=0 logit=2.12* | 4/0 ov=0 pf=0 dc=0 logit=4.12").unwrap();
        assert_eq!((d.mode.as_str(), d.isl), ("aggregated", 34));
        assert_eq!(d.chosen().unwrap().worker, 3);
        assert!(d.kv_aware());
        assert_eq!(d.worker_ids(), vec![1, 3, 4]);
        let d = Decision::parse(
            "mode=aggregated isl=5 bs=16 | 1/0 ov=0 logit=1* | degraded=stale_index",
        )
        .unwrap();
        assert_eq!(d.degraded.as_deref(), Some("stale_index"));
        assert!(!d.kv_aware());
        let d = Decision::parse(
            "mode=disaggregated isl=40 bs=16 prefill: | 1/0 ov=2 pf=0 dc=0 logit=1.00 | 2/0 ov=0 pf=0 dc=0 logit=0.50* decode: | 3/0 ov=0 pf=0 dc=3 logit=3.00* | 4/0 ov=0 pf=0 dc=4 logit=4.00",
        )
        .unwrap();
        let prefill: Vec<(u64, bool)> = d
            .candidates
            .iter()
            .filter(|c| c.prefill)
            .map(|c| (c.worker, c.chosen))
            .collect();
        assert_eq!(prefill, vec![(1, false), (2, true)]);
        assert_eq!(d.chosen().unwrap().worker, 3, "the decode pick");
        assert!(!d.kv_aware(), "the chosen prefill worker holds nothing");
        assert!(Decision::parse("garbage").is_none());
    }

    #[test]
    fn quantiles_and_proc_addresses() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(decode_proc_ip("0100007F", false), "127.0.0.1");
        assert_eq!(decode_proc_ip("00000000", false), "0.0.0.0");
        assert_eq!(
            decode_proc_ip("00000000000000000000000001000000", true),
            "::1"
        );
    }
}
