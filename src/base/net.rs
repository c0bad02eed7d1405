//! CIDR ranges for allowlists and trusted proxies.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network, such as `10.0.0.0/8` or `::1/128`. A bare
/// address is a network of one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, address: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                masked(u32::from(network).into(), self.prefix, 32)
                    == masked(u32::from(address).into(), self.prefix, 32)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                masked(u128::from(network), self.prefix, 128)
                    == masked(u128::from(address), self.prefix, 128)
            }
            _ => false,
        }
    }

    /// Whether any network in `list` holds `address`.
    pub fn any_contains(list: &[Cidr], address: IpAddr) -> bool {
        list.iter().any(|cidr| cidr.contains(address))
    }
}

fn masked(value: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        value >> (width - prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!("invalid network {text:?}: expected an address or CIDR, such as \"10.0.0.0/8\" or \"::1/128\"")
        };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| invalid())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => {
                prefix.trim().parse::<u8>().ok().filter(|p| *p <= width).ok_or_else(invalid)?
            }
            None => width,
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges_match_by_prefix() {
        let cidr: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(cidr.contains(ip("10.1.200.3")));
        assert!(!cidr.contains(ip("10.2.0.1")));
        assert!(cidr.contains(ip("::ffff:10.1.0.9")));
        assert!(!cidr.contains(ip("::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("203.0.113.7")));
    }

    #[test]
    fn ipv6_ranges_and_bare_addresses_match() {
        let cidr: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(cidr.contains(ip("2001:db8:1::5")));
        assert!(!cidr.contains(ip("2001:db9::5")));
        let single: Cidr = "::1".parse().unwrap();
        assert!(single.contains(ip("::1")));
        assert!(!single.contains(ip("::2")));
    }

    #[test]
    fn malformed_networks_are_rejected() {
        for text in ["10.0.0.0/33", "::/129", "10.0.0/8", "banana", "10.0.0.0/-1", ""] {
            assert!(text.parse::<Cidr>().is_err(), "{text}");
        }
    }
}
