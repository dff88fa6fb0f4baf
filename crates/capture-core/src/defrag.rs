//! IPv4 and IPv6 fragment reassembly with hard limits.
//!
//! Large SIP INVITEs (SDES crypto lines, VoLTE SDP) are often fragmented over UDP, so reassembly is
//! required; but a mirror port may also carry fragment floods. Memory is therefore bounded by
//! [`Limits`]: a cap on datagrams in flight and on buffered bytes, and a timeout measured in capture
//! time (so replaying a file behaves like the live capture did). When a limit is hit the oldest
//! datagram is evicted and counted, never silently.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub proto: u8,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Datagrams being reassembled at once.
    pub max_datagrams: usize,
    /// Bytes held across all of them.
    pub max_bytes: usize,
    /// A datagram not complete within this many nanoseconds of its first fragment is dropped.
    pub timeout_ns: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_datagrams: 4096, max_bytes: 32 << 20, timeout_ns: 30_000_000_000 }
    }
}

/// Counters for reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefragStats {
    pub completed: u64,
    pub timed_out: u64,
    pub evicted: u64,
    pub invalid: u64,
}

#[derive(Debug)]
pub enum FragOutcome {
    Held,
    Dropped,
    /// The datagram is whole; read it with [`Defrag::output`].
    Complete,
}

struct Datagram {
    first_ts: i64,
    data: Vec<u8>,
    /// Sorted, disjoint byte ranges received so far.
    have: Vec<(usize, usize)>,
    total: Option<usize>,
}

#[derive(Default)]
pub struct Defrag {
    limits: Limits,
    table: FxHashMap<FragKey, Datagram>,
    bytes: usize,
    out: Vec<u8>,
    stats: DefragStats,
}

/// IP datagrams cannot exceed this payload size (IPv6 jumbograms are not fragmented).
const MAX_DATAGRAM: usize = 65_535;

impl Defrag {
    pub fn with_limits(limits: Limits) -> Self {
        Defrag { limits, ..Default::default() }
    }

    pub fn stats(&self) -> DefragStats {
        self.stats
    }

    pub fn in_flight(&self) -> usize {
        self.table.len()
    }

    /// The last completed datagram's payload.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn insert(&mut self, ts: i64, key: FragKey, offset: usize, more: bool, payload: &[u8]) -> FragOutcome {
        let end = offset + payload.len();
        if end > MAX_DATAGRAM || (more && !payload.len().is_multiple_of(8)) {
            self.stats.invalid += 1;
            return FragOutcome::Dropped;
        }
        if !self.table.contains_key(&key) {
            self.expire(ts);
            while self.table.len() >= self.limits.max_datagrams || self.bytes + end > self.limits.max_bytes {
                if !self.evict_oldest() {
                    break;
                }
            }
            if end > self.limits.max_bytes {
                self.stats.invalid += 1;
                return FragOutcome::Dropped;
            }
            self.table.insert(key, Datagram { first_ts: ts, data: Vec::new(), have: Vec::new(), total: None });
        }
        let d = self.table.get_mut(&key).expect("inserted above");
        if !more {
            if d.total.is_some_and(|t| t != end) || d.have.last().is_some_and(|r| r.1 > end) {
                self.stats.invalid += 1;
                let d = self.table.remove(&key).unwrap();
                self.bytes -= d.data.len();
                return FragOutcome::Dropped;
            }
            d.total = Some(end);
        } else if d.total.is_some_and(|t| end > t) {
            self.stats.invalid += 1;
            return FragOutcome::Dropped;
        }
        if d.data.len() < end {
            self.bytes += end - d.data.len();
            d.data.resize(end, 0);
        }
        // Overlaps: later bytes win (both policies exist in the wild; captures rarely disagree).
        d.data[offset..end].copy_from_slice(payload);
        insert_range(&mut d.have, offset, end);
        if let Some(total) = d.total
            && d.have.len() == 1
            && d.have[0] == (0, total)
        {
            let d = self.table.remove(&key).unwrap();
            self.bytes -= d.data.len();
            self.out = d.data;
            self.stats.completed += 1;
            return FragOutcome::Complete;
        }
        FragOutcome::Held
    }

    /// Drops datagrams whose first fragment is older than the timeout.
    pub fn expire(&mut self, now: i64) {
        let timeout = self.limits.timeout_ns;
        let mut freed = 0;
        let mut n = 0;
        self.table.retain(|_, d| {
            let keep = now.saturating_sub(d.first_ts) <= timeout;
            if !keep {
                freed += d.data.len();
                n += 1;
            }
            keep
        });
        self.bytes -= freed;
        self.stats.timed_out += n;
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(key) = self.table.iter().min_by_key(|(_, d)| d.first_ts).map(|(k, _)| *k) else { return false };
        let d = self.table.remove(&key).unwrap();
        self.bytes -= d.data.len();
        self.stats.evicted += 1;
        true
    }
}

fn insert_range(ranges: &mut Vec<(usize, usize)>, start: usize, end: usize) {
    let (mut s, mut e) = (start, end);
    ranges.retain(|&(a, b)| {
        if b < s || a > e {
            true
        } else {
            s = s.min(a);
            e = e.max(b);
            false
        }
    });
    let at = ranges.partition_point(|r| r.0 < s);
    ranges.insert(at, (s, e));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::v4;

    fn key(id: u32) -> FragKey {
        FragKey { src: v4(10, 0, 0, 1), dst: v4(10, 0, 0, 2), id, proto: 17 }
    }

    #[test]
    fn reassembles_out_of_order() {
        let mut d = Defrag::default();
        let data: Vec<u8> = (0..40u8).collect();
        assert!(matches!(d.insert(0, key(1), 24, false, &data[24..]), FragOutcome::Held));
        assert!(matches!(d.insert(0, key(1), 0, true, &data[..16]), FragOutcome::Held));
        assert!(matches!(d.insert(0, key(1), 16, true, &data[16..24]), FragOutcome::Complete));
        assert_eq!(d.output(), &data[..]);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn bounded_and_times_out() {
        let mut d = Defrag::with_limits(Limits { max_datagrams: 2, max_bytes: 1 << 20, timeout_ns: 10 });
        for id in 0..5 {
            d.insert(id as i64, key(id), 0, true, &[0; 8]);
        }
        assert_eq!(d.in_flight(), 2);
        assert_eq!(d.stats().evicted, 3);
        d.expire(100);
        assert_eq!(d.in_flight(), 0);
        assert_eq!(d.stats().timed_out, 2);
    }
}
