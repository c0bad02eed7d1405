//! `kind = "icmp"`: `count` echo requests to `address`, `ping_interval`
//! apart, with surge-ping; the share lost and the mean round trip, each
//! with warn and fail limits.
//!
//! Sockets: an unprivileged ICMP socket (`SOCK_DGRAM`) where
//! `net.ipv4.ping_group_range` admits healthd's group, else a raw one,
//! which needs root or CAP_NET_RAW. Which of the two opens is tried at load,
//! so a host where neither does is a config problem, not a check that
//! fails forever. The client (its socket and the task that reads replies)
//! is made once per check.
//!
//! A run must end before the monitor's deadline cuts it (the losses counted
//! so far would go with it): every request waits for its reply until 90% of
//! `timeout` has passed since the run began.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use healthd_models::ComponentType;
use serde::Deserialize;
use surge_ping::{Client, Config, PingIdentifier, PingSequence, SurgeError, ICMP};

use crate::base::policy::Policy;
use crate::base::units::DurationText;
use crate::base::units::PercentText;
use crate::checks::util::categories::io_category;
use crate::checks::{BoxFuture, Check, Kind, KindInput, KindSettings, Observation};

pub const KIND: Kind = Kind::new(
    "icmp",
    &["address", "count", "ping_interval", "warn_loss", "fail_loss", "warn_rtt", "fail_rtt"],
    parse,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpFields {
    address: Option<String>,
    count: Option<u16>,
    ping_interval: Option<DurationText>,
    warn_loss: Option<PercentText>,
    fail_loss: Option<PercentText>,
    warn_rtt: Option<DurationText>,
    fail_rtt: Option<DurationText>,
}

#[derive(Debug, Clone)]
struct IcmpSettings {
    address: IpAddr,
    count: u16,
    ping_interval: Duration,
    warn_loss: f64,
    fail_loss: f64,
    warn_rtt: Option<Duration>,
    fail_rtt: Option<Duration>,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: IcmpFields = input.fields()?;
    let text = input.required("address", fields.address)?;
    let Ok(address) = text.parse::<IpAddr>() else {
        input.report_at(
            "address",
            format!("{text:?} is not an IP address (the icmp kind pings an address, not a name)"),
        );
        return None;
    };
    let count = fields.count.unwrap_or(3);
    if !(1..=100).contains(&count) {
        input.report_at("count", format!("{count}: from 1 to 100"));
        return None;
    }
    let ping_interval = fields.ping_interval.map_or(Duration::from_millis(200), |d| d.0);
    if ping_interval.is_zero() {
        input.report_at("ping_interval", "must be above 0");
        return None;
    }
    let sending = ping_interval * u32::from(count - 1);
    if sending > input.policy.timeout / 2 {
        input.report_at(
            "count",
            format!(
                "{count} requests {} ms apart take {} ms to send, more than half of timeout ({} ms): \
                 the last would have no time to come back",
                ping_interval.as_millis(),
                sending.as_millis(),
                input.policy.timeout.as_millis()
            ),
        );
        return None;
    }
    let warn_loss = fields.warn_loss.map_or(20.0, |p| p.0);
    let fail_loss = fields.fail_loss.map_or(60.0, |p| p.0);
    if warn_loss > fail_loss {
        input.report_at("warn_loss", format!("{warn_loss}% is above fail_loss = {fail_loss}%"));
        return None;
    }
    let warn_rtt = fields.warn_rtt.map(|d| d.0);
    let fail_rtt = fields.fail_rtt.map(|d| d.0);
    if let (Some(warn), Some(fail)) = (warn_rtt, fail_rtt) {
        if warn > fail {
            input.report_at(
                "warn_rtt",
                format!("{} ms is above fail_rtt = {} ms", warn.as_millis(), fail.as_millis()),
            );
            return None;
        }
    }
    if let Err(reason) = can_open_socket(address) {
        input.report(reason);
        return None;
    }
    Some(Arc::new(IcmpSettings {
        address,
        count,
        ping_interval,
        warn_loss,
        fail_loss,
        warn_rtt,
        fail_rtt,
    }))
}

/// Whether an ICMP socket for `address`'s family opens: unprivileged
/// (`SOCK_DGRAM`), else raw. The reason names both ways when neither does.
fn can_open_socket(address: IpAddr) -> Result<(), String> {
    let (domain, protocol) = match address {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    for kind in [libc::SOCK_DGRAM, libc::SOCK_RAW] {
        // SAFETY: socket() takes no pointers; a descriptor it returns is ours to close.
        let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and is closed once.
            unsafe { libc::close(fd) };
            return Ok(());
        }
    }
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    // The one sysctl rules both families.
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
        .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unreadable".into());
    Err(format!(
        "cannot open an ICMP socket: unprivileged ICMP is not allowed for group {gid} \
         (net.ipv4.ping_group_range is \"{range}\") and a raw socket needs root or CAP_NET_RAW"
    ))
}

impl KindSettings for IcmpSettings {
    fn descriptors(&self) -> usize {
        // The one socket the client keeps.
        1
    }

    fn build(&self, _name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        let kind = if self.address.is_ipv4() { ICMP::V4 } else { ICMP::V6 };
        let client = Client::new(&Config::builder().kind(kind).build())
            .map_err(|error| anyhow::anyhow!("opening an ICMP socket: {error}"))?;
        Ok(Arc::new(IcmpCheck {
            settings: self.clone(),
            budget: policy.timeout.mul_f64(0.9),
            client,
            ident: PingIdentifier(fastrand::u16(..)),
            sequence: AtomicU16::new(fastrand::u16(..)),
        }))
    }
}

struct IcmpCheck {
    settings: IcmpSettings,
    /// How long a run waits for replies, from its start.
    budget: Duration,
    client: Client,
    /// Our echo identifier (raw sockets; the kernel sets it for unprivileged ones).
    ident: PingIdentifier,
    /// The next sequence number: runs never reuse a recent one, so a late
    /// reply to an earlier run is never taken for this run's.
    sequence: AtomicU16,
}

/// The status for `received` of `sent` replies with these round trips.
fn judge(settings: &IcmpSettings, sent: u16, rtts: &[Duration]) -> Observation {
    let loss = f64::from(sent - rtts.len() as u16) / f64::from(sent) * 100.0;
    let loss = (loss * 10.0).round() / 10.0;
    let mean = (!rtts.is_empty()).then(|| rtts.iter().sum::<Duration>() / rtts.len() as u32);
    let mean_ms = mean.map(|mean| (mean.as_secs_f64() * 1e6).round() / 1e3);
    let values = vec![mean_ms, Some(loss)];
    let rtt_above = |limit: Option<Duration>| match (mean, limit) {
        (Some(mean), Some(limit)) if mean > limit => Some(limit),
        _ => None,
    };
    if rtts.is_empty() || loss >= settings.fail_loss {
        return Observation::fail_with(loss_output(loss, settings.fail_loss), values);
    }
    if let Some(limit) = rtt_above(settings.fail_rtt) {
        return Observation::fail_with(
            format!("round trip above {} ms", limit.as_millis()),
            values,
        );
    }
    if loss >= settings.warn_loss && loss > 0.0 {
        return Observation::warn(loss_output(loss, settings.warn_loss), values);
    }
    if let Some(limit) = rtt_above(settings.warn_rtt) {
        return Observation::warn(format!("round trip above {} ms", limit.as_millis()), values);
    }
    Observation::pass(values)
}

fn loss_output(loss: f64, limit: f64) -> String {
    if loss >= 100.0 {
        "no reply (100% packet loss)".to_string()
    } else {
        format!("packet loss at or above {limit}%")
    }
}

impl Check for IcmpCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        &[("roundTripTime", "ms"), ("packetLoss", "%")]
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let settings = &self.settings;
            let started = Instant::now();
            let first = self.sequence.fetch_add(settings.count, Ordering::Relaxed);
            let requests = (0..settings.count).map(|index| async move {
                let offset = settings.ping_interval * u32::from(index);
                tokio::time::sleep(offset).await;
                let mut pinger = self.client.pinger(settings.address, self.ident).await;
                pinger.timeout(self.budget.saturating_sub(started.elapsed()));
                let sequence = PingSequence(first.wrapping_add(index));
                pinger.ping(sequence, &[0; 16]).await.map(|(_, rtt)| rtt)
            });
            let results = futures_util::future::join_all(requests).await;
            let rtts: Vec<Duration> =
                results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
            // A send that failed outright (no route, a refused socket) says more than a loss.
            if rtts.is_empty() {
                if let Some(Err(SurgeError::IOError(error))) =
                    results.iter().find(|r| matches!(r, Err(SurgeError::IOError(_))))
                {
                    return Observation::fail_with(io_category(error), vec![None, Some(100.0)])
                        .with_detail(error.to_string());
                }
            }
            judge(settings, settings.count, &rtts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthd_models::HealthStatus;

    fn settings() -> IcmpSettings {
        IcmpSettings {
            address: "127.0.0.1".parse().unwrap(),
            count: 10,
            ping_interval: Duration::from_millis(100),
            warn_loss: 20.0,
            fail_loss: 60.0,
            warn_rtt: Some(Duration::from_millis(100)),
            fail_rtt: Some(Duration::from_millis(500)),
        }
    }

    #[test]
    fn loss_and_round_trip_pick_the_status() {
        let ms = Duration::from_millis;
        let s = settings();
        let pass = judge(&s, 10, &[ms(1); 10]);
        assert_eq!(
            (pass.status, pass.values.clone()),
            (HealthStatus::Pass, vec![Some(1.0), Some(0.0)])
        );
        let lossy = judge(&s, 10, &[ms(1); 7]);
        assert_eq!(
            (lossy.status, lossy.output.as_deref()),
            (HealthStatus::Warn, Some("packet loss at or above 20%"))
        );
        assert_eq!(judge(&s, 10, &[ms(1); 3]).status, HealthStatus::Fail);
        let none = judge(&s, 10, &[]);
        assert_eq!(
            (none.output.as_deref(), none.values),
            (Some("no reply (100% packet loss)"), vec![None, Some(100.0)])
        );
        let slow = judge(&s, 10, &[ms(200); 10]);
        assert_eq!(
            (slow.status, slow.output.as_deref()),
            (HealthStatus::Warn, Some("round trip above 100 ms"))
        );
        assert_eq!(judge(&s, 10, &[ms(600); 10]).status, HealthStatus::Fail);
    }
}
