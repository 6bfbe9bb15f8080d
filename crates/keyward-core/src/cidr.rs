//! Network restrictions: CIDR blocks and allow/deny sets of them, for IPv4 and IPv6.
//!
//! A [`CidrSet`] keeps the blocks as given (for display) and, for lookups, their union as sorted,
//! merged address ranges: a lookup is a binary search, O(log n), about 14 steps for 10,000 blocks.
//! This answers "is the address inside any block" exactly as a longest-prefix trie would, with
//! less memory and no pointer chasing. IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are
//! treated as the IPv4 address they carry.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The most blocks one set may hold.
pub const MAX_BLOCKS: usize = 10_000;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCidr {
    #[error("not an IP address or CIDR block (e.g. 192.0.2.0/24 or 2001:db8::/32)")]
    Syntax,
    #[error("the prefix length is larger than the address allows")]
    Prefix,
    #[error("host bits are set; did you mean {0}?")]
    HostBits(String),
    #[error("more than 10000 blocks")]
    TooMany,
}

fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, InvalidCidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => {
                if prefix.is_empty()
                    || prefix.len() > 3
                    || !prefix.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(InvalidCidr::Syntax);
                }
                (
                    addr,
                    Some(prefix.parse::<u8>().map_err(|_| InvalidCidr::Prefix)?),
                )
            }
            None => (text, None),
        };
        let addr = IpAddr::from_str(addr).map_err(|_| InvalidCidr::Syntax)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(InvalidCidr::Prefix);
        }
        // An IPv4-mapped IPv6 block is the IPv4 block it maps, so lookups treat both alike.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let cidr = Cidr { addr, prefix };
        let (start, _) = cidr.range();
        let network = match addr {
            IpAddr::V4(_) => IpAddr::from(u32::try_from(start).unwrap_or(0).to_be_bytes()),
            IpAddr::V6(_) => IpAddr::from(start.to_be_bytes()),
        };
        if network != addr {
            return Err(InvalidCidr::HostBits(format!("{network}/{prefix}")));
        }
        Ok(cidr)
    }

    /// First and last address as numbers in the address family's space.
    fn range(&self) -> (u128, u128) {
        let (value, bits) = match self.addr {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32),
            IpAddr::V6(v6) => (u128::from(v6), 128u32),
        };
        let host_bits = bits - u32::from(self.prefix);
        let mask = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        (value & !mask, value | mask)
    }

    /// Whether every address of `self` lies inside `outer` (same address family).
    pub fn within(&self, outer: &Cidr) -> bool {
        let ((start, end), (outer_start, outer_end)) = (self.range(), outer.range());
        self.addr.is_ipv4() == outer.addr.is_ipv4() && outer_start <= start && end <= outer_end
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        let (start, end) = self.range();
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(v4)) => (start..=end).contains(&u128::from(u32::from(v4))),
            (IpAddr::V6(_), IpAddr::V6(v6)) => (start..=end).contains(&u128::from(v6)),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A set of CIDR blocks with O(log n) membership.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    blocks: Vec<Cidr>,
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn search(ranges: &[(u128, u128)], value: u128) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= value);
    after > 0 && ranges.get(after - 1).is_some_and(|&(_, end)| value <= end)
}

impl CidrSet {
    pub fn new(blocks: Vec<Cidr>) -> Result<Self, InvalidCidr> {
        if blocks.len() > MAX_BLOCKS {
            return Err(InvalidCidr::TooMany);
        }
        let (v4, v6): (Vec<&Cidr>, Vec<&Cidr>) = blocks.iter().partition(|c| c.addr.is_ipv4());
        Ok(CidrSet {
            v4: merged(v4.iter().map(|c| c.range()).collect()),
            v6: merged(v6.iter().map(|c| c.range()).collect()),
            blocks,
        })
    }

    /// Parses each block, naming the first bad one.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, (usize, InvalidCidr)> {
        let blocks = texts
            .iter()
            .enumerate()
            .map(|(i, t)| Cidr::parse(t.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        CidrSet::new(blocks).map_err(|e| (MAX_BLOCKS, e))
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn blocks(&self) -> &[Cidr] {
        &self.blocks
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match normalize(ip) {
            IpAddr::V4(v4) => search(&self.v4, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => search(&self.v6, u128::from(v6)),
        }
    }
}

impl fmt::Debug for CidrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.blocks).finish()
    }
}

/// Where a key may be used from. Deny wins over allow; an empty allow list allows everything
/// not denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRules {
    pub allow: CidrSet,
    pub deny: CidrSet,
}

impl NetworkRules {
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(blocks: &[&str]) -> CidrSet {
        CidrSet::parse(blocks).unwrap()
    }

    #[test]
    fn parses_and_prints() {
        for (text, printed) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("::1", "::1/128"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::/0", "::/0"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ] {
            assert_eq!(Cidr::parse(text).unwrap().to_string(), printed);
        }
        assert_eq!(
            Cidr::parse("10.0.0.1/8"),
            Err(InvalidCidr::HostBits("10.0.0.0/8".into()))
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "x",
            "10.0.0.0/8/8",
            "10.0.0.0/+8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_deny_matrix() {
        let rules = NetworkRules {
            allow: set(&["10.0.0.0/8", "2001:db8::/32"]),
            deny: set(&["10.1.0.0/16", "2001:db8:bad::/48"]),
        };
        for (addr, expected) in [
            ("10.2.3.4", true),
            ("10.1.2.3", false),
            ("11.0.0.1", false),
            ("2001:db8::1", true),
            ("2001:db8:bad::1", false),
            ("2001:db9::1", false),
            ("::ffff:10.2.3.4", true),
            ("::ffff:10.1.0.1", false),
        ] {
            assert_eq!(rules.permits(ip(addr)), expected, "{addr}");
        }
        let deny_only = NetworkRules {
            allow: CidrSet::default(),
            deny: set(&["192.0.2.0/24"]),
        };
        assert!(deny_only.permits(ip("198.51.100.1")));
        assert!(!deny_only.permits(ip("192.0.2.200")));
        assert!(NetworkRules::default().permits(ip("203.0.113.9")));
        // IPv4 blocks never match IPv6 addresses that are not IPv4-mapped.
        assert!(!set(&["0.0.0.0/0"]).contains(ip("2001:db8::1")));
        assert!(set(&["::/0"]).contains(ip("2001:db8::1")));
    }

    proptest! {
        #[test]
        fn set_lookup_agrees_with_a_scan(blocks in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..40), probe in any::<u32>()) {
            let cidrs: Vec<Cidr> = blocks
                .iter()
                .map(|&(addr, prefix)| {
                    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
                    Cidr::parse(&format!("{}/{prefix}", std::net::Ipv4Addr::from(addr & mask))).unwrap()
                })
                .collect();
            let set = CidrSet::new(cidrs.clone()).unwrap();
            let probe = IpAddr::from(std::net::Ipv4Addr::from(probe));
            prop_assert_eq!(set.contains(probe), cidrs.iter().any(|c| c.contains(probe)));
            for c in &cidrs {
                let (start, _) = c.range();
                prop_assert!(set.contains(IpAddr::from(std::net::Ipv4Addr::from(u32::try_from(start).unwrap()))));
            }
        }

        #[test]
        fn round_trips(addr in any::<u128>(), prefix in 0u8..=128) {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            let text = format!("{}/{prefix}", std::net::Ipv6Addr::from(addr & mask));
            let cidr = Cidr::parse(&text).unwrap();
            prop_assert_eq!(Cidr::parse(&cidr.to_string()).unwrap(), cidr);
        }

        #[test]
        fn parser_never_panics(text in ".{0,50}") {
            let _ = Cidr::parse(&text);
        }

        #[test]
        fn parser_never_panics_on_near_cidrs(text in "[0-9a-f:./]{0,45}") {
            let _ = Cidr::parse(&text);
        }
    }
}
