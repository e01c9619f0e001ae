//! Address ranges: what an nftables interval set holds. An `ipBlock` with `except` becomes
//! the cidr minus its exceptions, computed here so the set holds only what is allowed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// An inclusive range of addresses of one family (`v6` false: the values fit in 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub v6: bool,
    pub first: u128,
    pub last: u128,
}

impl Range {
    pub fn addr(ip: IpAddr) -> Range {
        let (v6, n) = bits(ip);
        Range {
            v6,
            first: n,
            last: n,
        }
    }

    pub fn network(net: IpNetwork) -> Range {
        let (v6, first) = bits(net.network());
        let width = if v6 { 128 } else { 32 };
        // A /0 spans the whole family: the host mask is all ones, without shifting by 128.
        let host_bits = width - u32::from(net.prefix());
        let host_mask = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        Range {
            v6,
            first,
            last: first | host_mask,
        }
    }

    fn ip(&self, n: u128) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(n))
        } else {
            // Values of an IPv4 range are below 2^32 by construction.
            IpAddr::V4(Ipv4Addr::from(n as u32))
        }
    }
}

/// As nft writes an element: one address, or `first-last`.
impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.ip(self.first))
        } else {
            write!(f, "{}-{}", self.ip(self.first), self.ip(self.last))
        }
    }
}

fn bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// `cidr` minus every network of `except` (of the same family; others are ignored).
pub fn subtract(cidr: IpNetwork, except: &[IpNetwork]) -> Vec<Range> {
    let mut out = vec![Range::network(cidr)];
    for e in except {
        let cut = Range::network(*e);
        out = out.into_iter().flat_map(|r| minus(r, cut)).collect();
    }
    out
}

fn minus(r: Range, cut: Range) -> Vec<Range> {
    if r.v6 != cut.v6 || cut.last < r.first || cut.first > r.last {
        return vec![r];
    }
    let mut out = Vec::new();
    if cut.first > r.first {
        out.push(Range {
            last: cut.first - 1,
            ..r
        });
    }
    if cut.last < r.last {
        out.push(Range {
            first: cut.last + 1,
            ..r
        });
    }
    out
}

/// Sorted, with overlapping ranges merged. Adjacent ranges stay apart, so one pod's address
/// coming or going changes one element rather than rewriting a merged run.
pub fn normalise(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if prev.v6 == r.v6 && r.first <= prev.last => {
                prev.last = prev.last.max(r.last)
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn show(rs: &[Range]) -> Vec<String> {
        rs.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn except_cuts_holes() {
        let r = subtract(
            net("10.0.0.0/24"),
            &[net("10.0.0.16/28"), net("10.0.0.255/32")],
        );
        assert_eq!(show(&r), ["10.0.0.0-10.0.0.15", "10.0.0.32-10.0.0.254"]);
    }

    #[test]
    fn edges_of_the_address_space() {
        assert_eq!(
            show(&[Range::network(net("0.0.0.0/0"))]),
            ["0.0.0.0-255.255.255.255"]
        );
        assert_eq!(
            show(&[Range::network(net("::/0"))]),
            ["::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
        );
        assert_eq!(show(&[Range::network(net("10.0.0.7/32"))]), ["10.0.0.7"]);
        // Cutting the first and the last address of the whole space must not wrap.
        let r = subtract(
            net("0.0.0.0/0"),
            &[net("0.0.0.0/32"), net("255.255.255.255/32")],
        );
        assert_eq!(show(&r), ["0.0.0.1-255.255.255.254"]);
        let r = subtract(net("::/0"), &[net("::/0")]);
        assert!(r.is_empty());
        let r = subtract(net("10.0.0.0/31"), &[net("10.0.0.1/32")]);
        assert_eq!(show(&r), ["10.0.0.0"]);
    }

    #[test]
    fn other_family_exceptions_are_ignored() {
        let r = subtract(net("10.0.0.0/30"), &[net("::/0")]);
        assert_eq!(show(&r), ["10.0.0.0-10.0.0.3"]);
    }

    #[test]
    fn normalise_merges_overlaps_only() {
        let a = |s: &str| Range::addr(s.parse().unwrap());
        let r = normalise(vec![
            a("10.0.0.2"),
            Range::network(net("10.0.0.0/30")),
            a("10.0.0.4"),
            a("10.0.0.4"),
            a("::1"),
        ]);
        assert_eq!(show(&r), ["10.0.0.0-10.0.0.3", "10.0.0.4", "::1"]);
    }
}
