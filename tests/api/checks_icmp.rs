//! `kind = "icmp"`: echo requests to loopback and to a network namespace the
//! test makes (a veth pair on 198.18.0.0/15), whose peer answers, ignores
//! every request, or answers through a responder that loses 30% of them or
//! holds each for 200 ms. Only loopback and the namespace are pinged.

use std::time::Duration;

use reqwest::StatusCode;

use crate::support::app::spawn_app;
use crate::support::checks::{config, shows, wait_shows, DEADLINE};
use crate::support::netns::Namespace;

const RTT: &str = "peer:roundTripTime";
const LOSS: &str = "peer:packetLoss";

/// One icmp check named `peer` pinging `address`; `extra` adds keys (the
/// policy included).
fn peer_check(address: &str, extra: &str) -> String {
    config(&format!(
        r#"
[[checks]]
name = "peer"
kind = "icmp"
address = "{address}"
retries = 0
{extra}
"#
    ))
}

/// Three requests 50 ms apart, every 1.5 s with a 1 s deadline.
const QUICK: &str = "count = 3\nping_interval = \"50ms\"\ninterval = \"1500ms\"\ntimeout = \"1s\"";

fn value(answer: &crate::support::app::Answer, key: &str) -> Option<f64> {
    answer.check(key)?.get("observedValue")?.as_f64()
}

#[tokio::test]
async fn loopback_answers_with_no_loss_and_a_round_trip_time() {
    // Arrange
    let app = spawn_app(&peer_check("127.0.0.1", QUICK)).await;

    // Act
    let answer = wait_shows(&app, RTT, "pass", None).await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK, "{:#}", answer.json);
    let rtt = answer.check(RTT).unwrap();
    assert_eq!(rtt["status"], "pass");
    assert_eq!(rtt["componentType"], "component");
    assert_eq!(rtt["observedUnit"], "ms");
    assert!(rtt["observedValue"].as_f64().is_some_and(|ms| (0.0..100.0).contains(&ms)), "{rtt}");
    assert_eq!(answer.check(LOSS).unwrap()["observedUnit"], "%");
    assert_eq!(value(&answer, LOSS), Some(0.0));
}

#[tokio::test]
async fn a_peer_that_stops_answering_fails_with_full_loss_and_passes_once_it_answers_again() {
    // Arrange: the namespace's kernel answers at first.
    let namespace = Namespace::create();
    let app = spawn_app(&peer_check(&namespace.peer_ip.to_string(), QUICK)).await;
    wait_shows(&app, RTT, "pass", None).await;

    // Act: it ignores every echo request.
    namespace.kernel_answers(false);
    let silent = wait_shows(&app, RTT, "fail", Some("no reply (100% packet loss)")).await;

    // Assert: cut by the check itself, before the deadline, so the loss shows.
    assert_eq!(silent.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(value(&silent, LOSS), Some(100.0));

    // Act
    namespace.kernel_answers(true);
    let back = wait_shows(&app, RTT, "pass", None).await;

    // Assert
    assert_eq!(value(&back, LOSS), Some(0.0));
}

#[tokio::test]
async fn a_peer_that_loses_30_percent_warns_with_the_loss_it_saw() {
    // Arrange: 20 requests a run; warn from 10% lost, fail from 90%.
    let namespace = Namespace::create();
    let _responder = namespace.responder(0.3, Duration::ZERO);
    let keys = "count = 20\nping_interval = \"25ms\"\ninterval = \"2s\"\ntimeout = \"1500ms\"\n\
                warn_loss = \"10%\"\nfail_loss = \"90%\"";
    let app = spawn_app(&peer_check(&namespace.peer_ip.to_string(), keys)).await;

    // Act
    let answer = wait_shows(&app, RTT, "warn", Some("packet loss at or above 10%")).await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK);
    let loss = value(&answer, LOSS).unwrap();
    assert!((10.0..90.0).contains(&loss), "{loss}% lost");
    assert!(value(&answer, RTT).is_some());
}

#[tokio::test]
async fn a_peer_200_ms_away_shows_the_delay_and_warns_above_warn_rtt() {
    // Arrange
    let namespace = Namespace::create();
    let _responder = namespace.responder(0.0, Duration::from_millis(200));
    let keys = format!("{QUICK}\nwarn_rtt = \"100ms\"\nfail_rtt = \"500ms\"");
    let app = spawn_app(&peer_check(&namespace.peer_ip.to_string(), &keys)).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, RTT, "warn", Some("round trip above 100 ms"))
        })
        .await;

    // Assert
    let rtt = value(&answer, RTT).unwrap();
    assert!((200.0..500.0).contains(&rtt), "{rtt} ms");
    assert_eq!(value(&answer, LOSS), Some(0.0));
}

#[test]
fn check_config_refuses_icmp_where_no_socket_opens_and_says_why() {
    // Arrange: as `nobody` when root (no CAP_NET_RAW then); whether an
    // unprivileged ICMP socket opens depends on the machine's
    // net.ipv4.ping_group_range, which decides what to expect.
    let path = std::env::temp_dir().join(format!("healthd-icmp-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[checks]]\nname = \"peer\"\nkind = \"icmp\"\naddress = \"127.0.0.1\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap();
    let bounds: Vec<u32> = range.split_whitespace().map(|n| n.parse().unwrap()).collect();
    // SAFETY: geteuid and getegid have no preconditions.
    let (root, own_gid) = unsafe { (libc::geteuid() == 0, libc::getegid()) };
    let gid = if root { 65534 } else { own_gid };
    let unprivileged = (bounds[0]..=bounds[1]).contains(&gid);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_healthd"));
    command.args(["check-config", "--config"]).arg(&path).env_remove("HEALTHD_CONFIG");
    if root {
        use std::os::unix::process::CommandExt;
        command.uid(65534).gid(65534);
    }

    // Act
    let output = command.output().unwrap();
    let _ = std::fs::remove_file(&path);

    // Assert
    let stderr = String::from_utf8_lossy(&output.stderr);
    if unprivileged {
        assert_eq!(output.status.code(), Some(0), "{stderr}");
    } else {
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(
                ": checks[0]: cannot open an ICMP socket: unprivileged ICMP is not allowed"
            ),
            "{stderr}"
        );
        assert!(stderr.contains("CAP_NET_RAW"), "{stderr}");
    }
}

#[tokio::test]
async fn ipv6_loopback_answers_too() {
    // Arrange
    let app = spawn_app(&peer_check("::1", QUICK)).await;

    // Act
    let answer = wait_shows(&app, RTT, "pass", None).await;

    // Assert
    assert!(shows(&answer, RTT, "pass", None), "{:#}", answer.json);
    assert_eq!(value(&answer, LOSS), Some(0.0));
}
