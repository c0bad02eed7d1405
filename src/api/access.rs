//! Who is asking: the client address (behind trusted proxies), the
//! allowlists, bearer tokens compared as SHA-256 digests in constant time,
//! and verified client certificates (mutual TLS) matched against
//! `[[access.clients]]`; and where the client reaches healthd: the path
//! prefix a trusted proxy mounts it under.

use std::net::IpAddr;

use actix_web::http::header::{HeaderMap, AUTHORIZATION};

use crate::base::net::Cidr;
use crate::base::secret::{digests_match, sha256};
use crate::base::units::Prefix;
use crate::config::{AccessSettings, ClientMatch, Details, ForwardedHeader, Scopes};

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
    /// Index into the configured clients (`[[access.clients]]`).
    Client(usize),
}

/// What the verified client certificate of a connection says: recorded
/// once per connection, when the handshake is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common names (CN).
    pub common_names: Vec<String>,
    /// The DNS names among the subject alternative names.
    pub dns_names: Vec<String>,
    /// The URIs among the subject alternative names (SPIFFE ids).
    pub uris: Vec<String>,
}

impl PeerIdentity {
    /// The names in a DER certificate; `None` when it does not parse
    /// (rustls has verified it, so it does).
    pub fn from_der(der: &[u8]) -> Option<PeerIdentity> {
        use x509_parser::extensions::GeneralName;
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, certificate) = X509Certificate::from_der(der).ok()?;
        let mut identity = PeerIdentity {
            common_names: certificate
                .subject()
                .iter_common_name()
                .filter_map(|name| name.as_str().ok().map(str::to_string))
                .collect(),
            ..PeerIdentity::default()
        };
        if let Ok(Some(names)) = certificate.subject_alternative_name() {
            for name in &names.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => identity.dns_names.push(dns.to_string()),
                    GeneralName::URI(uri) => identity.uris.push(uri.to_string()),
                    _ => {}
                }
            }
        }
        Some(identity)
    }

    fn matches(&self, wanted: &ClientMatch) -> bool {
        match wanted {
            ClientMatch::CommonName(name) => self.common_names.contains(name),
            // DNS names compare without regard to case (RFC 4343).
            ClientMatch::DnsName(name) => {
                self.dns_names.iter().any(|dns| dns.eq_ignore_ascii_case(name))
            }
            ClientMatch::Uri(uri) => self.uris.contains(uri),
        }
    }
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
    /// is the right-most address of the configured forwarded header that is
    /// not itself a trusted proxy. An entry that is not an address (`unknown`,
    /// an obfuscated name, garbage) ends the walk: nothing left of it can be
    /// believed, so the last trusted hop counts as the client.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddress {
        // An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return ClientAddress { client: peer, peer };
        }
        let proxies = &self.settings.trusted_proxies;
        let mut client = peer;
        for hop in forwarded_hops(headers, self.settings.forwarded_header).into_iter().rev() {
            let Some(address) = hop else { break };
            client = address.to_canonical();
            if !Cidr::any_contains(proxies, client) {
                break;
            }
        }
        ClientAddress { client, peer }
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        let proxies = &self.settings.trusted_proxies;
        !proxies.is_empty() && Cidr::any_contains(proxies, peer.to_canonical())
    }

    /// The path prefix the client reaches healthd under ("" for none), as
    /// the direct peer says when it is a trusted proxy: `forwarded_prefix`
    /// when set, else `X-Forwarded-Prefix` (several values, from a chain of
    /// proxies, are joined in order). From anyone else, or when the header
    /// is not a plain path, there is none: a client must not choose the
    /// URLs that Swagger UI and the served contract point to.
    pub fn external_prefix(&self, peer: IpAddr, headers: &HeaderMap) -> String {
        if !self.trusts(peer) {
            return String::new();
        }
        if let Some(prefix) = &self.settings.forwarded_prefix {
            return prefix.to_string();
        }
        let mut prefix = String::new();
        for value in headers.get_all("x-forwarded-prefix") {
            let Ok(value) = value.to_str() else { return String::new() };
            for part in value.split(',') {
                match Prefix::parse(part.trim()) {
                    Ok(part) => prefix.push_str(part.as_str()),
                    Err(_) => return String::new(),
                }
            }
        }
        prefix
    }

    pub fn allowed(&self, address: &ClientAddress) -> bool {
        Cidr::any_contains(&self.settings.allow, address.client)
    }

    /// Reads the bearer token, if any; without one, the connection's
    /// verified client certificate (`peer`), if any. A present but
    /// malformed or unknown token is an error, whatever the certificate; a
    /// certificate that matches no `[[access.clients]]` entry is anonymous.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<Principal, BadToken> {
        match bearer_digest(headers) {
            None => Ok(peer.map_or(Principal::Anonymous, |peer| self.client(peer))),
            Some(digest) => self.token(&digest?).ok_or(BadToken),
        }
    }

    /// The configured token whose digest this is.
    pub fn token(&self, digest: &[u8; 32]) -> Option<Principal> {
        // Compare with every token, always, so timing tells nothing.
        let mut found = None;
        for (index, configured) in self.settings.tokens.iter().enumerate() {
            if digests_match(digest, &configured.sha256) {
                found = Some(index);
            }
        }
        found.map(Principal::Token)
    }

    /// Whether the principal may ping every heartbeat: a token with the
    /// `ping` scope.
    pub fn may_ping(&self, principal: Principal) -> bool {
        self.scopes(principal).is_some_and(|scopes| scopes.ping)
    }

    /// A token's scopes; `None` for other principals.
    fn scopes(&self, principal: Principal) -> Option<Scopes> {
        match principal {
            Principal::Token(index) => self.settings.tokens.get(index).map(|token| token.scopes),
            Principal::Anonymous | Principal::Client(_) => None,
        }
    }

    /// Whether the principal may read details where `details` lets
    /// principals: a token with the `read` scope, or a client certificate.
    fn reads(&self, principal: Principal) -> bool {
        match principal {
            Principal::Anonymous => false,
            Principal::Token(_) => self.scopes(principal).is_some_and(|scopes| scopes.read),
            Principal::Client(_) => true,
        }
    }

    /// The first `[[access.clients]]` entry the certificate matches.
    fn client(&self, peer: &PeerIdentity) -> Principal {
        self.settings
            .clients
            .iter()
            .position(|client| peer.matches(&client.matches))
            .map_or(Principal::Anonymous, Principal::Client)
    }

    /// Whether the `details` setting could show this principal the checks
    /// from some address: when not, the address need not be worked out.
    pub fn may_see_details(&self, principal: Principal) -> bool {
        match self.settings.details {
            Details::Never => false,
            Details::Authorized => self.reads(principal),
            Details::Always => true,
        }
    }

    /// Whether this caller sees checks, given the `details` setting.
    pub fn sees_details(
        &self,
        address: &ClientAddress,
        principal: Principal,
    ) -> Result<(), DetailsDenied> {
        // Checked in this order so that the refusal names the first reason.
        if self.settings.details == Details::Never {
            return Err(DetailsDenied::Disabled);
        }
        if !Cidr::any_contains(&self.settings.details_allow, address.client) {
            return Err(DetailsDenied::Address);
        }
        if !self.may_see_details(principal) {
            // A token that may not read is refused as such, not asked for again.
            let scoped = matches!(principal, Principal::Token(_));
            return Err(if scoped { DetailsDenied::Scope } else { DetailsDenied::NeedsToken });
        }
        Ok(())
    }

    /// Whether this caller sees the checks of a group whose own `details`
    /// is `cap`: a group may show less than `[access]` allows, never more.
    /// `address` is worked out only when it matters.
    pub fn sees_details_within(
        &self,
        cap: Option<Details>,
        principal: Principal,
        address: impl FnOnce() -> ClientAddress,
    ) -> bool {
        let cap_allows = match cap {
            None | Some(Details::Always) => true,
            Some(Details::Authorized) => principal != Principal::Anonymous,
            Some(Details::Never) => false,
        };
        cap_allows
            && self.may_see_details(principal)
            && self.sees_details(&address(), principal).is_ok()
    }

    /// The token's or the client's configured name, for the access log.
    pub fn principal_name(&self, principal: Principal) -> &str {
        match principal {
            Principal::Anonymous => "anonymous",
            Principal::Token(index) => {
                self.settings.tokens.get(index).map_or("anonymous", |token| token.name.as_str())
            }
            Principal::Client(index) => {
                self.settings.clients.get(index).map_or("anonymous", |client| client.name.as_str())
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
    /// A token without the `read` scope.
    Scope,
}

/// The SHA-256 of the bearer token sent, if one is; a malformed
/// `Authorization` (another scheme, an empty token) is an error.
pub fn bearer_digest(headers: &HeaderMap) -> Option<Result<[u8; 32], BadToken>> {
    let value = headers.get(AUTHORIZATION)?;
    let token = value.as_bytes();
    let token = match token.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => token[7..].trim_ascii(),
        _ => return Some(Err(BadToken)),
    };
    if token.is_empty() {
        return Some(Err(BadToken));
    }
    Some(Ok(sha256(token)))
}

/// The hops of the forwarded header, oldest first: an address, or `None`
/// for an entry that is not one. Several header lines are one list, in
/// order. Entries are split on raw bytes, so a client's non-UTF-8 garbage
/// spoils only its own entries, not the ones its proxy appended.
fn forwarded_hops(headers: &HeaderMap, which: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    let name = match which {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    for value in headers.get_all(name) {
        for entry in value.as_bytes().split(|byte| *byte == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let node = match which {
                ForwardedHeader::XForwardedFor => Some(entry),
                // `for=...;proto=https`: a hop without `for` tells nothing.
                ForwardedHeader::Forwarded => entry.split(|byte| *byte == b';').find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let (key, node) = pair.split_at(pair.iter().position(|byte| *byte == b'=')?);
                    key.eq_ignore_ascii_case(b"for").then(|| node[1..].trim_ascii())
                }),
            };
            let node = node.and_then(|node| std::str::from_utf8(node).ok());
            hops.push(node.and_then(|node| parse_node(node.trim_matches('"'))));
        }
    }
    hops
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
    use crate::config::{ClientSettings, TokenSettings};
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn access(trusted: &[&str]) -> Access {
        access_reading(trusted, ForwardedHeader::XForwardedFor)
    }

    fn access_reading(trusted: &[&str], forwarded_header: ForwardedHeader) -> Access {
        Access::new(AccessSettings {
            details: Details::Authorized,
            allow: vec!["0.0.0.0/0".parse().unwrap()],
            details_allow: vec!["127.0.0.0/8".parse().unwrap()],
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            forwarded_header,
            forwarded_prefix: None,
            tokens: vec![
                TokenSettings {
                    name: "ops".into(),
                    sha256: sha256(b"s3cret"),
                    scopes: Scopes::DEFAULT,
                },
                TokenSettings {
                    name: "cron".into(),
                    sha256: sha256(b"p1ng"),
                    scopes: Scopes { read: false, ping: true },
                },
            ],
            clients: vec![
                ClientSettings {
                    name: "prometheus".into(),
                    matches: ClientMatch::DnsName("prometheus.monitoring".into()),
                },
                ClientSettings {
                    name: "agent".into(),
                    matches: ClientMatch::Uri("spiffe://example.org/agent".into()),
                },
                ClientSettings {
                    name: "legacy".into(),
                    matches: ClientMatch::CommonName("legacy-scraper".into()),
                },
            ],
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
        // Two header lines are one list, in order.
        let lines =
            headers(&[("x-forwarded-for", "127.0.0.1"), ("x-forwarded-for", "2001:db8::7")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &lines).client, ip("2001:db8::7"));

        let access = access_reading(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        let forwarded =
            headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.3")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &forwarded).client, ip("2001:db8::1"));
    }

    #[test]
    fn only_the_configured_forwarded_header_is_read() {
        // The proxy writes X-Forwarded-For; a client's own Forwarded passes through it.
        let access = access(&["10.0.0.0/8"]);
        let both = headers(&[("forwarded", "for=127.0.0.1"), ("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &both).client, ip("198.51.100.7"));
        let access = access_reading(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        let both = headers(&[("x-forwarded-for", "127.0.0.1"), ("forwarded", "for=198.51.100.7")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &both).client, ip("198.51.100.7"));
    }

    #[test]
    fn an_entry_that_is_not_an_address_stops_the_walk_at_the_last_trusted_hop() {
        let access = access(&["10.0.0.0/8"]);
        let hidden = headers(&[("x-forwarded-for", "127.0.0.1, unknown, 10.0.0.2")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &hidden).client, ip("10.0.0.2"));
        let access = access_reading(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        let hidden = headers(&[("forwarded", "for=127.0.0.1, for=_hidden")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &hidden).client, ip("10.0.0.1"));
        let no_for = headers(&[("forwarded", "for=127.0.0.1, proto=https")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &no_for).client, ip("10.0.0.1"));
    }

    #[test]
    fn garbage_bytes_spoil_only_their_own_entry() {
        let access = access(&["10.0.0.0/8"]);
        let mut map = HeaderMap::new();
        map.append(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.7").unwrap(),
        );
        assert_eq!(access.client_address(ip("10.0.0.1"), &map).client, ip("198.51.100.7"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_plain_ipv4() {
        let access = access(&["10.0.0.0/8"]);
        let address = access.client_address(
            ip("::ffff:10.0.0.1"),
            &headers(&[("x-forwarded-for", "::ffff:198.51.100.7")]),
        );
        assert_eq!(address.peer, ip("10.0.0.1"));
        assert_eq!(address.client, ip("198.51.100.7"));
    }

    #[test]
    fn a_chain_of_trusted_proxies_ends_at_the_first_one() {
        let access = access(&["10.0.0.0/8"]);
        let chain = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.8")]);
        assert_eq!(access.client_address(ip("10.0.0.1"), &chain).client, ip("10.0.0.9"));
    }

    #[test]
    fn tokens_are_checked() {
        let access = access(&[]);
        assert_eq!(access.authenticate(&headers(&[]), None).unwrap(), Principal::Anonymous);
        assert_eq!(
            access.authenticate(&headers(&[("authorization", "Bearer s3cret")]), None).unwrap(),
            Principal::Token(0)
        );
        assert!(access.authenticate(&headers(&[("authorization", "Bearer wrong")]), None).is_err());
        assert!(access.authenticate(&headers(&[("authorization", "Basic s3cret")]), None).is_err());
        assert!(access.authenticate(&headers(&[("authorization", "Bearer ")]), None).is_err());
    }

    #[test]
    fn a_client_certificate_is_the_principal_of_the_entry_it_matches() {
        let access = access(&[]);
        let peer = |common_name: &str, dns: &str, uri: &str| PeerIdentity {
            common_names: vec![common_name.into()],
            dns_names: vec![dns.into()],
            uris: vec![uri.into()],
        };
        let cases = [
            (peer("x", "Prometheus.Monitoring", "spiffe://x"), Principal::Client(0)),
            (peer("x", "y", "spiffe://example.org/agent"), Principal::Client(1)),
            (peer("legacy-scraper", "y", "spiffe://x"), Principal::Client(2)),
            // Verified, but no entry names it: anonymous.
            (
                peer("prometheus.monitoring", "y", "spiffe://example.org/agent/2"),
                Principal::Anonymous,
            ),
        ];
        for (peer, expected) in cases {
            assert_eq!(
                access.authenticate(&headers(&[]), Some(&peer)).unwrap(),
                expected,
                "{peer:?}"
            );
        }
        assert_eq!(access.principal_name(Principal::Client(1)), "agent");
        // A token, when sent, decides: a wrong one is refused whatever the certificate.
        let prometheus = peer("x", "prometheus.monitoring", "spiffe://x");
        let wrong = headers(&[("authorization", "Bearer wrong")]);
        assert!(access.authenticate(&wrong, Some(&prometheus)).is_err());
        let right = headers(&[("authorization", "Bearer s3cret")]);
        assert_eq!(access.authenticate(&right, Some(&prometheus)).unwrap(), Principal::Token(0));
    }

    #[test]
    fn scopes_decide_what_a_token_may_do() {
        let access = access(&[]);
        let local = ClientAddress { client: ip("127.0.0.1"), peer: ip("127.0.0.1") };
        // The default: read, and no ping.
        assert!(!access.may_ping(Principal::Token(0)));
        assert!(access.may_see_details(Principal::Token(0)));
        // Ping only: no details, refused as a token that may not read.
        assert!(access.may_ping(Principal::Token(1)));
        assert!(!access.may_see_details(Principal::Token(1)));
        assert_eq!(access.sees_details(&local, Principal::Token(1)), Err(DetailsDenied::Scope));
        assert!(!access.may_ping(Principal::Anonymous) && !access.may_ping(Principal::Client(0)));
        assert_eq!(access.token(&sha256(b"p1ng")), Some(Principal::Token(1)));
        assert_eq!(access.token(&sha256(b"nope")), None);
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
        assert!(access.may_see_details(Principal::Token(0)));
        assert!(!access.may_see_details(Principal::Anonymous));
    }

    #[test]
    fn the_prefix_is_believed_only_from_a_trusted_proxy() {
        let access = access(&["10.0.0.0/8"]);
        let sent = headers(&[("x-forwarded-prefix", "/ops/")]);
        assert_eq!(access.external_prefix(ip("10.0.0.1"), &sent), "/ops");
        assert_eq!(access.external_prefix(ip("192.0.2.1"), &sent), "");
        assert_eq!(access.external_prefix(ip("10.0.0.1"), &headers(&[])), "");
        // A chain of proxies, each adding its own.
        let chain = headers(&[("x-forwarded-prefix", "/api, /ops")]);
        assert_eq!(access.external_prefix(ip("10.0.0.1"), &chain), "/api/ops");
        // Anything but a plain path is no prefix at all.
        for bad in ["ops", "/a/../b", "//evil.example", "/a\"b", "/%zz", "/a b", "https://x/y"] {
            let sent = headers(&[("x-forwarded-prefix", bad)]);
            assert_eq!(access.external_prefix(ip("10.0.0.1"), &sent), "", "{bad}");
        }
    }

    #[test]
    fn a_fixed_prefix_wins_over_the_header_and_still_needs_a_trusted_peer() {
        let mut settings = access(&["10.0.0.0/8"]).settings;
        settings.forwarded_prefix = Prefix::parse("/fixed").ok();
        let access = Access::new(settings);
        let sent = headers(&[("x-forwarded-prefix", "/other")]);
        assert_eq!(access.external_prefix(ip("10.0.0.1"), &sent), "/fixed");
        assert_eq!(access.external_prefix(ip("192.0.2.1"), &sent), "");
    }
}
