//! The address allocator, reached the way ADD reaches it: a network config (`ipam.ranges`)
//! or a subnet.env becomes a `NetworkPlan`, and each of its range sets is asked for the next
//! free address with a store state from the fuzzer, then drained as ADD's retry loop would.
//!
//! Input: `<config JSON, or subnet.env text>` NUL `<state>`. The state is read two bytes at a
//! time as offsets into the set's addresses: the first is the `last_reserved_ip` hint, the
//! rest are taken.
//!
//! Beyond "no panic": a plan is refused with code 7 (a subnet.env naming its key and file) or
//! every range in it has an address a pod may get; an answer is in the set, not reserved and
//! not taken; on small sets the answer is the one a naive round-robin walk gives and "none
//! free" means every address is taken or reserved; on large sets "none free" never happens.
//! An allocator that spins is caught by libFuzzer's per-input timeout (hack/fuzz.sh: 10 s).
#![no_main]

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use libfuzzer_sys::fuzz_target;
use trellis_cni::ipam::{Range, RangeSet};
use trellis_cni::plan::NetworkPlan;
use trellis_cni::spec::NetConf;
use trellis_common::subnet_env::SubnetEnv;

const SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Sets up to this many addresses are checked against the naive walk and drained.
const SMALL: u128 = 1024;

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(
            u32::try_from(v)
                .expect("an IPv4 range holds IPv4 values")
                .into(),
        ),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

/// What host-local never hands out, spelled out independently of the allocator.
fn reserved(r: &Range, ip: IpAddr) -> bool {
    let broadcast = match r.subnet() {
        IpNetwork::V4(n) => Some(IpAddr::V4(n.broadcast())),
        IpNetwork::V6(_) => None,
    };
    ip == r.subnet().network() || Some(ip) == broadcast || ip == r.gateway()
}

/// `end - start`: the size minus one, which fits a u128 even for all of IPv6.
fn span(r: &Range) -> u128 {
    to_u128(r.end()) - to_u128(r.start())
}

/// The `k`-th address of the set, in order; None past its end.
fn nth(set: &RangeSet, mut k: u128) -> Option<IpAddr> {
    for r in set.ranges() {
        if k <= span(r) {
            return Some(from_u128(to_u128(r.start()) + k, r.start()));
        }
        k -= span(r) + 1;
    }
    None
}

fn total(set: &RangeSet) -> u128 {
    set.ranges()
        .iter()
        .map(|r| span(r).saturating_add(1))
        .fold(0, u128::saturating_add)
}

/// The set's addresses in order, for a set no larger than [`SMALL`].
fn all(set: &RangeSet) -> Vec<(&Range, IpAddr)> {
    set.ranges()
        .iter()
        .flat_map(|r| {
            (to_u128(r.start())..=to_u128(r.end())).map(move |v| (r, from_u128(v, r.start())))
        })
        .collect()
}

fn naive_next_free(
    set: &RangeSet,
    last: Option<IpAddr>,
    taken: &HashSet<IpAddr>,
) -> Option<IpAddr> {
    let all = all(set);
    let from = last
        .and_then(|l| all.iter().position(|(_, ip)| *ip == l))
        .map_or(0, |i| i + 1);
    all[from..]
        .iter()
        .chain(&all[..from])
        .find(|(r, ip)| !reserved(r, *ip) && !taken.contains(ip))
        .map(|(_, ip)| *ip)
}

/// The plan ADD would compute, or None when the input is refused (with the right code).
fn plan(text: &str) -> Option<NetworkPlan> {
    if text.trim_start().starts_with('{') {
        let conf = NetConf::parse(text.as_bytes()).ok()?;
        match NetworkPlan::resolve(&conf, None) {
            Ok(p) => Some(p),
            Err(e) => {
                assert_eq!(e.code, 7, "{e}");
                None
            }
        }
    } else {
        let env = SubnetEnv::parse(Path::new(SUBNET_FILE), text).ok()?;
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"cbr0","type":"trellis"}"#)
            .expect("the default config parses");
        match NetworkPlan::resolve(&conf, Some(&env)) {
            Ok(p) => Some(p),
            Err(e) => {
                assert_eq!(e.code, 7, "{e}");
                assert!(
                    e.msg
                        .starts_with(&format!("FLANNEL_SUBNET in {SUBNET_FILE}: "))
                        || e.msg
                            .starts_with(&format!("FLANNEL_IPV6_SUBNET in {SUBNET_FILE}: ")),
                    "{e}"
                );
                None
            }
        }
    }
}

fn check_ranges(set: &RangeSet) {
    for r in set.ranges() {
        assert!(r.start() <= r.end(), "{r}");
        for ip in [r.start(), r.end(), r.gateway()] {
            assert!(r.subnet().contains(ip), "{r} {ip} outside {}", r.subnet());
        }
        let held = [Some(r.subnet().network()), Some(r.gateway())]
            .into_iter()
            .chain([match r.subnet() {
                IpNetwork::V4(n) => Some(IpAddr::V4(n.broadcast())),
                IpNetwork::V6(_) => None,
            }])
            .flatten()
            .filter(|ip| r.contains(*ip))
            .collect::<HashSet<_>>();
        assert!(
            span(r) >= held.len() as u128,
            "{r}: every address is reserved"
        );
    }
    assert!(set.next_free(None, &HashSet::new()).is_some(), "{set:?}");
}

fn check_answer(set: &RangeSet, last: Option<IpAddr>, taken: &HashSet<IpAddr>) -> Option<IpAddr> {
    let got = set.next_free(last, taken);
    match got {
        Some(ip) => {
            let r = set.range_of(ip).expect("the answer lies in the set");
            assert!(!reserved(r, ip), "{ip} is reserved in {r}");
            assert!(!taken.contains(&ip), "{ip} is taken");
        }
        None => {
            let could_cover = (taken.len() as u128).saturating_add(3 * set.ranges().len() as u128);
            assert!(
                total(set) <= could_cover,
                "none free in {set:?} with {} taken",
                taken.len()
            );
        }
    }
    if total(set) <= SMALL {
        assert_eq!(got, naive_next_free(set, last, taken), "last {last:?}");
    }
    got
}

/// ADD's loop: take what next_free answers until none is free. Each answer must be new.
fn drain(set: &RangeSet, mut last: Option<IpAddr>, mut taken: HashSet<IpAddr>) {
    while let Some(ip) = check_answer(set, last, &taken) {
        assert!(taken.insert(ip), "{ip} handed out twice");
        last = Some(ip);
    }
    for (r, ip) in all(set) {
        assert!(
            reserved(r, ip) || taken.contains(&ip),
            "{ip} left free but none found"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (text, state) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Some(plan) = plan(text) else {
        return;
    };
    let offsets: Vec<u128> = state
        .chunks_exact(2)
        .map(|c| u128::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    for family in &plan.families {
        let set = &family.set;
        check_ranges(set);
        let last = offsets.first().and_then(|k| nth(set, *k));
        let taken: HashSet<IpAddr> = offsets
            .iter()
            .skip(1)
            .filter_map(|k| nth(set, *k))
            .collect();
        if total(set) <= SMALL {
            drain(set, last, taken);
        } else {
            check_answer(set, last, &taken);
        }
    }
});
