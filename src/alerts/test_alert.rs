//! `healthd test-alert --receiver NAME`: one notification, marked as a
//! test, sent through the named receiver as the config builds it (its TLS,
//! credentials and timeout), once and without retries, so that a receiver
//! can be tried before an alert depends on it.

use std::fmt;

use chrono::Utc;
use healthd_models::{HealthStatus, Notification, NotificationAlert, NotificationState};

use crate::alerts::receivers::{self, DeliveryError};
use crate::alerts::router::notification_id;
use crate::config::Settings;

/// The name of the one alert a test notification holds.
pub const TEST_ALERT_NAME: &str = "healthd-test-alert";

/// Why a test alert was not sent.
#[derive(Debug)]
pub enum TestAlertError {
    /// No `[[receivers]]` entry has that name; `known` lists those that do.
    UnknownReceiver {
        /// The name asked for.
        name: String,
        /// The receivers the config has, in its order.
        known: Vec<String>,
    },
    /// The receiver cannot be built from its settings (an unreadable
    /// `ca_file`, say).
    Build(String),
    /// The receiver was tried and the delivery failed: the reason, which
    /// never holds a secret.
    Delivery(String),
}

impl fmt::Display for TestAlertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestAlertError::UnknownReceiver { name, known } if known.is_empty() => {
                write!(f, "no receiver is named {name:?}: the config has no [[receivers]]")
            }
            TestAlertError::UnknownReceiver { name, known } => write!(
                f,
                "no receiver is named {name:?}: the config has {}",
                known.iter().map(|known| format!("{known:?}")).collect::<Vec<_>>().join(", ")
            ),
            TestAlertError::Build(reason) => write!(f, "the receiver cannot be built: {reason}"),
            TestAlertError::Delivery(reason) => write!(f, "delivery failed: {reason}"),
        }
    }
}

impl std::error::Error for TestAlertError {}

/// Sends one test notification through the receiver named `receiver`,
/// bounded by its `timeout`. Must run inside a tokio runtime.
pub async fn send_test_alert(settings: &Settings, receiver: &str) -> Result<(), TestAlertError> {
    let receivers = &settings.alerts.receivers;
    let Some(found) = receivers.iter().find(|settings| settings.name == receiver) else {
        return Err(TestAlertError::UnknownReceiver {
            name: receiver.to_string(),
            known: receivers.iter().map(|settings| settings.name.clone()).collect(),
        });
    };
    let built =
        receivers::build(found).map_err(|error| TestAlertError::Build(format!("{error:#}")))?;
    let notification =
        test_notification(&settings.server.service_id, &settings.instance(), receiver);
    match tokio::time::timeout(found.timeout, built.deliver(&notification)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(DeliveryError::Retry(reason) | DeliveryError::Refused(reason))) => {
            Err(TestAlertError::Delivery(reason))
        }
        Err(_) => Err(TestAlertError::Delivery(format!(
            "no answer within the receiver's timeout of {} s",
            found.timeout.as_secs_f64()
        ))),
    }
}

/// A notification marked as a test, with a fresh id and one firing alert
/// named [`TEST_ALERT_NAME`].
pub fn test_notification(service: &str, instance: &str, receiver: &str) -> Notification {
    let now = Utc::now();
    Notification {
        id: notification_id(),
        service: service.to_string(),
        instance: instance.to_string(),
        route: "test-alert".to_string(),
        receiver: receiver.to_string(),
        state: NotificationState::Firing,
        reminder: false,
        test: true,
        created_at: now,
        alerts: vec![NotificationAlert {
            component_id: TEST_ALERT_NAME.to_string(),
            kind: "test".to_string(),
            critical: false,
            tags: vec!["test".to_string()],
            state: NotificationState::Firing,
            status: HealthStatus::Fail,
            started_at: now,
            ended_at: None,
            output: Some("a test alert from healthd test-alert: nothing is wrong".to_string()),
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_test_notification_is_marked_and_fresh() {
        let first = test_notification("orders-api", "host-1", "mail");
        let second = test_notification("orders-api", "host-1", "mail");
        assert!(first.test);
        assert_ne!(first.id, second.id);
        assert_eq!(first.alerts.len(), 1);
        assert_eq!(first.alerts[0].component_id, TEST_ALERT_NAME);
        assert_eq!(first.state, NotificationState::Firing);
    }

    #[tokio::test]
    async fn an_unknown_receiver_lists_the_known_ones() {
        let config = "[[receivers]]\nname = \"mail\"\nkind = \"email\"\nhost = \"127.0.0.1\"\n\
                      from = \"healthd@example.com\"\nto = [\"ops@example.com\"]\n";
        let settings = Settings::parse(config, "test.toml", &BTreeMap::new()).unwrap();
        let error = send_test_alert(&settings, "pager").await.unwrap_err();
        assert_eq!(error.to_string(), "no receiver is named \"pager\": the config has \"mail\"");
    }
}
