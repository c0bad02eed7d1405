//! Who is asking: the client address (behind trusted proxies), the
//! allowlists, and bearer tokens compared as SHA-256 digests in constant time.

use std::net::IpAddr;

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};

use crate::config::{AccessSettings, Details};
use crate::net::Cidr;

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Where a request comes from.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress {
    /// The address decisions are made on.
    pub client: IpAddr,
    /// The direct TCP peer.
    pub peer: IpAddr,
}

/// Who the caller proved to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// Index into the configured tokens.
    Token(usize),
}

/// The token did not check out. Deliberately says nothing of why.
#[derive(Debug)]
pub struct BadToken;

/// Access decisions from `[access]`.
#[derive(Debug)]
pub struct Access {
    settings: AccessSettings,
}

impl Access {
    pub fn new(settings: AccessSettings) -> Self {
        Access { settings }
    }

    /// The client is the peer, unless the peer is a trusted proxy: then it
    /// is the right-most forwarded address that is not itself trusted.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddress {
        let proxies = &self.settings.trusted_proxies;
        if proxies.is_empty() || !Cidr::any_contains(proxies, peer) {
            return ClientAddress { client: peer, peer };
        }
        let forwarded = forwarded_for(headers);
        let client = forwarded
            .into_iter()
            .rev()
            .find(|address| !Cidr::any_contains(proxies, *address))
            .unwrap_or(peer);
        ClientAddress { client, peer }
    }

    pub fn allowed(&self, address: &ClientAddress) -> bool {
        Cidr::any_contains(&self.settings.allow, address.client)
    }

    /// Reads the bearer token, if any. A missing header is anonymous; a
    /// present but malformed or unknown one is an error.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, BadToken> {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Ok(Principal::Anonymous);
        };
        let token = value.as_bytes();
        let token = match token.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => token[7..].trim_ascii(),
            _ => return Err(BadToken),
        };
        if token.is_empty() {
            return Err(BadToken);
        }
        let digest = sha256(token);
        // Compare with every token, always, so timing tells nothing.
        let mut found = None;
        for (index, configured) in self.settings.tokens.iter().enumerate() {
            if constant_time_eq(&digest, &configured.sha256) {
                found = Some(index);
            }
        }
        found.map(Principal::Token).ok_or(BadToken)
    }

    /// Whether this caller sees checks, given the `details` setting.
    pub fn sees_details(
        &self,
        address: &ClientAddress,
        principal: Principal,
    ) -> Result<(), DetailsDenied> {
        match self.settings.details {
            Details::Never => Err(DetailsDenied::Disabled),
            _ if !Cidr::any_contains(&self.settings.details_allow, address.client) => {
                Err(DetailsDenied::Address)
            }
            Details::Always => Ok(()),
            Details::Authorized if principal == Principal::Anonymous => {
                Err(DetailsDenied::NeedsToken)
            }
            Details::Authorized => Ok(()),
        }
    }

    /// The token's configured name, for the access log.
    pub fn principal_name(&self, principal: Principal) -> &str {
        match principal {
            Principal::Anonymous => "anonymous",
            Principal::Token(index) => {
                self.settings.tokens.get(index).map_or("anonymous", |token| token.name.as_str())
            }
        }
    }
}

/// Why details are not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetailsDenied {
    Disabled,
    Address,
    NeedsToken,
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}

/// Addresses from `X-Forwarded-For` and `Forwarded: for=`, in hop order.
/// Unparseable entries are skipped.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for value in headers.get_all("forwarded").filter_map(|value| value.to_str().ok()) {
        for element in value.split(',') {
            for pair in element.split(';') {
                if let Some((key, node)) = pair.trim().split_once('=') {
                    if key.trim().eq_ignore_ascii_case("for") {
                        addresses.extend(parse_node(node.trim().trim_matches('"')));
                    }
                }
            }
        }
    }
    for value in headers.get_all("x-forwarded-for").filter_map(|value| value.to_str().ok()) {
        addresses.extend(value.split(',').filter_map(|node| parse_node(node.trim())));
    }
    addresses
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80` or `::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(address) = node.parse() {
        return Some(address);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.rsplit_once(':').and_then(|(host, _)| host.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenSettings;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn access(trusted: &[&str]) -> Access {
        Access::new(AccessSettings {
            details: Details::Authorized,
            allow: vec!["0.0.0.0/0".parse().unwrap()],
            details_allow: vec!["127.0.0.0/8".parse().unwrap()],
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            tokens: vec![TokenSettings { name: "ops".into(), sha256: sha256(b"s3cret") }],
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
        let address = access(&["10.0.0.0/8"])
            .client_address(ip("192.0.2.1"), &headers(&[("x-forwarded-for", "127.0.0.1")]));
        assert_eq!(address.client, ip("192.0.2.1"));
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client() {
        let access = access(&["10.0.0.0/8"]);
        let spoofed = headers(&[("x-forwarded-for", "127.0.0.1, 198.51.100.7, 10.0.0.2")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &spoofed).client, ip("198.51.100.7"));
        let forwarded =
            headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.3")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &forwarded).client, ip("2001:db8::1"));
    }

    #[test]
    fn tokens_are_checked() {
        let access = access(&[]);
        assert_eq!(access.authenticate(&headers(&[])).unwrap(), Principal::Anonymous);
        assert_eq!(
            access.authenticate(&headers(&[("authorization", "Bearer s3cret")])).unwrap(),
            Principal::Token(0)
        );
        assert!(access.authenticate(&headers(&[("authorization", "Bearer wrong")])).is_err());
        assert!(access.authenticate(&headers(&[("authorization", "Basic s3cret")])).is_err());
        assert!(access.authenticate(&headers(&[("authorization", "Bearer ")])).is_err());
    }

    #[test]
    fn details_need_a_token_and_an_allowed_address() {
        let access = access(&[]);
        let local = ClientAddress { client: ip("127.0.0.1"), peer: ip("127.0.0.1") };
        let remote = ClientAddress { client: ip("192.0.2.9"), peer: ip("192.0.2.9") };
        assert_eq!(access.sees_details(&local, Principal::Token(0)), Ok(()));
        assert_eq!(
            access.sees_details(&local, Principal::Anonymous),
            Err(DetailsDenied::NeedsToken)
        );
        assert_eq!(access.sees_details(&remote, Principal::Token(0)), Err(DetailsDenied::Address));
    }
}
