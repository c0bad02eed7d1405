//! The one way to start healthd, for the binary and for an embedding app:
//! a `Builder` takes the settings (file or built-in default) and checks
//! from code, validates them together, and starts the checks; the
//! `Healthd` handle it gives mounts the routes, reads the status, drains
//! and stops.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::web::Data;
use actix_web::Scope;
use anyhow::Context;
use healthd_models::{HealthReport, HealthStatus};

use crate::alerts::{self, Alerts, Identity};
use crate::api::access::Access;
use crate::api::{self, HealthState};
use crate::base::name::duplicate_name;
use crate::base::policy::CheckPolicy;
use crate::base::problem::{ConfigError, ConfigProblem};
use crate::base::units::Prefix;
use crate::checks::{heartbeat_of, Check};
use crate::config::{CheckSettings, Settings};
use crate::engine::monitor::{Monitor, SnapshotReader};
use crate::engine::render::ServiceInfo;
use crate::engine::state::FanOut;
use crate::store::Store;

/// Where problems with checks from code are said to be, in a `ConfigError`.
const FROM_CODE: &str = "checks from code";
/// Where problems with the builder's own settings are said to be.
const FROM_BUILDER: &str = "Builder";

/// Sets up healthd: the settings, checks from code, where the routes go.
/// [`Builder::start`] validates it all and starts the checks.
///
/// Made by [`Healthd::builder`].
#[must_use = "nothing runs until `start`"]
pub struct Builder {
    settings: Settings,
    code: Vec<(String, CheckPolicy, Arc<dyn Check>)>,
    /// As given to `prefix`, parsed by `start`.
    prefix: Option<String>,
    access_log: bool,
}

impl Builder {
    /// `serviceId` in reports, over the config's `server.service_id`.
    pub fn service_id(mut self, service_id: impl Into<String>) -> Self {
        self.settings.server.service_id = service_id.into();
        self
    }

    /// `description` in reports, over the config's `server.description`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.settings.server.description = Some(description.into());
        self
    }

    /// Where [`Healthd::scope`] mounts the routes, such as `"/ops"`
    /// (default: the root). Swagger UI and the contract's links are served
    /// for this prefix. It follows the config's `forwarded_prefix` rule: an
    /// absolute path of letters, digits, `-._~` and `%` escapes (`/ops/`
    /// is `/ops`, `/` the root); anything else is refused by
    /// [`Builder::start`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Whether healthd logs each request to its routes (target
    /// `healthd::access`, through `tracing`); on by default. Turn it off
    /// when the app logs every request itself.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Adds a check from code, named `name` (1 to 64 of `A-Z a-z 0-9 - _ .`,
    /// unique among all checks), run under `policy` over the config's
    /// `[defaults]`. It gets what a config check gets: the deadline,
    /// retries, thresholds, history, metrics and disclosure rules. Problems
    /// are reported by [`Builder::start`].
    ///
    /// `check` is any [`Check`], or one made by [`check_fn`](crate::check_fn)
    /// or [`blocking_check_fn`](crate::blocking_check_fn).
    pub fn check(
        mut self,
        name: impl Into<String>,
        policy: CheckPolicy,
        check: impl Check,
    ) -> Self {
        self.code.push((name.into(), policy, Arc::new(check)));
        self
    }

    /// Validates the checks from code (problems are a [`ConfigError`] whose
    /// keys are the checks' names: an invalid or duplicate name, a timeout
    /// that does not fit inside its interval), builds every check's client
    /// and starts one task per check. Call it inside a tokio runtime (an
    /// actix-web app's `main` is one); the checks run on it.
    pub fn start(self) -> anyhow::Result<Healthd> {
        let drain_delay = self.settings.server.drain_delay;
        let (monitor, state, prefix) = self.start_parts()?;
        Ok(Healthd {
            inner: Arc::new(Inner {
                reader: monitor.reader(),
                state,
                prefix,
                drain_delay,
                monitor: Mutex::new(Some(monitor)),
            }),
        })
    }

    /// `start`, handing out the running monitor and the routes' state, for
    /// the binary's lifecycle (which drains and reloads them itself).
    pub(crate) fn start_parts(self) -> anyhow::Result<(Monitor, Data<HealthState>, Prefix)> {
        let Builder { settings, code, prefix, access_log } = self;
        let prefix = match prefix.as_deref().map(Prefix::parse).transpose() {
            Ok(prefix) => prefix.unwrap_or_default(),
            Err(reason) => {
                let problems = vec![ConfigProblem::new("prefix", reason)];
                return Err(ConfigError { source_name: FROM_BUILDER.into(), problems }.into());
            }
        };
        let mut names: HashSet<&str> =
            settings.checks.iter().map(|check| check.name.as_str()).collect();
        let mut problems = Vec::new();
        let mut from_code = Vec::new();
        for (name, policy, check) in &code {
            if !names.insert(name) {
                problems.push(ConfigProblem::new(name.as_str(), duplicate_name(name)));
                continue;
            }
            match CheckSettings::from_code(name, policy, &settings.defaults, check.clone()) {
                Ok(check) => from_code.push(check),
                Err(found) => problems.extend(found),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { source_name: FROM_CODE.into(), problems }.into());
        }
        let instance = settings.instance();
        let mut checks = settings.checks;
        checks.extend(from_code);
        let service = ServiceInfo::new(
            settings.server.service_id.clone(),
            settings.server.description.clone(),
        );
        let store = match &settings.storage {
            Some(storage) => Some(Store::open(storage).context("storage")?),
            None => None,
        };
        let remembered = match &store {
            Some(store) => store.remembered().context("storage: cannot read what it remembers")?,
            None => HashMap::new(),
        };
        let built: Vec<Arc<dyn Check>> =
            checks.iter().map(CheckSettings::build).collect::<anyhow::Result<_>>()?;
        if let Some(store) = &store {
            keep_pings(store, &checks, &built)?;
        }
        let alerts = Alerts::start(
            Identity { service: settings.server.service_id.clone(), instance },
            alerts::Prepared::new(&settings.alerts)?,
            &checks,
            store.as_ref().map(Store::outbox),
            remembered
                .iter()
                .filter_map(|(name, memory)| Some((name.clone(), memory.status?)))
                .collect(),
        );
        let mut sinks = vec![alerts.sink()];
        sinks.extend(store.as_ref().map(Store::sink));
        let monitor = Monitor::start(
            service,
            checks.iter().zip(built).collect(),
            &settings.groups,
            settings.server.warn_status,
            Some(Arc::new(FanOut(sinks))),
            remembered,
        );
        let state = HealthState::new(
            monitor.reader(),
            Access::new(settings.access),
            &prefix,
            access_log,
            store,
            alerts,
        );
        Ok((monitor, state, prefix))
    }
}

/// Gives each heartbeat what its pings said before the restart, as rings
/// are given back, and has each ping from now on queued for the store.
fn keep_pings(
    store: &Store,
    checks: &[CheckSettings],
    built: &[Arc<dyn Check>],
) -> anyhow::Result<()> {
    let mut saved = store.pings().context("storage: cannot read what the pings said")?;
    for (settings, check) in checks.iter().zip(built) {
        let Some(heartbeat) = heartbeat_of(check.as_ref()) else { continue };
        if let Some(state) = saved.remove(&settings.name) {
            heartbeat.restore(state);
        }
    }
    save_pings(store, checks.iter().zip(built));
    Ok(())
}

/// Each heartbeat among `checks` saves what its pings say in `store`: at
/// start, and for the heartbeats a reload starts.
pub(crate) fn save_pings<'a>(
    store: &Store,
    checks: impl Iterator<Item = (&'a CheckSettings, &'a Arc<dyn Check>)>,
) {
    for (settings, check) in checks {
        let Some(heartbeat) = heartbeat_of(check.as_ref()) else { continue };
        let (store, name) = (store.clone(), Arc::<str>::from(settings.name.as_str()));
        heartbeat.save_with(move |state| store.save_pings(&name, state.clone()));
    }
}

/// Running healthd: its checks, and the routes that answer from them.
/// Cheap to clone (every clone is the same healthd), so that each
/// actix-web worker can mount the routes.
#[derive(Clone)]
pub struct Healthd {
    inner: Arc<Inner>,
}

struct Inner {
    state: Data<HealthState>,
    reader: SnapshotReader,
    prefix: Prefix,
    drain_delay: Duration,
    /// Taken by `stop`.
    monitor: Mutex<Option<Monitor>>,
}

impl Healthd {
    /// A builder over `settings` (from [`Settings::load`], a file or the
    /// built-in default): its `[server]` identity and drain delay, its
    /// `[access]` rules, its `[defaults]` and its `[[checks]]`. Its
    /// `listen` and `workers` are the binary's; an embedding app binds its
    /// own server.
    pub fn builder(settings: Settings) -> Builder {
        Builder { settings, code: Vec::new(), prefix: None, access_log: true }
    }

    /// Every healthd route under the builder's prefix (`/health`,
    /// `/health/ready`, `/metrics`, `/openapi.json`, `/swagger-ui/`, ...),
    /// behind healthd's access rules. Mount it in each worker's `App`:
    /// `App::new().service(healthd.scope())`. With the prefix `""` it also
    /// answers 404 to every path it does not know, so register the app's
    /// own routes before it.
    pub fn scope(
        &self,
    ) -> Scope<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl MessageBody>,
            Error = actix_web::Error,
            InitError = (),
        >,
    > {
        api::scope(self.inner.state.clone(), &self.inner.prefix)
    }

    /// The service's status now, as `/health` reports it.
    pub fn status(&self) -> HealthStatus {
        self.inner.reader.current().health.status
    }

    /// Whether `/health/ready` answers 200 now: every critical check
    /// passes or warns, startup is over, and healthd is not draining.
    pub fn is_ready(&self) -> bool {
        self.inner.state.is_ready()
    }

    /// The whole report, with every check, as `/health` shows it to a
    /// caller allowed to see details.
    pub fn report(&self) -> HealthReport {
        let snapshot = self.inner.reader.current();
        serde_json::from_slice(&snapshot.health.body).expect("healthd's own report parses")
    }

    /// Readiness answers 503 from now on (liveness stays 200), so that load
    /// balancers stop sending traffic before the app stops serving.
    pub fn start_draining(&self) {
        self.inner.state.start_draining();
    }

    /// Whether [`Healthd::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.state.is_draining()
    }

    /// The config's `server.drain_delay`: how long to keep serving after
    /// draining starts.
    pub fn drain_delay(&self) -> Duration {
        self.inner.drain_delay
    }

    /// Starts draining and waits the drain delay; then stop the app's
    /// server (`ServerHandle::stop(true)`) and [`Healthd::stop`] the checks.
    pub async fn drain(&self) {
        self.inner.state.drain(self.inner.drain_delay).await;
    }

    /// Stops every check, abandoning runs in flight, and waits for their
    /// tasks; readings then turn stale and read `fail`. Later calls do
    /// nothing. Dropping every `Healthd` instead leaves the checks running.
    pub async fn stop(&self) {
        let monitor =
            self.inner.monitor.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(monitor) = monitor {
            monitor.stop().await;
            self.inner.state.alerts().stop();
            self.inner.state.close_store().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn settings() -> Settings {
        Settings::load(None, &BTreeMap::new()).unwrap()
    }

    /// The reason the config gives for `prefix` as `forwarded_prefix`.
    fn config_reason(prefix: &str) -> String {
        let text =
            format!("[access]\ntrusted_proxies = [\"10.0.0.1\"]\nforwarded_prefix = {prefix:?}\n");
        let error = Settings::parse(&text, "t.toml", &BTreeMap::new()).unwrap_err();
        assert_eq!(error.problems.len(), 1, "{error}");
        error.problems[0].reason.clone()
    }

    #[tokio::test]
    async fn the_builder_refuses_a_prefix_as_the_config_does() {
        for prefix in ["ops", "/a b", "/a\"b", "/../x"] {
            let error = Healthd::builder(settings()).prefix(prefix).start().err().unwrap();
            let error = error.downcast::<ConfigError>().unwrap();
            assert_eq!(error.source_name, FROM_BUILDER);
            assert_eq!(error.problems, vec![ConfigProblem::new("prefix", config_reason(prefix))]);
        }
    }

    #[tokio::test]
    async fn the_builder_normalises_a_prefix_as_the_config_does() {
        let healthd = Healthd::builder(settings()).prefix("/ops/").start().unwrap();
        assert_eq!(healthd.inner.prefix.as_str(), "/ops");
        let root = Healthd::builder(settings()).prefix("/").start().unwrap();
        assert!(root.inner.prefix.is_root());
        healthd.stop().await;
        root.stop().await;
    }
}
