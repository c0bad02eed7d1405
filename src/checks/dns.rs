//! `kind = "dns"`: a query for one domain name and record type, against the
//! servers given (or the system's, from `/etc/resolv.conf`), with hickory's
//! stub resolver; the answers may be held to what is expected.
//!
//! The resolver is built once per check and told to be a probe, not a
//! cache: no caching (every run asks the server), no hosts file, no search
//! domains (the name is made absolute), no retries of its own (the
//! monitor's `retries` are the retries) and a per-query timeout of the
//! check's deadline.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use healthd_models::ComponentType;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::TokioResolver;
use serde::Deserialize;

use crate::base::policy::Policy;
use crate::checks::util::categories::{error_chain, io_category};
use crate::checks::util::pattern::text_pattern;
use crate::checks::{elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation};

pub const KIND: Kind = Kind::new(
    "dns",
    &[
        "domain",
        "record_type",
        "servers",
        "protocol",
        "expect_exact",
        "expect_contains",
        "expect_regex",
        "expect_rcode",
    ],
    parse,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsFields {
    domain: Option<String>,
    record_type: Option<String>,
    servers: Option<Vec<String>>,
    protocol: Option<String>,
    expect_exact: Option<Vec<String>>,
    expect_contains: Option<Vec<String>>,
    expect_regex: Option<String>,
    expect_rcode: Option<String>,
}

/// What the answers are held to.
#[derive(Debug, Clone, Default)]
struct Expect {
    /// The answers, as a set, are exactly these.
    exact: Option<Vec<String>>,
    /// Each of these is among the answers.
    contains: Vec<String>,
    /// At least one answer matches.
    regex: Option<regex::Regex>,
    /// The response code that passes (NOERROR unless set).
    rcode: u16,
}

#[derive(Debug)]
struct DnsSettings {
    query: String,
    record_type: RecordType,
    /// `None`: the system's servers.
    servers: Option<Vec<SocketAddr>>,
    tcp: bool,
    expect: Expect,
}

/// The response codes a config may name, by number.
const RCODES: [(u16, &str); 6] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
];

fn rcode_name(code: u16) -> String {
    RCODES
        .iter()
        .find(|(number, _)| *number == code)
        .map_or_else(|| format!("RCODE {code}"), |(_, name)| name.to_string())
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: DnsFields = input.fields()?;
    let query = input.required("domain", fields.domain)?;
    let absolute = if query.ends_with('.') { query.clone() } else { format!("{query}.") };
    if hickory_resolver::proto::rr::Name::from_str(&absolute).is_err() || query.is_empty() {
        input.report_at("domain", format!("{query:?} is not a domain name"));
        return None;
    }
    let type_text = fields.record_type.unwrap_or_else(|| "A".into());
    let record_type = match RecordType::from_str(&type_text.to_ascii_uppercase()) {
        Ok(RecordType::Unknown(_)) | Err(_) => {
            input.report_at(
                "record_type",
                format!("unknown record type {type_text:?}: expected A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT, ..."),
            );
            return None;
        }
        Ok(record_type) => record_type,
    };
    let servers = match fields.servers {
        None => None,
        Some(list) if list.is_empty() => {
            input.report_at(
                "servers",
                "is empty: name at least one, or leave it out for the system's",
            );
            return None;
        }
        Some(list) => {
            let mut servers = Vec::new();
            for text in list {
                let parsed = text
                    .parse::<SocketAddr>()
                    .ok()
                    .or_else(|| text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
                match parsed {
                    Some(server) => servers.push(server),
                    None => {
                        input.report_at(
                            "servers",
                            format!("{text:?} is not IP or IP:PORT (such as \"10.0.0.2\" or \"127.0.0.1:5353\")"),
                        );
                        return None;
                    }
                }
            }
            Some(servers)
        }
    };
    let tcp = match fields.protocol.as_deref() {
        None | Some("udp") => false,
        Some("tcp") => true,
        Some(other) => {
            input.report_at("protocol", format!("{other:?}: expected \"udp\" or \"tcp\""));
            return None;
        }
    };
    let regex = match fields.expect_regex {
        None => None,
        Some(text) => match text_pattern(&text) {
            Ok(regex) => Some(regex),
            Err(reason) => {
                input.report_at("expect_regex", reason);
                return None;
            }
        },
    };
    let rcode = match fields.expect_rcode {
        None => 0,
        Some(text) => match RCODES.iter().find(|(_, name)| name.eq_ignore_ascii_case(&text)) {
            Some((number, _)) => *number,
            None => {
                input.report_at(
                    "expect_rcode",
                    format!("unknown response code {text:?}: expected NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ..."),
                );
                return None;
            }
        },
    };
    let has_answers =
        fields.expect_exact.is_some() || fields.expect_contains.is_some() || regex.is_some();
    if rcode != 0 && has_answers {
        input.report_at(
            "expect_rcode",
            format!(
                "{} has no answers to hold to expect_exact, expect_contains or expect_regex",
                rcode_name(rcode)
            ),
        );
        return None;
    }
    let normal = |list: Vec<String>| list.iter().map(|text| normalise(text)).collect::<Vec<_>>();
    let expect = Expect {
        exact: fields.expect_exact.map(normal),
        contains: normal(fields.expect_contains.unwrap_or_default()),
        regex,
        rcode,
    };
    Some(Arc::new(DnsSettings { query: absolute, record_type, servers, tcp, expect }))
}

/// An answer as compared: without the final dot of a name, IP addresses in
/// their canonical form.
fn normalise(text: &str) -> String {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return ip.to_string();
    }
    text.strip_suffix('.').unwrap_or(text).to_string()
}

impl KindSettings for DnsSettings {
    fn descriptors(&self) -> usize {
        // A UDP socket per query, and a TCP one when an answer is truncated.
        2
    }

    fn build(&self, _name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match &self.servers {
            None => TokioResolver::builder_tokio().map_err(|error| {
                anyhow::anyhow!("reading the system's DNS configuration: {error}")
            })?,
            Some(servers) => {
                let protocol = || if self.tcp { ProtocolConfig::Tcp } else { ProtocolConfig::Udp };
                let name_servers = servers
                    .iter()
                    .map(|server| {
                        let mut connection = ConnectionConfig::new(protocol());
                        connection.port = server.port();
                        NameServerConfig::new(server.ip(), true, vec![connection])
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], name_servers),
                    provider,
                )
            }
        };
        let options = builder.options_mut();
        // Past the check's deadline: the monitor cuts a hung query, and says so.
        options.timeout = policy.timeout + Duration::from_secs(1);
        options.attempts = 0;
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        options.use_hosts_file = ResolveHosts::Never;
        options.ndots = 0;
        options.try_tcp_on_error = false;
        let resolver = builder
            .build()
            .map_err(|error| anyhow::anyhow!("building the DNS resolver: {error}"))?;
        Ok(Arc::new(DnsCheck {
            query: self.query.clone(),
            record_type: self.record_type,
            expect: self.expect.clone(),
            resolver,
        }))
    }
}

struct DnsCheck {
    query: String,
    record_type: RecordType,
    expect: Expect,
    resolver: TokioResolver,
}

/// The status for the answers a NOERROR response held.
fn judge(
    expect: &Expect,
    record_type: RecordType,
    answers: &[String],
    values: Vec<Option<f64>>,
) -> Observation {
    if expect.rcode != 0 {
        return Observation::fail_with(
            format!("NOERROR, expected {}", rcode_name(expect.rcode)),
            values,
        );
    }
    if answers.is_empty() {
        return Observation::fail_with(format!("no {record_type} records"), values);
    }
    if let Some(exact) = &expect.exact {
        let mut wanted = exact.clone();
        let mut got = answers.to_vec();
        wanted.sort();
        wanted.dedup();
        got.sort();
        got.dedup();
        if wanted != got {
            return Observation::fail_with("answers differ from expect_exact", values);
        }
    }
    if let Some(missing) = expect.contains.iter().find(|wanted| !answers.contains(wanted)) {
        return Observation::fail_with(format!("{missing} is not among the answers"), values);
    }
    if let Some(regex) = &expect.regex {
        if !answers.iter().any(|answer| regex.is_match(answer)) {
            return Observation::fail_with("no answer matches expect_regex", values);
        }
    }
    Observation::pass(values)
}

impl DnsCheck {
    /// A lookup that failed: a response code, or no response.
    fn failed(&self, error: &NetError, response_time: Option<f64>) -> Observation {
        let rcode = match error {
            NetError::Dns(DnsError::NoRecordsFound(records)) => Some(records.response_code),
            NetError::Dns(DnsError::ResponseCode(code)) => Some(*code),
            _ => None,
        };
        if let Some(code) = rcode {
            let code = u16::from(code);
            let values = vec![response_time, Some(0.0)];
            if code == self.expect.rcode {
                return Observation::pass(values);
            }
            if code == 0 {
                return judge(&self.expect, self.record_type, &[], values);
            }
            return Observation::fail_with(rcode_name(code), values);
        }
        let detail = error_chain(error);
        match error {
            NetError::Io(io) => Observation::fail(io_category(io)),
            NetError::Timeout => Observation::fail("no answer from the server"),
            // hickory folds a refused or failed connect to every server into this.
            NetError::NoConnections => Observation::fail("connection failed"),
            _ => Observation::fail("DNS error"),
        }
        .with_detail(detail)
    }
}

impl Check for DnsCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        &[("responseTime", "ms"), ("answers", "records")]
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            match self.resolver.lookup(self.query.as_str(), self.record_type).await {
                Ok(lookup) => {
                    let response_time = elapsed_ms(started);
                    let answers: Vec<String> = lookup
                        .answers()
                        .iter()
                        .filter(|record| record.record_type() == self.record_type)
                        .map(|record| normalise(&record.data.to_string()))
                        .collect();
                    judge(
                        &self.expect,
                        self.record_type,
                        &answers,
                        vec![response_time, Some(answers.len() as f64)],
                    )
                }
                Err(error) => self.failed(&error, elapsed_ms(started)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthd_models::HealthStatus;

    fn judged(expect: Expect, answers: &[&str]) -> Observation {
        let answers: Vec<String> = answers.iter().map(|a| normalise(a)).collect();
        judge(&expect, RecordType::A, &answers, vec![Some(1.0), Some(answers.len() as f64)])
    }

    #[test]
    fn answers_are_held_to_what_is_expected() {
        let exact =
            Expect { exact: Some(vec!["10.0.0.2".into(), "10.0.0.1".into()]), ..Expect::default() };
        assert_eq!(judged(exact.clone(), &["10.0.0.1", "10.0.0.2"]).status, HealthStatus::Pass);
        assert_eq!(
            judged(exact, &["10.0.0.1"]).output.as_deref(),
            Some("answers differ from expect_exact")
        );
        let contains = Expect { contains: vec!["10.0.0.9".into()], ..Expect::default() };
        assert_eq!(
            judged(contains, &["10.0.0.1"]).output.as_deref(),
            Some("10.0.0.9 is not among the answers")
        );
        let regex =
            Expect { regex: Some(regex::Regex::new("^v=spf1 ").unwrap()), ..Expect::default() };
        assert_eq!(judged(regex.clone(), &["v=spf1 -all"]).status, HealthStatus::Pass);
        assert_eq!(
            judged(regex, &["hello"]).output.as_deref(),
            Some("no answer matches expect_regex")
        );
        assert_eq!(judged(Expect::default(), &[]).output.as_deref(), Some("no A records"));
    }

    #[test]
    fn names_and_addresses_compare_in_one_form() {
        assert_eq!(normalise("mail.example.com."), "mail.example.com");
        assert_eq!(normalise("10 mail.example.com."), "10 mail.example.com");
        assert_eq!(normalise("2001:db8:0::1"), "2001:db8::1");
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(23), "RCODE 23");
    }
}
