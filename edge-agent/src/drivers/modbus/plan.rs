//! The request planner: turns a device's tags into the fewest read requests of one poll cycle.
//!
//! Rules, per data table (coils, discrete inputs, input registers, holding registers):
//! - a request reads a contiguous range of at most `max_registers` (or `max_bits`) addresses;
//! - it may bridge addresses that no tag maps only where the unmapped run is at most `max_gap`
//!   (`max_bit_gap`) long; addresses mapped by some tag are always safe to read;
//! - a tag is served by a request whose range contains all of it.
//!
//! Greedy is optimal here: the tag with the lowest unserved start must be served by a range
//! starting at or before it; a range starting exactly there and reaching as far right as the rules
//! allow serves a superset of what any such range serves (greedy stays ahead). The tests check this
//! against exhaustive search on generated layouts.

use std::time::Duration;

use super::config::{Link, ModbusDevice, RegisterKind};
use crate::model::TagId;

/// One tag's footprint in a data table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// Data table.
    pub kind: RegisterKind,
    /// First protocol address.
    pub start: u16,
    /// Number of registers (bits).
    pub len: u16,
    /// Tag served.
    pub tag: TagId,
}

impl Item {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.len)
    }
}

/// Limits that shape requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most registers per request.
    pub max_registers: u16,
    /// Most bits per request.
    pub max_bits: u16,
    /// Longest unmapped register run a request may bridge.
    pub max_gap: u16,
    /// Longest unmapped bit run a request may bridge.
    pub max_bit_gap: u16,
}

impl From<&ModbusDevice> for Limits {
    fn from(d: &ModbusDevice) -> Self {
        Limits {
            max_registers: d.max_registers,
            max_bits: d.max_bits,
            max_gap: d.max_gap,
            max_bit_gap: d.max_bit_gap,
        }
    }
}

/// One read request of a poll cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Data table (and so function code).
    pub kind: RegisterKind,
    /// First protocol address.
    pub start: u16,
    /// Registers (bits) read.
    pub count: u16,
    /// Tags served, in address order.
    pub tags: Vec<TagId>,
}

/// Plan the requests for `items` (any order, any mix of tables).
pub fn plan(items: &[Item], limits: &Limits) -> Vec<ReadRequest> {
    let mut out = Vec::new();
    for kind in [
        RegisterKind::Coil,
        RegisterKind::Discrete,
        RegisterKind::Input,
        RegisterKind::Holding,
    ] {
        let mut its: Vec<Item> = items.iter().copied().filter(|i| i.kind == kind).collect();
        if its.is_empty() {
            continue;
        }
        its.sort_by_key(|i| (i.start, i.end(), i.tag));
        let (max_len, max_gap) = if kind.is_bit() {
            (limits.max_bits, limits.max_bit_gap)
        } else {
            (limits.max_registers, limits.max_gap)
        };
        plan_table(
            kind,
            &its,
            u32::from(max_len.max(1)),
            u32::from(max_gap),
            &mut out,
        );
    }
    out
}

/// Mapped address runs (union of tag spans), sorted, as half-open ranges.
fn mapped_runs(sorted: &[Item]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for it in sorted {
        match runs.last_mut() {
            Some(last) if u32::from(it.start) <= last.1 => last.1 = last.1.max(it.end()),
            _ => runs.push((u32::from(it.start), it.end())),
        }
    }
    runs
}

fn plan_table(
    kind: RegisterKind,
    sorted: &[Item],
    max_len: u32,
    max_gap: u32,
    out: &mut Vec<ReadRequest>,
) {
    let runs = mapped_runs(sorted);
    let mut served = vec![false; sorted.len()];
    let mut next = 0;
    while next < sorted.len() {
        if served[next] {
            next += 1;
            continue;
        }
        let s = u32::from(sorted[next].start);
        // How far right the rules let a range starting at `s` reach.
        let mut reach = s;
        for &(a, b) in runs.iter().filter(|(_, b)| *b > s) {
            let a = a.max(s);
            if a > reach && a - reach > max_gap {
                break;
            }
            reach = b;
        }
        let limit = reach.min(s + max_len);
        let mut end = s;
        let mut tags = Vec::new();
        for (i, it) in sorted.iter().enumerate().skip(next) {
            if !served[i] && it.end() <= limit {
                served[i] = true;
                end = end.max(it.end());
                tags.push(it.tag);
            }
        }
        if tags.is_empty() {
            // A tag longer than the request limit: serve it alone (config validation rejects
            // this; the planner stays total so it never loops).
            served[next] = true;
            end = sorted[next].end();
            tags.push(sorted[next].tag);
        }
        out.push(ReadRequest {
            kind,
            start: s as u16,
            count: (end - s) as u16,
            tags,
        });
    }
}

/// Estimated duration of one poll cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleEstimate {
    /// Requests per cycle.
    pub requests: usize,
    /// Wire time (RTU) + expected turnaround + pauses, every request answered.
    pub expected: Duration,
    /// Every request running into its timeout (a dead device).
    pub all_timeouts: Duration,
}

/// Bytes of an RTU response to `r` (address, function, byte count, data, CRC).
pub fn rtu_response_bytes(r: &ReadRequest) -> u32 {
    let data = if r.kind.is_bit() {
        u32::from(r.count).div_ceil(8)
    } else {
        2 * u32::from(r.count)
    };
    5 + data
}

/// Estimate the cycle time of `reqs` on `dev`.
pub fn estimate(dev: &ModbusDevice, reqs: &[ReadRequest]) -> CycleEstimate {
    let n = reqs.len() as u32;
    let pauses = dev.pause * n.saturating_sub(1);
    let wire: Duration = match &dev.link {
        Link::Tcp { .. } => Duration::ZERO,
        // Request frame 8 bytes, the response, and a 3.5-character silence after each frame.
        Link::Rtu(ser) => reqs
            .iter()
            .map(|r| ser.wire_time(8 + rtu_response_bytes(r) + 7))
            .sum(),
    };
    CycleEstimate {
        requests: reqs.len(),
        expected: wire + dev.response_time * n + pauses,
        all_timeouts: dev.timeout * n + pauses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: RegisterKind, start: u16, len: u16, tag: TagId) -> Item {
        Item {
            kind,
            start,
            len,
            tag,
        }
    }

    fn limits(max: u16, gap: u16) -> Limits {
        Limits {
            max_registers: max,
            max_bits: max,
            max_gap: gap,
            max_bit_gap: gap,
        }
    }

    #[test]
    fn contiguous_registers_merge_into_one_request() {
        let h = RegisterKind::Holding;
        let items = [item(h, 0, 2, 0), item(h, 2, 2, 1), item(h, 4, 1, 2)];
        let p = plan(&items, &limits(125, 0));
        assert_eq!(
            p,
            vec![ReadRequest {
                kind: h,
                start: 0,
                count: 5,
                tags: vec![0, 1, 2]
            }]
        );
    }

    #[test]
    fn a_gap_is_bridged_only_up_to_max_gap() {
        let h = RegisterKind::Holding;
        let items = [item(h, 0, 2, 0), item(h, 7, 2, 1)];
        assert_eq!(plan(&items, &limits(125, 4)).len(), 2);
        assert_eq!(plan(&items, &limits(125, 5)).len(), 1);
    }

    #[test]
    fn requests_respect_the_size_limit_and_tables_never_mix() {
        let h = RegisterKind::Holding;
        let i = RegisterKind::Input;
        let items = [item(h, 0, 2, 0), item(h, 2, 2, 1), item(i, 0, 1, 2)];
        let p = plan(&items, &limits(3, 10));
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|r| r.count <= 3));
    }

    #[test]
    fn overlapping_tags_share_a_request() {
        let h = RegisterKind::Holding;
        let items = [item(h, 10, 4, 0), item(h, 12, 2, 1), item(h, 10, 1, 2)];
        let p = plan(&items, &limits(125, 0));
        assert_eq!(
            p,
            vec![ReadRequest {
                kind: h,
                start: 10,
                count: 4,
                tags: vec![2, 0, 1]
            }]
        );
    }

    /// Exhaustive minimum: candidate ranges [tag start, tag end) that satisfy the rules; minimum
    /// number of ranges covering every tag (bitmask DP over tag sets).
    fn brute_force_min(items: &[Item], max_len: u32, max_gap: u32) -> usize {
        let n = items.len();
        let mut sorted = items.to_vec();
        sorted.sort_by_key(|i| (i.start, i.end()));
        let runs = mapped_runs(&sorted);
        let valid = |a: u32, b: u32| {
            if b <= a || b - a > max_len {
                return false;
            }
            // Unmapped holes inside [a, b).
            let mut pos = a;
            for &(ra, rb) in &runs {
                if rb <= pos || ra >= b {
                    continue;
                }
                if ra > pos && ra - pos > max_gap {
                    return false;
                }
                pos = pos.max(rb);
            }
            pos >= b || b - pos <= max_gap
        };
        let mut cands = Vec::new();
        for a in items.iter().map(|i| u32::from(i.start)) {
            for b in items.iter().map(|i| i.end()) {
                if valid(a, b) {
                    let mask = items
                        .iter()
                        .enumerate()
                        .filter(|(_, it)| u32::from(it.start) >= a && it.end() <= b)
                        .fold(0usize, |m, (k, _)| m | (1 << k));
                    cands.push(mask);
                }
            }
        }
        let full = (1usize << n) - 1;
        let mut dp = vec![usize::MAX; 1 << n];
        dp[0] = 0;
        for mask in 0..=full {
            if dp[mask] == usize::MAX {
                continue;
            }
            for &c in &cands {
                let m2 = mask | c;
                dp[m2] = dp[m2].min(dp[mask] + 1);
            }
        }
        dp[full]
    }

    #[test]
    fn greedy_plan_is_minimal_on_generated_layouts() {
        // Deterministic pseudo-random layouts (xorshift), small enough for exhaustive search.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for case in 0..3000 {
            let n = 1 + rnd(8) as usize;
            let max_len = 2 + rnd(12) as u16;
            let gap = rnd(5) as u16;
            let items: Vec<Item> = (0..n)
                .map(|t| {
                    let len = 1 + rnd(u64::from(max_len.min(4))) as u16;
                    item(RegisterKind::Holding, rnd(40) as u16, len, t as TagId)
                })
                .collect();
            let p = plan(&items, &limits(max_len, gap));
            // Every tag served exactly once, by a request that contains it.
            let mut seen = vec![0; n];
            for r in &p {
                assert!(r.count <= max_len, "case {case}: request too long");
                for &t in &r.tags {
                    let it = items[t as usize];
                    assert!(
                        it.start >= r.start && it.end() <= u32::from(r.start) + u32::from(r.count)
                    );
                    seen[t as usize] += 1;
                }
            }
            assert!(
                seen.iter().all(|&s| s == 1),
                "case {case}: {items:?} -> {p:?}"
            );
            let best = brute_force_min(&items, u32::from(max_len), u32::from(gap));
            assert_eq!(
                p.len(),
                best,
                "case {case}: {items:?} (max {max_len}, gap {gap}) -> {p:?}"
            );
        }
    }
}
