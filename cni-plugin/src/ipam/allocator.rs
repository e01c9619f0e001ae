//! Pure address selection: which address comes next in a set of ranges.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// One contiguous block of assignable addresses inside a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

/// Ranges of one address family, tried in order (host-local's "range set").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

impl Range {
    /// The whole subnet minus the network and broadcast addresses: host-local's default.
    pub fn whole(subnet: IpNetwork, gateway: Option<IpAddr>) -> Range {
        let net = to_u128(subnet.network());
        let size_bits = match subnet {
            IpNetwork::V4(n) => 32 - n.prefix() as u32,
            IpNetwork::V6(n) => 128 - n.prefix() as u32,
        };
        let last = if size_bits >= 128 {
            u128::MAX
        } else {
            net + ((1u128 << size_bits) - 1)
        };
        Range {
            subnet,
            start: from_u128(net + 1, subnet.network()),
            end: from_u128(last.saturating_sub(1), subnet.network()),
            gateway,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    fn reserved(&self, ip: IpAddr) -> bool {
        Some(ip) == self.gateway
            || ip == self.subnet.network()
            || matches!(self.subnet, IpNetwork::V4(n) if IpAddr::V4(n.broadcast()) == ip)
    }

    fn len(&self) -> u128 {
        to_u128(self.end) - to_u128(self.start) + 1
    }
}

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges.first().is_some_and(|r| r.start.is_ipv4())
    }

    /// The range an address belongs to (for its subnet and gateway).
    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// Next free address after `last` (round-robin like host-local, so a
    /// just-released address is not handed straight to the next pod), or
    /// `None` when every address is taken.
    pub fn next_free(&self, last: Option<IpAddr>, taken: &HashSet<IpAddr>) -> Option<IpAddr> {
        if self.ranges.is_empty() {
            return None;
        }
        let (mut ri, mut cur) = match last.and_then(|l| {
            self.ranges
                .iter()
                .position(|r| r.contains(l))
                .map(|i| (i, to_u128(l)))
        }) {
            Some((i, l)) => (i, l.checked_add(1)),
            None => (0, self.ranges.first().map(|r| to_u128(r.start))),
        };
        let total: u128 = self
            .ranges
            .iter()
            .map(Range::len)
            .fold(0, u128::saturating_add);
        // Beyond taken+reserved candidates one must be free, which bounds the
        // walk even in an IPv6 /64.
        let budget = total.min(taken.len() as u128 + 3 * self.ranges.len() as u128 + 1);
        let mut tried: u128 = 0;
        while tried <= budget {
            let range = &self.ranges[ri];
            match cur {
                Some(c) if c >= to_u128(range.start) && c <= to_u128(range.end) => {
                    let ip = from_u128(c, range.start);
                    tried += 1;
                    if !range.reserved(ip) && !taken.contains(&ip) {
                        return Some(ip);
                    }
                    cur = c.checked_add(1);
                }
                _ => {
                    ri = (ri + 1) % self.ranges.len();
                    cur = Some(to_u128(self.ranges[ri].start));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidr: &str, gw: &str) -> RangeSet {
        RangeSet {
            ranges: vec![Range::whole(
                cidr.parse().unwrap(),
                Some(gw.parse().unwrap()),
            )],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_address_skips_network_and_gateway() {
        let s = set("10.244.1.0/24", "10.244.1.1");
        assert_eq!(s.next_free(None, &HashSet::new()), Some(ip("10.244.1.2")));
    }

    #[test]
    fn round_robin_continues_after_last_and_wraps() {
        let s = set("10.244.1.0/24", "10.244.1.1");
        assert_eq!(
            s.next_free(Some(ip("10.244.1.7")), &HashSet::new()),
            Some(ip("10.244.1.8"))
        );
        // .254 is last; .255 is broadcast; wrap to .2 (skipping .1 gateway).
        assert_eq!(
            s.next_free(Some(ip("10.244.1.254")), &HashSet::new()),
            Some(ip("10.244.1.2"))
        );
    }

    #[test]
    fn skips_taken_and_reports_exhaustion() {
        let s = set("10.0.0.0/29", "10.0.0.1"); // usable .2-.6
        let mut taken: HashSet<IpAddr> = ["10.0.0.2", "10.0.0.3", "10.0.0.5"]
            .iter()
            .map(|a| ip(a))
            .collect();
        assert_eq!(s.next_free(None, &taken), Some(ip("10.0.0.4")));
        taken.insert(ip("10.0.0.4"));
        assert_eq!(s.next_free(None, &taken), Some(ip("10.0.0.6")));
        taken.insert(ip("10.0.0.6"));
        assert_eq!(s.next_free(None, &taken), None);
        assert_eq!(s.next_free(Some(ip("10.0.0.4")), &taken), None);
    }

    #[test]
    fn never_hands_out_broadcast_even_in_explicit_ranges() {
        let s = RangeSet {
            ranges: vec![Range {
                subnet: "10.0.0.0/30".parse().unwrap(),
                start: ip("10.0.0.1"),
                end: ip("10.0.0.3"),
                gateway: Some(ip("10.0.0.1")),
            }],
        };
        assert_eq!(s.next_free(None, &HashSet::new()), Some(ip("10.0.0.2")));
        let taken: HashSet<IpAddr> = [ip("10.0.0.2")].into();
        assert_eq!(s.next_free(None, &taken), None);
    }

    #[test]
    fn ipv6_range_is_bounded_and_fast() {
        let s = set("fd00:10:244:1::/64", "fd00:10:244:1::1");
        assert_eq!(
            s.next_free(None, &HashSet::new()),
            Some(ip("fd00:10:244:1::2"))
        );
        let taken: HashSet<IpAddr> = (2..1000u128)
            .map(|i| {
                IpAddr::V6(
                    (u128::from("fd00:10:244:1::".parse::<std::net::Ipv6Addr>().unwrap()) + i)
                        .into(),
                )
            })
            .collect();
        assert_eq!(s.next_free(None, &taken), Some(ip("fd00:10:244:1::3e8")));
    }

    #[test]
    fn multiple_ranges_are_walked_in_order() {
        let s = RangeSet {
            ranges: vec![
                Range {
                    subnet: "10.0.0.0/24".parse().unwrap(),
                    start: ip("10.0.0.10"),
                    end: ip("10.0.0.11"),
                    gateway: None,
                },
                Range {
                    subnet: "10.0.1.0/24".parse().unwrap(),
                    start: ip("10.0.1.10"),
                    end: ip("10.0.1.10"),
                    gateway: None,
                },
            ],
        };
        let taken: HashSet<IpAddr> = [ip("10.0.0.10"), ip("10.0.0.11")].into();
        assert_eq!(s.next_free(None, &taken), Some(ip("10.0.1.10")));
        assert_eq!(
            s.next_free(Some(ip("10.0.1.10")), &HashSet::new()),
            Some(ip("10.0.0.10"))
        );
    }
}
