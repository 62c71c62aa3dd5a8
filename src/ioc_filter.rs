//! Which of VMRay's network indicators become Falcon IOCs.
//!
//! A sandbox run contacts more than the malware's servers: resolvers, NTP, the guest's own
//! network, multicast discovery. An IOC on such an address alerts (or blocks) on every host of
//! the tenant, so addresses that are not public unicast are never IOCs, and operators can list
//! more in `crowdstrike.ioc_exclude`: domains (the name and every name under it), addresses and
//! CIDR ranges. The list is parsed once at config load, where a bad entry is refused naming the
//! key.
//!
//! (Hashes of memory dumps are left out where VMRay's file categories are read, in the IOC
//! parser: only it sees them.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One entry of `crowdstrike.ioc_exclude`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Exclusion {
    /// Lower-case, without leading or trailing dots: this name and every name under it.
    Domain(String),
    /// An address range; a single address is a range of one.
    Net { base: IpAddr, prefix: u8 },
}

/// The parsed `crowdstrike.ioc_exclude` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IocExclusions(Vec<Exclusion>);

impl IocExclusions {
    /// Parses every entry; the error names the first entry that is none of a domain, an IP
    /// address or a CIDR range, and says what would be accepted.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| parse_entry(entry))
            .collect::<Result<Vec<_>, _>>()
            .map(IocExclusions)
    }

    /// Whether this domain is listed, or lies under a listed one.
    pub fn excludes_domain(&self, domain: &str) -> bool {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        self.0.iter().any(|x| match x {
            Exclusion::Domain(suffix) => {
                domain == *suffix
                    || domain
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            Exclusion::Net { .. } => false,
        })
    }

    /// Whether this address is listed or lies in a listed range.
    pub fn excludes_ip(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|x| match x {
            Exclusion::Net { base, prefix } => in_range(ip, *base, *prefix),
            Exclusion::Domain(_) => false,
        })
    }
}

fn parse_entry(raw: &str) -> Result<Exclusion, String> {
    let entry = raw.trim();
    let refuse = || {
        format!(
            "`{raw}` is not a domain (evil.example), an IP address (203.0.113.7) or a CIDR range \
             (10.0.0.0/8, fd00::/8)"
        )
    };
    if let Some((address, prefix)) = entry.split_once('/') {
        let base: IpAddr = address.parse().map_err(|_| refuse())?;
        let prefix: u8 = prefix.parse().map_err(|_| refuse())?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!(
                "`{raw}`: a prefix length of {prefix} is longer than the {max} bits of the address"
            ));
        }
        return Ok(Exclusion::Net { base, prefix });
    }
    if let Ok(ip) = entry
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(Exclusion::Net { base: ip, prefix });
    }
    let domain = entry.trim_matches('.').to_ascii_lowercase();
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !domain.is_empty() && domain.len() <= 253 && domain.split('.').all(label_ok) {
        Ok(Exclusion::Domain(domain))
    } else {
        Err(refuse())
    }
}

fn in_range(ip: IpAddr, base: IpAddr, prefix: u8) -> bool {
    match (ip, base) {
        (IpAddr::V4(ip), IpAddr::V4(base)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(base) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(base)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(base) & mask
        }
        // An IPv4-mapped IPv6 address is the IPv4 address.
        (IpAddr::V6(ip), IpAddr::V4(_)) => ip
            .to_ipv4_mapped()
            .is_some_and(|v4| in_range(IpAddr::V4(v4), base, prefix)),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// Whether an address can be a server on the internet: not private, loopback, link-local,
/// multicast, or reserved for special purposes (IANA's special-purpose registries: shared
/// address space, benchmarking, documentation, 240/4, unique-local, and the like).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const SPECIAL: [(Ipv4Addr, u8); 15] = [
        (Ipv4Addr::new(0, 0, 0, 0), 8),
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(100, 64, 0, 0), 10),
        (Ipv4Addr::new(127, 0, 0, 0), 8),
        (Ipv4Addr::new(169, 254, 0, 0), 16),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 0, 0, 0), 24),
        (Ipv4Addr::new(192, 0, 2, 0), 24),
        (Ipv4Addr::new(192, 88, 99, 0), 24),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
        (Ipv4Addr::new(198, 18, 0, 0), 15),
        (Ipv4Addr::new(198, 51, 100, 0), 24),
        (Ipv4Addr::new(203, 0, 113, 0), 24),
        // Multicast, then the reserved 240/4 and the broadcast address in it.
        (Ipv4Addr::new(224, 0, 0, 0), 4),
        (Ipv4Addr::new(240, 0, 0, 0), 4),
    ];
    !SPECIAL
        .iter()
        .any(|(base, prefix)| in_range(IpAddr::V4(ip), IpAddr::V4(*base), *prefix))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // Global unicast is 2000::/3; within it, the special-purpose blocks.
    const SPECIAL: [(Ipv6Addr, u8); 5] = [
        // IETF protocol assignments (Teredo, benchmarking, ORCHID...).
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
        // Documentation.
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
        // 6to4 relays carry an IPv4 address of any kind.
        (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
        // Segment routing SIDs.
        (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16),
    ];
    let global = in_range(
        IpAddr::V6(ip),
        IpAddr::V6(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0)),
        3,
    );
    global
        && !SPECIAL
            .iter()
            .any(|(base, prefix)| in_range(IpAddr::V6(ip), IpAddr::V6(*base), *prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.10.10",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "198.51.100.7",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::fb",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip(private)), "{private} counted as public");
        }
        for public in [
            "8.8.8.8",
            "45.77.1.2",
            "2a01:4f8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip(public)), "{public} counted as not public");
        }
    }

    #[test]
    fn exclusions_match_domains_by_suffix_and_addresses_by_range() {
        let list = IocExclusions::parse(&[
            "Corp.Example.".into(),
            "45.77.0.0/16".into(),
            "8.8.8.8".into(),
            "2a01:4f8::/32".into(),
        ])
        .unwrap();
        assert!(list.excludes_domain("corp.example"));
        assert!(list.excludes_domain("mail.CORP.example."));
        assert!(!list.excludes_domain("evilcorp.example"));
        assert!(!list.excludes_domain("example"));
        assert!(list.excludes_ip(ip("45.77.200.1")));
        assert!(!list.excludes_ip(ip("45.78.0.1")));
        assert!(list.excludes_ip(ip("8.8.8.8")));
        assert!(!list.excludes_ip(ip("8.8.4.4")));
        assert!(list.excludes_ip(ip("2a01:4f8:1::5")));
        assert!(list.excludes_ip(ip("::ffff:45.77.1.1")));
        assert!(
            IocExclusions::parse(&["0.0.0.0/0".into()])
                .unwrap()
                .excludes_ip(ip("1.2.3.4"))
        );
    }

    #[test]
    fn bad_entries_are_refused_naming_them() {
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/x",
            "not a domain",
            "a..b",
            "*.x.com",
        ] {
            let error = IocExclusions::parse(&[bad.to_string()]).unwrap_err();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }
}
