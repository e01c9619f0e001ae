//! Pure address selection: which address comes next in a set of ranges.
//!
//! A [`Range`] or [`RangeSet`] exists only once its constructor has shown it holds an address
//! a pod may get, so a range with none is refused where it is configured (code 7) instead of
//! reaching the allocator. [`RangeSet::next_free`] also never relies on that: it walks a
//! finite sequence of candidates with arithmetic that cannot wrap, so whatever it is given it
//! returns, and never spins while the node's IPAM lock is held (issue 10).

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnetwork::IpNetwork;

/// The member of a range definition an error is about, spelled as in the CNI config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Subnet,
    RangeStart,
    RangeEnd,
    Gateway,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Subnet => "subnet",
            Self::RangeStart => "rangeStart",
            Self::RangeEnd => "rangeEnd",
            Self::Gateway => "gateway",
        })
    }
}

/// Why no pod could ever get an address from a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("subnet {subnet} is too small to allocate from: use a prefix of /{max} or shorter, which leaves a pod an address besides the network address and the gateway")]
    TooSmall { subnet: IpNetwork, max: u8 },
    #[error("{field} {ip} is outside subnet {subnet}")]
    Outside {
        field: Field,
        ip: IpAddr,
        subnet: IpNetwork,
    },
    #[error("rangeStart {start} comes after rangeEnd {end}; swap them")]
    Inverted { start: IpAddr, end: IpAddr },
    #[error("range {start}-{end} holds no address for a pod: the network address, the broadcast address and the gateway {gateway} are never handed out; widen the range")]
    NoPodAddress {
        start: IpAddr,
        end: IpAddr,
        gateway: IpAddr,
    },
}

impl RangeError {
    /// The member to fix, when one member rather than the range as a whole is at fault.
    pub fn field(&self) -> Option<Field> {
        match self {
            Self::TooSmall { .. } => Some(Field::Subnet),
            Self::Outside { field, .. } => Some(*field),
            Self::Inverted { .. } => Some(Field::RangeStart),
            Self::NoPodAddress { .. } => None,
        }
    }
}

/// Why ranges cannot be tried as one set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("a range set needs at least one range")]
    Empty,
    #[error("range {range} is not in the address family of the first range of its set; put IPv4 and IPv6 ranges in separate sets")]
    MixedFamilies { index: usize, range: Box<Range> },
    #[error("range {range} overlaps range {other} of the same set")]
    Overlap {
        index: usize,
        range: Box<Range>,
        other: Box<Range>,
    },
}

impl SetError {
    /// Position in the set of the range to fix.
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::Empty => None,
            Self::MixedFamilies { index, .. } | Self::Overlap { index, .. } => Some(*index),
        }
    }
}

/// One contiguous block of assignable addresses inside a subnet, holding at least one
/// address a pod may get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    subnet: IpNetwork,
    start: IpAddr,
    end: IpAddr,
    gateway: IpAddr,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `v` in the family of `like`; None when an IPv4 value does not fit.
fn from_u128(v: u128, like: IpAddr) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => u32::try_from(v).ok().map(|v| IpAddr::V4(v.into())),
        IpAddr::V6(_) => Some(IpAddr::V6(v.into())),
    }
}

/// The first and last address of a subnet.
fn bounds(subnet: IpNetwork) -> (u128, u128) {
    let width: u32 = if subnet.is_ipv4() { 32 } else { 128 };
    let host_bits = width.saturating_sub(u32::from(subnet.prefix()));
    // A shift by 128 (no host bits) is None, not a wrap.
    let host_mask = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    let net = to_u128(subnet.network());
    (net, net | host_mask)
}

/// host-local's limit (`ones > masklen-2` is refused): a /31 or /32 (IPv6 /127, /128) has
/// nothing left once the network address and the gateway are taken out.
fn max_prefix(subnet: IpNetwork) -> u8 {
    if subnet.is_ipv4() {
        30
    } else {
        126
    }
}

impl Range {
    /// host-local's rules (`Range.Canonicalize`): the subnet leaves room for a pod; rangeStart
    /// defaults to the address after the network address, rangeEnd to the one before the last
    /// (IPv4: before the broadcast address), the gateway to the first host; all three lie in
    /// the subnet. Unlike host-local, rangeStart after rangeEnd, and a range whose every
    /// address is reserved, are refused here, not found "exhausted" on every ADD.
    pub fn new(
        subnet: IpNetwork,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, RangeError> {
        let subnet = IpNetwork::new(subnet.network(), subnet.prefix()).unwrap_or(subnet);
        let too_small = RangeError::TooSmall {
            subnet,
            max: max_prefix(subnet),
        };
        if subnet.prefix() > max_prefix(subnet) {
            return Err(too_small);
        }
        // With at least 4 addresses in the subnet, neither step can leave it.
        let (net, last) = bounds(subnet);
        let host = |v: Option<u128>| v.and_then(|v| from_u128(v, subnet.network()));
        let (Some(first_host), Some(last_host)) =
            (host(net.checked_add(1)), host(last.checked_sub(1)))
        else {
            return Err(too_small);
        };
        let range = Range {
            subnet,
            start: start.unwrap_or(first_host),
            end: end.unwrap_or(last_host),
            gateway: gateway.unwrap_or(first_host),
        };
        range.check()?;
        Ok(range)
    }

    fn check(&self) -> Result<(), RangeError> {
        for (field, ip) in [
            (Field::RangeStart, self.start),
            (Field::RangeEnd, self.end),
            (Field::Gateway, self.gateway),
        ] {
            // contains() is false for the other family too.
            if !self.subnet.contains(ip) {
                return Err(RangeError::Outside {
                    field,
                    ip,
                    subnet: self.subnet,
                });
            }
        }
        if to_u128(self.start) > to_u128(self.end) {
            return Err(RangeError::Inverted {
                start: self.start,
                end: self.end,
            });
        }
        if !self.has_pod_address() {
            return Err(RangeError::NoPodAddress {
                start: self.start,
                end: self.end,
                gateway: self.gateway,
            });
        }
        Ok(())
    }

    /// More addresses than reserved ones in the range. Needs start <= end; compares
    /// `end - start` rather than the size, which does not fit a u128 for all of IPv6.
    fn has_pod_address(&self) -> bool {
        let span = to_u128(self.start)..=to_u128(self.end);
        let mut reserved: Vec<u128> = self
            .reserved_addresses()
            .into_iter()
            .flatten()
            .map(to_u128)
            .filter(|v| span.contains(v))
            .collect();
        reserved.sort_unstable();
        reserved.dedup();
        span.end() - span.start() >= reserved.len() as u128
    }

    pub fn subnet(&self) -> IpNetwork {
        self.subnet
    }

    pub fn start(&self) -> IpAddr {
        self.start
    }

    pub fn end(&self) -> IpAddr {
        self.end
    }

    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4()
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }

    /// Never handed out: the network address, IPv4's broadcast address, the gateway.
    fn reserved_addresses(&self) -> [Option<IpAddr>; 3] {
        let broadcast = match self.subnet {
            IpNetwork::V4(n) => Some(IpAddr::V4(n.broadcast())),
            IpNetwork::V6(_) => None,
        };
        [Some(self.subnet.network()), broadcast, Some(self.gateway)]
    }

    fn reserved(&self, ip: IpAddr) -> bool {
        self.reserved_addresses().contains(&Some(ip))
    }
}

/// Disjoint ranges of one address family, tried in order (host-local's "range set").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range>,
}

impl RangeSet {
    /// host-local's rules (`RangeSet.Canonicalize`): not empty, one family, no overlap.
    /// Disjoint ranges are what bound [`RangeSet::next_free`]'s walk.
    pub fn new(ranges: Vec<Range>) -> Result<RangeSet, SetError> {
        let first = ranges.first().ok_or(SetError::Empty)?;
        for (index, range) in ranges.iter().enumerate().skip(1) {
            if range.is_ipv4() != first.is_ipv4() {
                return Err(SetError::MixedFamilies {
                    index,
                    range: Box::new(range.clone()),
                });
            }
            if let Some(other) = ranges[..index].iter().find(|o| o.overlaps(range)) {
                return Err(SetError::Overlap {
                    index,
                    range: Box::new(range.clone()),
                    other: Box::new(other.clone()),
                });
            }
        }
        Ok(RangeSet { ranges })
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges.first().is_some_and(Range::is_ipv4)
    }

    /// The range an address belongs to (for its subnet and gateway).
    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// Next free address after `last` (round-robin like host-local, so a
    /// just-released address is not handed straight to the next pod), or
    /// `None` when every address is taken.
    pub fn next_free(&self, last: Option<IpAddr>, taken: &HashSet<IpAddr>) -> Option<IpAddr> {
        // The candidates are distinct (the ranges are disjoint), at most 3 per range are
        // reserved and taken.len() are taken: if any candidate is free, one of the first
        // `budget` is. This keeps an IPv6 /64 from being walked end to end.
        let budget = taken
            .len()
            .saturating_add(self.ranges.len().saturating_mul(3))
            .saturating_add(1);
        self.candidates(last)
            .take(budget)
            .find(|(range, ip)| !range.reserved(*ip) && !taken.contains(ip))
            .map(|(_, ip)| ip)
    }

    /// Every address of every range once, in host-local's order: after `last` to the end of
    /// its range, the ranges after that one, those before it, then its range from the start
    /// up to `last` itself. Finite by construction: inclusive u128 spans (an inverted one is
    /// simply empty), walked by the standard iterator, which stops at the top without wrapping.
    fn candidates(&self, last: Option<IpAddr>) -> impl Iterator<Item = (&Range, IpAddr)> + '_ {
        self.spans(last).into_iter().flat_map(|(range, span)| {
            span.filter_map(move |v| from_u128(v, range.start).map(|ip| (range, ip)))
        })
    }

    fn spans(&self, last: Option<IpAddr>) -> Vec<(&Range, RangeInclusive<u128>)> {
        let n = self.ranges.len();
        let pivot = last.and_then(|l| {
            let i = self.ranges.iter().position(|r| r.contains(l))?;
            Some((i, to_u128(l)))
        });
        let first = pivot.map_or(0, |(i, _)| i);
        let mut spans: Vec<_> = (0..n)
            .map(|k| &self.ranges[(first + k) % n])
            .map(|r| (r, to_u128(r.start)..=to_u128(r.end)))
            .collect();
        if let Some((i, l)) = pivot {
            let r = &self.ranges[i];
            let after = match l.checked_add(1) {
                Some(next) => next..=to_u128(r.end),
                // `last` is the top of the address space: nothing after it.
                None => RangeInclusive::new(1, 0),
            };
            spans[0] = (r, after);
            spans.push((r, to_u128(r.start)..=l));
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(cidr: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> Range {
        Range::new(
            cidr.parse().unwrap(),
            start.map(ip),
            end.map(ip),
            gw.map(ip),
        )
        .unwrap()
    }

    fn set(cidr: &str, gw: &str) -> RangeSet {
        RangeSet::new(vec![range(cidr, None, None, Some(gw))]).unwrap()
    }

    fn taken(ips: &[&str]) -> HashSet<IpAddr> {
        ips.iter().map(|a| ip(a)).collect()
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
        let mut taken = taken(&["10.0.0.2", "10.0.0.3", "10.0.0.5"]);
        assert_eq!(s.next_free(None, &taken), Some(ip("10.0.0.4")));
        taken.insert(ip("10.0.0.4"));
        assert_eq!(s.next_free(None, &taken), Some(ip("10.0.0.6")));
        taken.insert(ip("10.0.0.6"));
        assert_eq!(s.next_free(None, &taken), None);
        assert_eq!(s.next_free(Some(ip("10.0.0.4")), &taken), None);
    }

    #[test]
    fn never_hands_out_broadcast_even_in_explicit_ranges() {
        let r = range("10.0.0.0/30", Some("10.0.0.1"), Some("10.0.0.3"), None);
        let s = RangeSet::new(vec![r]).unwrap();
        assert_eq!(s.next_free(None, &HashSet::new()), Some(ip("10.0.0.2")));
        assert_eq!(s.next_free(None, &taken(&["10.0.0.2"])), None);
    }

    #[test]
    fn ipv6_range_is_bounded_and_fast() {
        let s = set("fd00:10:244:1::/64", "fd00:10:244:1::1");
        assert_eq!(
            s.next_free(None, &HashSet::new()),
            Some(ip("fd00:10:244:1::2"))
        );
        let base = u128::from("fd00:10:244:1::".parse::<std::net::Ipv6Addr>().unwrap());
        let taken: HashSet<IpAddr> = (2..1000u128)
            .map(|i| IpAddr::V6((base + i).into()))
            .collect();
        assert_eq!(s.next_free(None, &taken), Some(ip("fd00:10:244:1::3e8")));
    }

    #[test]
    fn multiple_ranges_are_walked_in_order() {
        let s = RangeSet::new(vec![
            range("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.11"), None),
            range("10.0.1.0/24", Some("10.0.1.10"), Some("10.0.1.10"), None),
        ])
        .unwrap();
        let full_first = taken(&["10.0.0.10", "10.0.0.11"]);
        assert_eq!(s.next_free(None, &full_first), Some(ip("10.0.1.10")));
        assert_eq!(
            s.next_free(Some(ip("10.0.1.10")), &HashSet::new()),
            Some(ip("10.0.0.10"))
        );
    }

    #[test]
    fn last_outside_every_range_starts_at_the_first() {
        let s = set("10.0.0.0/29", "10.0.0.1");
        assert_eq!(
            s.next_free(Some(ip("192.0.2.1")), &HashSet::new()),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            s.next_free(Some(ip("fd00::5")), &HashSet::new()),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn every_prefix_has_a_pod_address_or_is_too_small() {
        for (family, width, max) in [("10.0.0.0", 32u8, 30u8), ("fd00::", 128, 126)] {
            for prefix in 0..=width {
                let subnet = IpNetwork::new(ip(family), prefix).unwrap();
                match Range::new(subnet, None, None, None) {
                    Ok(r) => {
                        assert!(prefix <= max, "{subnet} accepted");
                        let s = RangeSet::new(vec![r]).unwrap();
                        let (net, _) = bounds(s.ranges()[0].subnet());
                        let want = from_u128(net + 2, subnet.ip());
                        assert_eq!(s.next_free(None, &HashSet::new()), want, "{subnet}");
                    }
                    Err(e) => {
                        assert!(prefix > max, "{subnet}: {e}");
                        assert_eq!(e.field(), Some(Field::Subnet), "{subnet}");
                    }
                }
            }
        }
    }

    #[test]
    fn ranges_without_a_pod_address_are_refused_naming_the_member() {
        let net = |s: &str| -> IpNetwork { s.parse().unwrap() };
        // subnet, rangeStart, rangeEnd, gateway, the member the error names
        type Case = (
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            Option<Field>,
        );
        let cases: &[Case] = &[
            (
                "10.0.0.0/24",
                Some("10.0.0.200"),
                Some("10.0.0.100"),
                None,
                Some(Field::RangeStart),
            ),
            (
                "10.0.0.0/24",
                Some("10.0.1.1"),
                None,
                None,
                Some(Field::RangeStart),
            ),
            (
                "10.0.0.0/24",
                None,
                Some("fd00::1"),
                None,
                Some(Field::RangeEnd),
            ),
            (
                "10.0.0.0/24",
                None,
                None,
                Some("10.0.9.1"),
                Some(Field::Gateway),
            ),
            (
                "10.0.0.0/24",
                Some("10.0.0.1"),
                Some("10.0.0.1"),
                None,
                None,
            ),
            (
                "10.0.0.0/24",
                Some("10.0.0.0"),
                Some("10.0.0.1"),
                None,
                None,
            ),
            (
                "10.0.0.0/24",
                Some("10.0.0.255"),
                Some("10.0.0.255"),
                None,
                None,
            ),
            (
                "10.0.0.0/30",
                Some("10.0.0.2"),
                None,
                Some("10.0.0.2"),
                None,
            ),
            ("fd00::/64", Some("fd00::"), Some("fd00::1"), None, None),
            (
                "fd00::/126",
                Some("fd00::9"),
                None,
                None,
                Some(Field::RangeStart),
            ),
            ("0.0.0.0/32", None, None, None, Some(Field::Subnet)),
            ("255.255.255.255/32", None, None, None, Some(Field::Subnet)),
            ("::/128", None, None, None, Some(Field::Subnet)),
        ];
        for (subnet, start, end, gw, field) in cases {
            let err =
                Range::new(net(subnet), start.map(ip), end.map(ip), gw.map(ip)).expect_err(subnet);
            assert_eq!(err.field(), *field, "{subnet} {start:?}-{end:?}: {err}");
        }
    }

    #[test]
    fn sets_are_one_family_without_overlap() {
        let a = range("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.20"), None);
        let b = range("10.0.0.0/24", Some("10.0.0.20"), Some("10.0.0.30"), None);
        let c = range("10.0.0.0/24", Some("10.0.0.21"), Some("10.0.0.30"), None);
        let v6 = range("fd00::/64", None, None, None);
        assert_eq!(RangeSet::new(vec![]), Err(SetError::Empty));
        let err = RangeSet::new(vec![a.clone(), v6]).unwrap_err();
        assert!(
            matches!(err, SetError::MixedFamilies { index: 1, .. }),
            "{err}"
        );
        let err = RangeSet::new(vec![c.clone(), a.clone(), b]).unwrap_err();
        assert!(matches!(err, SetError::Overlap { index: 2, .. }), "{err}");
        assert!(RangeSet::new(vec![a, c]).is_ok());
    }

    #[test]
    fn round_robin_at_the_top_of_the_address_space_wraps_without_overflow() {
        let top = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let below = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe";
        let r = range(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124",
            Some(below),
            Some(top),
            None,
        );
        let s = RangeSet::new(vec![r]).unwrap();
        assert_eq!(s.next_free(Some(ip(top)), &HashSet::new()), Some(ip(below)));
        assert_eq!(s.next_free(Some(ip(top)), &taken(&[below])), Some(ip(top)));
        assert_eq!(s.next_free(Some(ip(top)), &taken(&[below, top])), None);

        let s = set("255.255.255.0/24", "255.255.255.1");
        assert_eq!(
            s.next_free(Some(ip("255.255.255.254")), &HashSet::new()),
            Some(ip("255.255.255.2"))
        );
    }

    /// The same order spelled out naively: every address of the set in order, rotated to
    /// start after `last`.
    fn naive_next_free(
        s: &RangeSet,
        last: Option<IpAddr>,
        taken: &HashSet<IpAddr>,
    ) -> Option<IpAddr> {
        let all: Vec<(&Range, IpAddr)> = s
            .ranges()
            .iter()
            .flat_map(|r| {
                (to_u128(r.start())..=to_u128(r.end()))
                    .map(move |v| (r, from_u128(v, r.start()).unwrap()))
            })
            .collect();
        let from = last
            .and_then(|l| all.iter().position(|(_, ip)| *ip == l))
            .map_or(0, |i| i + 1);
        all[from..]
            .iter()
            .chain(&all[..from])
            .find(|(r, ip)| !r.reserved(*ip) && !taken.contains(ip))
            .map(|(_, ip)| *ip)
    }

    #[test]
    fn next_free_matches_the_naive_round_robin_for_every_taken_subset() {
        let s = RangeSet::new(vec![
            range("10.0.0.0/29", None, None, Some("10.0.0.3")),
            range("10.0.1.0/24", Some("10.0.1.254"), Some("10.0.1.255"), None),
        ])
        .unwrap();
        let all: Vec<IpAddr> = s
            .ranges()
            .iter()
            .flat_map(|r| {
                (to_u128(r.start())..=to_u128(r.end())).filter_map(|v| from_u128(v, r.start()))
            })
            .collect();
        for mask in 0u32..(1 << all.len()) {
            let taken: HashSet<IpAddr> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, ip)| *ip)
                .collect();
            for last in all.iter().copied().map(Some).chain([None]) {
                assert_eq!(
                    s.next_free(last, &taken),
                    naive_next_free(&s, last, &taken),
                    "last {last:?}, taken {taken:?}"
                );
            }
        }
    }
}
