//! The routes: each check's changes of status become alerts (pending for
//! the route's `for`, then firing, suppressed while a dependency fails or
//! a maintenance window holds them), and each route's alerts that change
//! together become one notification (`group_wait`, `group_interval`), with
//! reminders (`repeat_interval`) while they keep firing. A state machine
//! over a clock its caller passes, so that tests drive it in time.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use healthd_models::{
    ActiveAlert, AlertPhase, HealthStatus, MaintenanceWindow, Notification, NotificationAlert,
    NotificationState,
};
use serde::{Deserialize, Serialize};

use crate::config::alerts::{MaintenanceSettings, RouteSettings};

/// A check's status after thresholds changed.
#[derive(Debug, Clone)]
pub struct Change {
    pub check: String,
    pub status: HealthStatus,
    pub time: DateTime<Utc>,
    pub output: Option<String>,
}

/// What the routes need to know of a check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckInfo {
    pub kind: String,
    pub critical: bool,
    pub tags: Vec<String>,
    pub depends_on: Vec<String>,
}

/// A (route, check)'s alert, as it is kept past a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    /// When the check's status became the one that fires.
    pub started: DateTime<Utc>,
    /// When the route's `for` ran out.
    pub firing_since: Option<DateTime<Utc>>,
    /// When it was last in a notification as firing.
    pub notified: Option<DateTime<Utc>>,
    pub status: HealthStatus,
    pub output: Option<String>,
}

/// One route's notifications in the making.
#[derive(Debug, Default)]
struct Group {
    /// Alerts told as firing that have since ended, to be told so.
    resolved: Vec<Ended>,
    flush_at: Option<DateTime<Utc>>,
    last_flush: Option<DateTime<Utc>>,
}

/// What a change of the routes' state asks the caller to write.
#[derive(Debug, Default)]
pub struct Effects {
    /// Notifications to put in the outbox, each for its route's receiver.
    pub notifications: Vec<Notification>,
    /// (route, check) states to keep (`Some`) or forget (`None`).
    pub states: Vec<(String, String, Option<AlertState>)>,
}

impl Effects {
    pub fn extend(&mut self, other: Effects) {
        self.notifications.extend(other.notifications);
        self.states.extend(other.states);
    }

    pub fn is_empty(&self) -> bool {
        self.notifications.is_empty() && self.states.is_empty()
    }
}

/// An alert told as firing whose check recovered, until its resolution
/// goes out: its state is kept (in memory and in the store) until then, so
/// that a check failing again first resumes it, and a restart still tells it.
#[derive(Debug)]
struct Ended {
    check: String,
    state: AlertState,
    at: DateTime<Utc>,
}

pub struct Router {
    service: String,
    instance: String,
    routes: Vec<RouteSettings>,
    maintenance: Vec<MaintenanceSettings>,
    checks: HashMap<String, CheckInfo>,
    /// Each check's latest status after thresholds.
    statuses: HashMap<String, (HealthStatus, DateTime<Utc>, Option<String>)>,
    /// By route, then check.
    alerts: BTreeMap<(String, String), AlertState>,
    groups: HashMap<String, Group>,
    /// How often each receiver needs firing alerts again (Alertmanager).
    refresh: HashMap<String, Duration>,
}

impl Router {
    pub fn new(
        service: String,
        instance: String,
        routes: Vec<RouteSettings>,
        maintenance: Vec<MaintenanceSettings>,
        checks: HashMap<String, CheckInfo>,
        refresh: HashMap<String, Duration>,
    ) -> Router {
        Router {
            service,
            instance,
            routes,
            maintenance,
            checks,
            statuses: HashMap::new(),
            alerts: BTreeMap::new(),
            groups: HashMap::new(),
            refresh,
        }
    }

    /// Takes what was kept before a restart: the alerts' states (of routes
    /// and checks that still exist) and each check's status then.
    pub fn restore(
        &mut self,
        states: Vec<(String, String, AlertState)>,
        statuses: HashMap<String, (HealthStatus, DateTime<Utc>)>,
    ) -> Effects {
        let mut effects = Effects::default();
        for (check, (status, since)) in statuses {
            self.statuses.insert(check, (status, since, None));
        }
        for (route, check, state) in states {
            let known = self.routes.iter().any(|r| r.name == route && r.checks.contains(&check));
            if known {
                self.statuses.entry(check.clone()).or_insert((state.status, state.started, None));
                self.alerts.insert((route, check), state);
            } else {
                effects.states.push((route, check, None));
            }
        }
        // An alert whose check recovered before the restart, its
        // resolution not yet sent: sent now.
        let recovered: Vec<(RouteSettings, String)> = self
            .alerts
            .keys()
            .filter_map(|(route, check)| {
                let route = self.routes.iter().find(|r| &r.name == route)?;
                let (status, _, _) = self.statuses.get(check)?;
                (!fires(route, *status)).then(|| (route.clone(), check.clone()))
            })
            .collect();
        for (route, check) in recovered {
            let state = self.alerts.remove(&(route.name.clone(), check.clone())).expect("listed");
            let since = self.statuses.get(&check).map_or(state.started, |(_, since, _)| *since);
            self.end(&route, check, state, since, &mut effects);
        }
        // A check that fails with no kept alert (a route new since) starts
        // pending from when it began failing.
        let statuses: Vec<(String, HealthStatus, DateTime<Utc>)> = self
            .statuses
            .iter()
            .map(|(name, (status, since, _))| (name.clone(), *status, *since))
            .collect();
        for (check, status, since) in statuses {
            let change = Change { check, status, time: since, output: None };
            self.open_alerts(&change, &mut effects);
        }
        // Firing alerts told before the restart are not told again until
        // their group's next reminder.
        for ((route, _), state) in &self.alerts {
            if let Some(notified) = state.notified {
                let group = self.groups.entry(route.clone()).or_default();
                group.last_flush =
                    Some(group.last_flush.map_or(notified, |last| last.max(notified)));
            }
        }
        effects
    }

    /// Replaces the routes, windows and checks (a reload), keeping the
    /// states of (route, check) pairs that remain.
    pub fn reconfigure(
        &mut self,
        routes: Vec<RouteSettings>,
        maintenance: Vec<MaintenanceSettings>,
        checks: HashMap<String, CheckInfo>,
        refresh: HashMap<String, Duration>,
    ) -> Effects {
        let mut effects = Effects::default();
        self.routes = routes;
        self.maintenance = maintenance;
        self.checks = checks;
        self.refresh = refresh;
        let routes = &self.routes;
        self.alerts.retain(|(route, check), _| {
            let keep = routes.iter().any(|r| &r.name == route && r.checks.contains(check));
            if !keep {
                effects.states.push((route.clone(), check.clone(), None));
            }
            keep
        });
        self.groups.retain(|route, group| {
            let keep = routes.iter().any(|r| &r.name == route);
            if !keep {
                for ended in group.resolved.drain(..) {
                    effects.states.push((route.clone(), ended.check, None));
                }
            }
            keep
        });
        self.statuses.retain(|check, _| self.checks.contains_key(check));
        let statuses: Vec<Change> = self
            .statuses
            .iter()
            .map(|(check, (status, since, output))| Change {
                check: check.clone(),
                status: *status,
                time: *since,
                output: output.clone(),
            })
            .collect();
        for change in statuses {
            self.open_alerts(&change, &mut effects);
        }
        effects
    }

    /// A check's status changed. Nothing goes out until the next `tick`,
    /// so that a storm of changes costs one pass over the alerts.
    pub fn change(&mut self, change: Change) -> Effects {
        let mut effects = Effects::default();
        if !self.checks.contains_key(&change.check) {
            return effects;
        }
        self.statuses
            .insert(change.check.clone(), (change.status, change.time, change.output.clone()));
        for route in self.routes.clone() {
            if !route.checks.contains(&change.check) {
                continue;
            }
            let key = (route.name.clone(), change.check.clone());
            if fires(&route, change.status) {
                match self.alerts.get_mut(&key) {
                    // fail -> warn on a route that fires on both: the same alert.
                    Some(state) => {
                        state.status = change.status;
                        state.output = change.output.clone();
                        effects.states.push((key.0, key.1, Some(state.clone())));
                    }
                    None => self.open(&route, &change, &mut effects),
                }
            } else if let Some(state) = self.alerts.remove(&key) {
                self.end(&route, key.1, state, change.time, &mut effects);
            }
        }
        effects
    }

    fn open_alerts(&mut self, change: &Change, effects: &mut Effects) {
        for route in self.routes.clone() {
            let key = (route.name.clone(), change.check.clone());
            if route.checks.contains(&change.check)
                && fires(&route, change.status)
                && !self.alerts.contains_key(&key)
            {
                self.open(&route, change, effects);
            }
        }
    }

    /// The alert of `check` on `route` ended at `at`: its resolution waits
    /// for the group's next notification, if it was told as firing.
    fn end(
        &mut self,
        route: &RouteSettings,
        check: String,
        state: AlertState,
        at: DateTime<Utc>,
        effects: &mut Effects,
    ) {
        if state.notified.is_some() && route.send_resolved {
            let group = self.groups.entry(route.name.clone()).or_default();
            group.resolved.push(Ended { check, state, at });
        } else {
            effects.states.push((route.name.clone(), check, None));
        }
    }

    fn open(&mut self, route: &RouteSettings, change: &Change, effects: &mut Effects) {
        // Failing again before its resolution went out: the receiver was
        // never told it ended, so the alert it knows goes on (a resolve
        // beside a new trigger would close PagerDuty's incident, and
        // Alertmanager's alert, while the check fails).
        let group = self.groups.entry(route.name.clone()).or_default();
        if let Some(index) = group.resolved.iter().position(|ended| ended.check == change.check) {
            let mut state = group.resolved.remove(index).state;
            state.status = change.status;
            state.output = change.output.clone();
            effects.states.push((route.name.clone(), change.check.clone(), Some(state.clone())));
            self.alerts.insert((route.name.clone(), change.check.clone()), state);
            return;
        }
        let state = AlertState {
            started: change.time,
            firing_since: None,
            notified: None,
            status: change.status,
            output: change.output.clone(),
        };
        effects.states.push((route.name.clone(), change.check.clone(), Some(state.clone())));
        self.alerts.insert((route.name.clone(), change.check.clone()), state);
    }

    /// Time passes: pending alerts whose `for` ran out fire, and groups due
    /// are flushed into notifications.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Effects {
        let mut effects = Effects::default();
        for route in &self.routes {
            let wait = delta(route.for_);
            for ((_, check), state) in self.alerts.range_mut(route_range(&route.name)) {
                if state.firing_since.is_none() && state.started + wait <= now {
                    state.firing_since = Some(now);
                    effects.states.push((route.name.clone(), check.clone(), Some(state.clone())));
                }
            }
        }
        for route in self.routes.clone() {
            if let Some(notification) = self.flush(&route, now, &mut effects) {
                effects.notifications.push(notification);
            }
        }
        effects
    }

    /// The route's notification, when its group is due.
    fn flush(
        &mut self,
        route: &RouteSettings,
        now: DateTime<Utc>,
        effects: &mut Effects,
    ) -> Option<Notification> {
        let firing: Vec<String> = self
            .alerts
            .range(route_range(&route.name))
            .filter(|(_, state)| state.firing_since.is_some())
            .filter(|((_, check), _)| self.held_by(check, now).is_none())
            .map(|((_, check), _)| check.clone())
            .collect();
        let untold = firing
            .iter()
            .any(|check| self.alerts[&(route.name.clone(), check.clone())].notified.is_none());
        let told = firing
            .iter()
            .any(|check| self.alerts[&(route.name.clone(), check.clone())].notified.is_some());
        let group = self.groups.entry(route.name.clone()).or_default();
        let mut reminder = false;
        if group.flush_at.is_none() {
            if untold || !group.resolved.is_empty() {
                // The first change of an idle group waits for others to
                // join it; later ones wait out the interval since the last.
                let idle = !told && group.resolved.is_empty();
                group.flush_at = Some(match group.last_flush {
                    Some(last) if !idle => (last + delta(route.group_interval)).max(now),
                    _ => now + delta(route.group_wait),
                });
            } else if let (Some(last), Some(every)) =
                (group.last_flush, repeat_every(route, &self.refresh))
            {
                if !firing.is_empty() && last + delta(every) <= now {
                    group.flush_at = Some(now);
                    reminder = true;
                }
            }
        }
        if group.flush_at.is_none_or(|at| at > now) {
            return None;
        }
        group.flush_at = None;
        group.last_flush = Some(now);
        let ended = std::mem::take(&mut group.resolved);
        if firing.is_empty() && ended.is_empty() {
            return None;
        }
        let mut resolved = Vec::with_capacity(ended.len());
        for Ended { check, state, at } in ended {
            // The status that fired: `endedAt` says it ended.
            resolved.push(self.alert(
                &check,
                &state,
                NotificationState::Resolved,
                Some(at),
                state.status,
            ));
            effects.states.push((route.name.clone(), check, None));
        }
        let mut alerts = Vec::with_capacity(firing.len() + resolved.len());
        for check in &firing {
            let key = (route.name.clone(), check.clone());
            let state = self.alerts.get_mut(&key).expect("listed above");
            state.notified = Some(now);
            effects.states.push((key.0.clone(), key.1.clone(), Some(state.clone())));
            let state = state.clone();
            alerts.push(self.alert(check, &state, NotificationState::Firing, None, state.status));
        }
        alerts.extend(resolved);
        Some(Notification {
            id: notification_id(),
            service: self.service.clone(),
            instance: self.instance.clone(),
            route: route.name.clone(),
            receiver: route.receiver.clone(),
            state: if firing.is_empty() {
                NotificationState::Resolved
            } else {
                NotificationState::Firing
            },
            reminder,
            test: false,
            created_at: now,
            alerts,
        })
    }

    fn alert(
        &self,
        check: &str,
        state: &AlertState,
        alert_state: NotificationState,
        ended: Option<DateTime<Utc>>,
        status: HealthStatus,
    ) -> NotificationAlert {
        let info = self.checks.get(check);
        NotificationAlert {
            component_id: check.to_string(),
            kind: info.map_or_else(String::new, |info| info.kind.clone()),
            critical: info.is_some_and(|info| info.critical),
            tags: info.map_or_else(Vec::new, |info| info.tags.clone()),
            state: alert_state,
            status,
            started_at: state.started,
            ended_at: ended,
            output: state.output.clone(),
        }
    }

    /// Why the check's alerts are held back now: a failing dependency or a
    /// maintenance window.
    fn held_by(&self, check: &str, now: DateTime<Utc>) -> Option<Hold> {
        if let Some(cause) = self.failing_dependency(check) {
            return Some(Hold::Dependency(cause));
        }
        self.maintenance
            .iter()
            .find(|window| {
                window.checks.iter().any(|c| c == check) && window.in_force(now).is_some()
            })
            .map(|window| Hold::Maintenance(window.name.clone()))
    }

    fn failing_dependency(&self, check: &str) -> Option<String> {
        let info = self.checks.get(check)?;
        info.depends_on
            .iter()
            .find(|dependency| {
                self.statuses
                    .get(*dependency)
                    .is_some_and(|(status, _, _)| *status == HealthStatus::Fail)
            })
            .cloned()
    }

    /// The soonest time `tick` may have something to do.
    pub fn next_tick(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut next = now + TimeDelta::seconds(1);
        for group in self.groups.values() {
            if let Some(at) = group.flush_at {
                next = next.min(at.max(now));
            }
        }
        next
    }

    /// The alerts pending, firing or suppressed, and the windows in force.
    pub fn active(&self, now: DateTime<Utc>) -> (Vec<ActiveAlert>, Vec<MaintenanceWindow>) {
        let alerts = self
            .alerts
            .iter()
            .map(|((route, check), state)| {
                let hold = self.held_by(check, now);
                let phase = match (state.firing_since, &hold) {
                    (None, _) => AlertPhase::Pending,
                    (Some(_), Some(_)) => AlertPhase::Suppressed,
                    (Some(_), None) => AlertPhase::Firing,
                };
                let receiver = self
                    .routes
                    .iter()
                    .find(|r| &r.name == route)
                    .map_or_else(String::new, |r| r.receiver.clone());
                ActiveAlert {
                    component_id: check.clone(),
                    route: route.clone(),
                    receiver,
                    phase,
                    status: state.status,
                    started_at: state.started,
                    firing_since: state.firing_since,
                    notified_at: state.notified,
                    caused_by: match &hold {
                        Some(Hold::Dependency(cause)) => Some(cause.clone()),
                        _ => None,
                    },
                    maintenance: match hold {
                        Some(Hold::Maintenance(window)) => Some(window),
                        _ => None,
                    },
                }
            })
            .collect();
        let windows = self
            .maintenance
            .iter()
            .filter_map(|window| {
                let (starts_at, ends_at) = window.in_force(now)?;
                Some(MaintenanceWindow {
                    name: window.name.clone(),
                    starts_at,
                    ends_at,
                    component_ids: window.checks.clone(),
                })
            })
            .collect();
        (alerts, windows)
    }
}

enum Hold {
    Dependency(String),
    Maintenance(String),
}

fn fires(route: &RouteSettings, status: HealthStatus) -> bool {
    match status {
        HealthStatus::Fail => true,
        HealthStatus::Warn => route.on_warn,
        HealthStatus::Pass => false,
    }
}

/// The shortest of the route's reminders and its receiver's refresh.
fn repeat_every(route: &RouteSettings, refresh: &HashMap<String, Duration>) -> Option<Duration> {
    let reminder = Some(route.repeat_interval).filter(|every| !every.is_zero());
    match (reminder, refresh.get(&route.receiver).copied()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn route_range(route: &str) -> std::ops::RangeInclusive<(String, String)> {
    // Check names are never empty and sort after "" and before the
    // highest code point, so this covers every check of the route.
    (route.to_string(), String::new())..=(route.to_string(), char::MAX.to_string())
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// A fresh idempotency key.
pub fn notification_id() -> String {
    format!("ntf_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::alerts::MaintenanceWhen;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn route(checks: &[&str]) -> RouteSettings {
        RouteSettings {
            name: "ops".into(),
            checks: checks.iter().map(|c| c.to_string()).collect(),
            on_warn: false,
            for_: Duration::ZERO,
            send_resolved: true,
            repeat_interval: Duration::ZERO,
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            receiver: "hook".into(),
        }
    }

    fn info(depends_on: &[&str]) -> CheckInfo {
        CheckInfo {
            kind: "tcp".into(),
            critical: true,
            tags: vec![],
            depends_on: depends_on.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn router(route: RouteSettings, maintenance: Vec<MaintenanceSettings>) -> Router {
        let mut checks: HashMap<String, CheckInfo> =
            route.checks.iter().map(|c| (c.clone(), info(&[]))).collect();
        checks.insert("app".into(), info(&["db"]));
        Router::new("svc".into(), "here".into(), vec![route], maintenance, checks, HashMap::new())
    }

    fn change(router: &mut Router, check: &str, status: HealthStatus, time: i64) -> Effects {
        router.change(Change {
            check: check.into(),
            status,
            time: at(time),
            output: Some("refused".into()),
        })
    }

    /// The notifications of every tick from `from` to `to`, one a second.
    fn run(router: &mut Router, from: i64, to: i64) -> Vec<Notification> {
        (from..=to).flat_map(|second| router.tick(at(second)).notifications).collect()
    }

    fn names(notification: &Notification) -> Vec<(&str, NotificationState)> {
        notification.alerts.iter().map(|a| (a.component_id.as_str(), a.state)).collect()
    }

    #[test]
    fn two_hundred_checks_failing_together_are_one_notification_after_group_wait() {
        let checks: Vec<String> = (0..200).map(|i| format!("c{i:03}")).collect();
        let names_of: Vec<&str> = checks.iter().map(String::as_str).collect();
        let mut router = router(route(&names_of), vec![]);
        for (i, check) in checks.iter().enumerate() {
            change(&mut router, check, HealthStatus::Fail, i64::try_from(i).unwrap() / 20);
        }
        assert!(run(&mut router, 0, 29).is_empty(), "nothing before group_wait");
        let sent = run(&mut router, 30, 600);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].alerts.len(), 200);
        assert_eq!(sent[0].state, NotificationState::Firing);
        assert_eq!(sent[0].receiver, "hook");
        assert!(sent[0].id.starts_with("ntf_") && sent[0].id.len() == 36);
    }

    #[test]
    fn an_alert_waits_out_for_and_one_that_recovers_before_is_never_told() {
        let mut settings = route(&["a", "b"]);
        settings.for_ = Duration::from_secs(120);
        settings.group_wait = Duration::ZERO;
        let mut router = router(settings, vec![]);
        change(&mut router, "a", HealthStatus::Fail, 0);
        change(&mut router, "b", HealthStatus::Fail, 0);
        assert!(run(&mut router, 0, 60).is_empty());
        let (active, _) = router.active(at(60));
        assert!(active.iter().all(|a| a.phase == AlertPhase::Pending), "{active:?}");
        change(&mut router, "b", HealthStatus::Pass, 61);
        let sent = run(&mut router, 61, 200);
        assert_eq!(sent.len(), 1);
        assert_eq!(names(&sent[0]), [("a", NotificationState::Firing)]);
    }

    #[test]
    fn the_resolution_goes_out_after_group_interval_and_later_failures_join_it() {
        let mut router = router(route(&["a", "b", "c"]), vec![]);
        change(&mut router, "a", HealthStatus::Fail, 0);
        assert_eq!(run(&mut router, 0, 30).len(), 1);
        change(&mut router, "a", HealthStatus::Pass, 40);
        change(&mut router, "b", HealthStatus::Fail, 50);
        assert!(run(&mut router, 40, 329).is_empty(), "waits for group_interval after the last");
        let sent = run(&mut router, 330, 330);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            names(&sent[0]),
            [("b", NotificationState::Firing), ("a", NotificationState::Resolved)]
        );
        assert!(sent[0].alerts[1].ended_at == Some(at(40)));
        change(&mut router, "b", HealthStatus::Pass, 400);
        let sent = run(&mut router, 400, 700);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].state, NotificationState::Resolved);
    }

    #[test]
    fn a_failing_dependency_holds_its_dependents_back() {
        let mut router = router(route(&["db", "app"]), vec![]);
        change(&mut router, "db", HealthStatus::Fail, 0);
        change(&mut router, "app", HealthStatus::Fail, 1);
        let sent = run(&mut router, 0, 100);
        assert_eq!(sent.len(), 1);
        assert_eq!(names(&sent[0]), [("db", NotificationState::Firing)]);
        let (active, _) = router.active(at(100));
        let app = active.iter().find(|a| a.component_id == "app").unwrap();
        assert_eq!((app.phase, app.caused_by.as_deref()), (AlertPhase::Suppressed, Some("db")));
        // The database comes back and the app still fails: its own fault now.
        change(&mut router, "db", HealthStatus::Pass, 200);
        let sent = run(&mut router, 200, 600);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            names(&sent[0]),
            [("app", NotificationState::Firing), ("db", NotificationState::Resolved)]
        );
    }

    #[test]
    fn maintenance_holds_notifications_and_a_recovery_inside_it_is_never_told() {
        let window = MaintenanceSettings {
            name: "upgrade".into(),
            checks: vec!["a".into(), "b".into()],
            when: MaintenanceWhen::Fixed { start: at(0), end: at(600) },
        };
        let mut router = router(route(&["a", "b"]), vec![window]);
        change(&mut router, "a", HealthStatus::Fail, 10);
        change(&mut router, "b", HealthStatus::Fail, 10);
        change(&mut router, "a", HealthStatus::Pass, 300);
        assert!(run(&mut router, 10, 599).is_empty());
        let (active, windows) = router.active(at(500));
        assert_eq!(active[0].maintenance.as_deref(), Some("upgrade"));
        assert_eq!(windows[0].name, "upgrade");
        // b still fails when the window ends: told then, and only b.
        let sent = run(&mut router, 600, 700);
        assert_eq!(sent.len(), 1);
        assert_eq!(names(&sent[0]), [("b", NotificationState::Firing)]);
    }

    #[test]
    fn a_restart_keeps_firing_alerts_firing_without_telling_them_again() {
        let mut settings = route(&["a"]);
        settings.repeat_interval = Duration::from_secs(3_600);
        let mut router = router(settings.clone(), vec![]);
        let mut states = HashMap::new();
        change(&mut router, "a", HealthStatus::Fail, 0);
        for second in 0..=100 {
            for (route, check, state) in router.tick(at(second)).states {
                states.insert((route, check), state);
            }
        }
        let kept: Vec<(String, String, AlertState)> = states
            .into_iter()
            .filter_map(|((route, check), state)| Some((route, check, state?)))
            .collect();
        assert_eq!(kept.len(), 1);
        let mut again = self::router(settings, vec![]);
        let statuses = HashMap::from([("a".to_string(), (HealthStatus::Fail, at(0)))]);
        again.restore(kept, statuses);
        assert!(run(&mut again, 200, 3_629).is_empty(), "told before the restart");
        let reminder = run(&mut again, 3_630, 3_631);
        assert_eq!(reminder.len(), 1);
        assert!(reminder[0].reminder);
        // Recovered after the restart: the resolution is sent.
        change(&mut again, "a", HealthStatus::Pass, 4_000);
        let sent = run(&mut again, 4_000, 4_400);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].state, NotificationState::Resolved);
    }

    /// The (route, check) states the effects leave, applied in order.
    fn apply(kept: &mut HashMap<(String, String), AlertState>, effects: &Effects) {
        for (route, check, state) in &effects.states {
            match state {
                Some(state) => kept.insert((route.clone(), check.clone()), state.clone()),
                None => kept.remove(&(route.clone(), check.clone())),
            };
        }
    }

    #[test]
    fn failing_again_before_the_resolution_went_out_resumes_the_alert_the_receiver_knows() {
        let mut router = router(route(&["a"]), vec![]);
        let mut kept = HashMap::new();
        apply(&mut kept, &change(&mut router, "a", HealthStatus::Fail, 0));
        let mut sent = Vec::new();
        for second in 0..=30 {
            let effects = router.tick(at(second));
            apply(&mut kept, &effects);
            sent.extend(effects.notifications);
        }
        assert_eq!(sent.len(), 1);
        // Recovers, and fails again within group_interval: nothing is told,
        // neither a resolution nor a second firing, and the alert keeps its
        // start and when it was told.
        apply(&mut kept, &change(&mut router, "a", HealthStatus::Pass, 40));
        let key = ("ops".to_string(), "a".to_string());
        assert!(kept.contains_key(&key), "kept until its resolution goes out");
        apply(&mut kept, &change(&mut router, "a", HealthStatus::Fail, 60));
        for second in 40..=1_000 {
            let effects = router.tick(at(second));
            apply(&mut kept, &effects);
            assert!(effects.notifications.is_empty(), "{:?}", effects.notifications);
        }
        assert_eq!((kept[&key].started, kept[&key].notified), (at(0), Some(at(30))));
        let (active, _) = router.active(at(1_000));
        assert_eq!((active.len(), active[0].phase), (1, AlertPhase::Firing));
        // Its resolution, once it stays recovered past group_interval.
        apply(&mut kept, &change(&mut router, "a", HealthStatus::Pass, 1_000));
        let sent = run(&mut router, 1_000, 1_400);
        assert_eq!(names(&sent[0]), [("a", NotificationState::Resolved)]);
        assert_eq!(sent[0].alerts[0].started_at, at(0));
    }

    #[test]
    fn a_resolution_a_restart_interrupted_is_sent_after_it() {
        let settings = route(&["a"]);
        let mut router = router(settings.clone(), vec![]);
        let mut kept = HashMap::new();
        apply(&mut kept, &change(&mut router, "a", HealthStatus::Fail, 0));
        for second in 0..=30 {
            apply(&mut kept, &router.tick(at(second)));
        }
        // Recovers at 40, and healthd stops before group_interval has passed.
        apply(&mut kept, &change(&mut router, "a", HealthStatus::Pass, 40));
        let kept: Vec<(String, String, AlertState)> =
            kept.into_iter().map(|((route, check), state)| (route, check, state)).collect();
        assert_eq!(kept.len(), 1);
        let mut again = self::router(settings, vec![]);
        let statuses = HashMap::from([("a".to_string(), (HealthStatus::Pass, at(40)))]);
        let restored = again.restore(kept, statuses);
        assert!(restored.states.is_empty(), "{:?}", restored.states);
        assert!(again.active(at(100)).0.is_empty());
        let sent = run(&mut again, 100, 400);
        assert_eq!(sent.len(), 1);
        assert_eq!(names(&sent[0]), [("a", NotificationState::Resolved)]);
        assert_eq!(sent[0].alerts[0].ended_at, Some(at(40)));
    }

    #[test]
    fn warn_fires_only_where_the_route_asks() {
        let mut router = router(route(&["a"]), vec![]);
        change(&mut router, "a", HealthStatus::Warn, 0);
        assert!(run(&mut router, 0, 100).is_empty());
        let mut settings = route(&["a"]);
        settings.on_warn = true;
        let mut router = self::router(settings, vec![]);
        change(&mut router, "a", HealthStatus::Warn, 0);
        let sent = run(&mut router, 0, 100);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].alerts[0].status, HealthStatus::Warn);
    }
}
