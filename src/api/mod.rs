//! The HTTP face: the route table, the handlers (named after their
//! operationIds), and the layer every request passes through (address
//! checks, malformed input, the access log, request metrics). Handlers
//! only read the engine's latest snapshot: a probe never runs a check.
//!
//! `access` decides who may see what, `docs` serves the contract and
//! Swagger UI (and holds the responses every operation shares), `status`
//! the history, badge and status page, `page` the status page's data,
//! `records` what the store keeps, `metrics` the Prometheus text,
//! `error` the problem+json answers, and `log` the access log and the
//! writer every log line goes through.

pub mod access;
mod alert_list;
mod docs;
pub mod error;
pub mod log;
mod metrics;
mod page;
mod pings;
mod records;
mod status;

use std::any::Any;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Extensions, Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{ConnectionType, Method, StatusCode};
use actix_web::rt::net::TcpStream;
use actix_web::web::Bytes;
use actix_web::web::{self, Data};
use actix_web::{guard, HttpMessage, HttpRequest, HttpResponse, Resource, Scope};
use arc_swap::ArcSwap;
use utoipa::OpenApi;

use crate::alerts::Alerts;
use crate::api::access::{Access, ClientAddress, DetailsDenied, PeerIdentity, Principal};
use crate::api::docs::{CommonProblems, HealthAnswers, TokenProblems};
use crate::api::error::{ApiError, ApiErrorKind};
use crate::api::log::AccessRecord;
use crate::base::units::Prefix;
use crate::engine::monitor::SnapshotReader;
use crate::engine::render::{Excluded, Piece, Probe, Rendered, Snapshot};
use crate::store::Store;

use metrics::endpoint;
pub use metrics::{ClientConnections, ReloadCounters, RequestCounters};

/// The OpenAPI document derived from the handlers and generated models.
#[derive(OpenApi)]
#[openapi(
    paths(
        get_health,
        get_liveness,
        get_readiness,
        get_startup,
        get_check,
        get_group,
        status::get_check_history,
        records::get_check_uptime,
        records::get_uptime,
        records::get_check_incidents,
        records::get_incidents,
        records::get_check_series,
        alert_list::get_alerts,
        pings::post_ping,
        pings::post_ping_start,
        pings::post_ping_fail,
        pings::post_ping_exit_status,
        page::get_health_page,
        status::get_badge,
        status::get_status_page,
        get_metrics,
        docs::get_openapi_yaml,
        docs::get_openapi_json,
        docs::get_swagger_ui,
    ),
    components(schemas(
        healthd_models::HealthReport,
        healthd_models::CheckResult,
        healthd_models::CheckHistory,
        healthd_models::Uptime,
        healthd_models::HistoryEntry,
        healthd_models::CheckUptime,
        healthd_models::UptimeWindow,
        healthd_models::UptimePage,
        healthd_models::IncidentList,
        healthd_models::Incident,
        healthd_models::Series,
        healthd_models::SeriesPoint,
        healthd_models::SeriesSource,
        healthd_models::UptimeWindowName,
        healthd_models::HealthPage,
        healthd_models::HealthPageCheck,
        healthd_models::HealthPageHistory,
        healthd_models::StatusCounts,
        healthd_models::RecentRuns,
        healthd_models::HealthStatus,
        healthd_models::ComponentType,
        healthd_models::Problem,
        healthd_models::PingReceipt,
        healthd_models::PingSignal,
        // The body of the contract's `notification` webhook (no operation answers it).
        healthd_models::Notification,
        healthd_models::NotificationAlert,
        healthd_models::NotificationState,
    ))
)]
pub struct ApiDoc;

/// How long the exit waits for the store's last write.
const STORE_CLOSE_BOUND: Duration = Duration::from_secs(5);

/// What the handlers share: the snapshot, the access rules, the lifecycle.
pub struct HealthState {
    reader: SnapshotReader,
    /// Swapped whole by a reload; a request decides on the one it loaded.
    access: ArcSwap<Access>,
    draining: AtomicBool,
    requests: RequestCounters,
    /// `/metrics`' check series of the latest snapshot scraped.
    metrics_checks: metrics::ChecksCache,
    reloads: ReloadCounters,
    connections: ClientConnections,
    /// Swagger UI's settings for requests that come with no external prefix.
    swagger: Arc<utoipa_swagger_ui::Config<'static>>,
    /// Where the routes are mounted in the app ("" for the root).
    mount: String,
    access_log: bool,
    /// Where runs are kept past a restart, when `[storage]` says.
    store: Option<Store>,
    alerts: Alerts,
}

impl HealthState {
    /// `prefix` is where the routes are mounted ("" for the root), so that
    /// Swagger UI finds the contract.
    pub fn new(
        reader: SnapshotReader,
        access: Access,
        prefix: &Prefix,
        access_log: bool,
        store: Option<Store>,
        alerts: Alerts,
    ) -> Data<HealthState> {
        Data::new(HealthState {
            reader,
            access: ArcSwap::from_pointee(access),
            draining: AtomicBool::new(false),
            requests: RequestCounters::default(),
            reloads: ReloadCounters::default(),
            metrics_checks: metrics::ChecksCache::default(),
            connections: ClientConnections::default(),
            swagger: Arc::new(docs::swagger_config(prefix.as_str())),
            mount: prefix.to_string(),
            access_log,
            store,
            alerts,
        })
    }

    /// The routes, their alerts and receivers.
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The store, when `[storage]` configures one.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Writes what the store holds in memory (the current hour's and day's
    /// roll-ups, the checks' totals), waiting at most `STORE_CLOSE_BOUND`:
    /// a store that is down or frozen must not hold the exit.
    pub async fn close_store(&self) {
        let Some(store) = self.store.clone() else { return };
        let closing = tokio::task::spawn_blocking(move || store.close(STORE_CLOSE_BOUND));
        match closing.await {
            Ok(true) => tracing::info!("the store has everything"),
            _ => tracing::warn!(
                bound_seconds = STORE_CLOSE_BOUND.as_secs(),
                "the store did not finish writing before the exit: the latest minute of roll-ups is rebuilt from the kept runs at the next start"
            ),
        }
    }

    /// Readiness answers 503 from now on; liveness stays 200.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The one drain, for the binary and an embedding app alike: readiness
    /// answers 503 at once, then this waits `delay` so that load balancers
    /// see it before the server stops.
    pub async fn drain(&self, delay: Duration) {
        tracing::info!(
            drain_delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "draining: readiness now answers 503"
        );
        self.start_draining();
        tokio::time::sleep(delay).await;
    }

    /// Whether `/health/ready` answers 200 now.
    pub fn is_ready(&self) -> bool {
        self.reader.current().is_ready(self.is_draining())
    }

    /// New access rules (a reload): the next request is decided on them.
    pub fn set_access(&self, access: Access) {
        self.access.store(Arc::new(access));
    }

    /// Counts client connections, for `/metrics`.
    pub fn connections(&self) -> &ClientConnections {
        &self.connections
    }

    /// Counts config reloads, for `/metrics`.
    pub fn reloads(&self) -> &ReloadCounters {
        &self.reloads
    }
}

/// Every healthd route under `prefix`, behind the access layer. Mount it
/// in any actix-web `App`; with prefix "" it also answers 404 for every
/// path it does not know, so register your own routes before it.
pub fn scope(
    state: Data<HealthState>,
    prefix: &Prefix,
) -> Scope<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    // Each worker builds its own scope: an `Rc` keeps the per-request
    // clone off the atomic reference count both workers would share.
    let layer_state = Rc::new(state.clone());
    web::scope(prefix.as_str())
        .app_data(state)
        .service(operation("/health", endpoint::HEALTH).to(get_health))
        .service(operation("/health/live", endpoint::LIVENESS).to(get_liveness))
        .service(operation("/health/ready", endpoint::READINESS).to(get_readiness))
        .service(operation("/health/startup", endpoint::STARTUP).to(get_startup))
        .service(operation("/health/checks/{name}", endpoint::CHECK).to(get_check))
        .service(operation("/health/groups/{name}", endpoint::GROUP).to(get_group))
        .service(
            operation("/health/checks/{name}/history", endpoint::CHECK_HISTORY)
                .to(status::get_check_history),
        )
        .service(
            operation("/health/checks/{name}/uptime", endpoint::CHECK_UPTIME)
                .to(records::get_check_uptime),
        )
        .service(operation("/health/uptime", endpoint::UPTIME).to(records::get_uptime))
        .service(
            operation("/health/checks/{name}/incidents", endpoint::CHECK_INCIDENTS)
                .to(records::get_check_incidents),
        )
        .service(operation("/health/incidents", endpoint::INCIDENTS).to(records::get_incidents))
        .service(operation("/health/alerts", endpoint::ALERTS).to(alert_list::get_alerts))
        .service(
            operation("/health/checks/{name}/series", endpoint::CHECK_SERIES)
                .to(records::get_check_series),
        )
        // `start` and `fail` before `{exit_status}`, which would match them too.
        .service(
            ping_operation("/health/checks/{name}/ping/start", endpoint::PING)
                .to(pings::post_ping_start),
        )
        .service(
            ping_operation("/health/checks/{name}/ping/fail", endpoint::PING)
                .to(pings::post_ping_fail),
        )
        .service(
            ping_operation("/health/checks/{name}/ping/{exit_status}", endpoint::PING)
                .to(pings::post_ping_exit_status),
        )
        .service(ping_operation("/health/checks/{name}/ping", endpoint::PING).to(pings::post_ping))
        .service(operation("/health/page", endpoint::HEALTH_PAGE).to(page::get_health_page))
        .service(operation("/health/badge.svg", endpoint::BADGE).to(status::get_badge))
        .service(operation("/status", endpoint::STATUS_PAGE).to(status::get_status_page))
        .service(operation("/metrics", endpoint::METRICS).to(get_metrics))
        .service(operation("/openapi.yaml", endpoint::OPENAPI_YAML).to(docs::get_openapi_yaml))
        .service(operation("/openapi.json", endpoint::OPENAPI_JSON).to(docs::get_openapi_json))
        .service(operation("/swagger-ui", endpoint::SWAGGER_UI).to(docs::redirect_to_swagger_ui))
        .service(operation("/swagger-ui/{file:.*}", endpoint::SWAGGER_UI).to(docs::get_swagger_ui))
        .default_service(web::to(not_found))
        .wrap_fn(move |request, service| {
            let started = Instant::now();
            let state = Rc::clone(&layer_state);
            let access = state.access.load();
            let address = access.client_address(peer(request.request()), request.headers());
            let call = match screen(&access, &address, request.request()) {
                Ok(()) => Ok(service.call(request)),
                Err(error) => Err(request.error_response(error)),
            };
            // Not held across the handler: a reload's new rules apply to
            // the handler's own decisions at once.
            drop(access);
            async move {
                let mut response = match call {
                    Ok(call) => call.await?.map_into_left_body(),
                    Err(response) => response.map_into_right_body(),
                };
                if state.is_draining() {
                    // Keep-alive clients reconnect, and reach another
                    // instance once the listener has closed.
                    response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
                }
                state.requests.count(response.request().match_name(), response.status().as_u16());
                if state.access_log {
                    log_request(&address, &response, started);
                }
                Ok(response)
            }
        })
}

/// A resource for GET and HEAD that answers 405 with `Allow` to the rest.
fn operation(path: &str, name: &str) -> OperationBuilder {
    let resource = web::resource(path).name(name).default_service(web::to(method_not_allowed));
    OperationBuilder { resource, takes_post: false }
}

/// A resource for POST, GET and HEAD (a heartbeat's pings) that answers
/// 405 with `Allow` to the rest.
fn ping_operation(path: &str, name: &str) -> OperationBuilder {
    let resource = web::resource(path).name(name).default_service(web::to(ping_method_not_allowed));
    OperationBuilder { resource, takes_post: true }
}

struct OperationBuilder {
    resource: Resource,
    takes_post: bool,
}

impl OperationBuilder {
    fn to<F, Args>(self, handler: F) -> Resource
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        // A plain function guard: actix's method guards record the allowed
        // methods in every request's extensions, an allocation per probe,
        // for an `Allow` header healthd writes itself.
        let route = if self.takes_post {
            web::route().guard(guard::fn_guard(|context| {
                matches!(context.head().method, Method::GET | Method::HEAD | Method::POST)
            }))
        } else {
            web::route().guard(guard::fn_guard(|context| {
                matches!(context.head().method, Method::GET | Method::HEAD)
            }))
        };
        self.resource.route(route.to(handler))
    }
}

/// The TCP peer. A listener without one (a Unix socket in an embedding
/// app) gets `::`, which only an allow-everyone range admits: fail closed.
fn peer(request: &HttpRequest) -> std::net::IpAddr {
    request
        .peer_addr()
        .map_or(std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED), |address| address.ip())
}

/// More header fields than this is 431. actix-web's own parser answers
/// 431 without a body past 96 fields or a 128 KiB head; below those
/// limits, healthd's tighter ones answer in problem+json.
pub const MAX_HEADER_FIELDS: usize = 64;
/// Header names and values of more bytes than this, in all, is 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Refuses a request before it reaches a handler: an address outside
/// `allow`, oversized header fields, a malformed query string, a body.
fn screen(access: &Access, address: &ClientAddress, request: &HttpRequest) -> Result<(), ApiError> {
    if !access.allowed(address) {
        return Err(ApiError::new(ApiErrorKind::AddressNotAllowed, request.path()));
    }
    let headers = request.headers();
    if headers.len() > MAX_HEADER_FIELDS {
        return Err(ApiError::new(ApiErrorKind::HeadersTooLarge, request.path()));
    }
    // One pass for the size and the body's framing: a probe's headers are
    // few, and two lookups by name would cost more than reading them all.
    let (mut header_bytes, mut has_body) = (0, false);
    for (name, value) in headers.iter() {
        header_bytes += name.as_str().len() + value.len();
        has_body |= *name == header::TRANSFER_ENCODING
            || (*name == header::CONTENT_LENGTH && value.as_bytes() != b"0");
    }
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::new(ApiErrorKind::HeadersTooLarge, request.path()));
    }
    if !query_is_well_formed(request.query_string()) {
        return Err(ApiError::new(ApiErrorKind::BadQuery, request.path()));
    }
    // Other methods go on to their 405: the body is not why they fail.
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if reads && has_body {
        return Err(ApiError::new(ApiErrorKind::BodyNotAllowed, request.path()));
    }
    Ok(())
}

/// Query parameters are tolerated where an operation takes none (and
/// parameters an operation does not know are ignored) when they are
/// well-formed: every `%` starts a valid escape and the result is UTF-8.
fn query_is_well_formed(query: &str) -> bool {
    if !query.contains('%') {
        return true;
    }
    let bytes = query.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3).and_then(|hex| std::str::from_utf8(hex).ok());
            match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                Some(byte) => decoded.push(byte),
                None => return false,
            }
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

fn log_request(
    address: &ClientAddress,
    response: &ServiceResponse<impl MessageBody>,
    started: Instant,
) {
    let request = response.request();
    let extensions = request.extensions();
    let caller = extensions.get::<Caller>().map_or("anonymous", |caller| caller.0.as_str());
    log::log_access(&AccessRecord {
        client: address.client,
        peer: address.peer,
        method: request.method().as_str(),
        path: loggable(request.path()),
        status: response.status().as_u16(),
        duration: started.elapsed(),
        principal: caller,
    });
}

/// Paths are logged up to this many bytes: the HTTP parser lets a path
/// grow to 64 KiB, and a log line need not.
const MAX_LOGGED_PATH: usize = 1024;

fn loggable(path: &str) -> &str {
    if path.len() <= MAX_LOGGED_PATH {
        return path;
    }
    let mut end = MAX_LOGGED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// The state `scope` registers. Borrowed rather than extracted as `Data`,
/// whose clone is an atomic add on a count every worker shares.
fn state_of(request: &HttpRequest) -> &HealthState {
    request.app_data::<Data<HealthState>>().expect("scope() registers the state")
}

/// Recomputed by the few handlers that need it, rather than stored in the
/// request's extensions for every probe.
fn client_address(access: &Access, request: &HttpRequest) -> ClientAddress {
    access.client_address(peer(request), request.headers())
}

/// Records the verified client certificate of a TLS connection, once,
/// for every request on it (`HttpServer::on_connect`). A plain connection,
/// or one without a client certificate, records nothing.
pub fn record_peer(connection: &dyn Any, extensions: &mut Extensions) {
    let Some(stream) = connection.downcast_ref::<TlsStream<TcpStream>>() else { return };
    let (_, session) = stream.get_ref();
    let leaf = session.peer_certificates().and_then(|chain| chain.first());
    if let Some(identity) = leaf.and_then(|leaf| PeerIdentity::from_der(leaf)) {
        extensions.insert(identity);
    }
}

/// The name of the token or client certificate a request came with, for
/// the access log: kept as the name, since a reload may renumber them
/// before the log line.
struct Caller(String);

/// The caller's token, recorded for the access log. A wrong one is 401.
fn authenticate(access: &Access, request: &HttpRequest) -> Result<Principal, ApiError> {
    let principal = access
        .authenticate(request.headers(), request.conn_data::<PeerIdentity>())
        .map_err(|_| ApiError::new(ApiErrorKind::Unauthorized, request.path()))?;
    if principal != Principal::Anonymous {
        request.extensions_mut().insert(Caller(access.principal_name(principal).to_string()));
    }
    Ok(principal)
}

/// For the operations that exist only for callers who may see details.
fn require_details(access: &Access, request: &HttpRequest) -> Result<(), ApiError> {
    let principal = authenticate(access, request)?;
    access.sees_details(&client_address(access, request), principal).map_err(|denied| {
        let kind = match denied {
            DetailsDenied::Disabled => ApiErrorKind::DetailsDisabled,
            DetailsDenied::Address => ApiErrorKind::DetailsNotAllowed,
            DetailsDenied::NeedsToken => ApiErrorKind::Unauthorized,
            DetailsDenied::Scope => ApiErrorKind::MissingScope("read"),
        };
        ApiError::new(kind, request.path())
    })
}

/// Bodies larger than this go out in slices of it (views of the rendered
/// bytes, not copies). actix-web copies what a body yields into the
/// connection's write buffer: whole, a 2 MB `/health` (10,000 checks) to
/// 64 callers at once would hold 128 MB of copies.
const BODY_SLICE: usize = 32 * 1024;

/// A large rendered body (one or more parts, in order), yielded
/// `BODY_SLICE` bytes at a time, so that actix-web's write-buffer limit
/// applies to it.
struct Slices(std::collections::VecDeque<Bytes>);

impl MessageBody for Slices {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.0.iter().map(|part| part.len() as u64).sum())
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        while let Some(part) = self.0.front_mut() {
            if part.is_empty() {
                self.0.pop_front();
                continue;
            }
            let slice = part.len().min(BODY_SLICE);
            return Poll::Ready(Some(Ok(part.split_to(slice))));
        }
        Poll::Ready(None)
    }
}

/// A body as it goes out: whole when small, else in slices.
fn sliced(body: Bytes) -> BoxBody {
    if body.len() <= BODY_SLICE {
        BoxBody::new(body)
    } else {
        BoxBody::new(Slices([body].into()))
    }
}

/// An answer no cache may keep (`Cache-Control: no-store`): every probe,
/// a check's page and history, the metrics, the badge, the status page.
fn uncached(status: StatusCode, content_type: &'static str, body: BoxBody) -> HttpResponse {
    // Built directly: the builder's error slot and conversions are work a
    // probe, answered from bytes rendered once, does not need.
    let mut response = HttpResponse::with_body(status, body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn health_response(rendered: &Rendered) -> HttpResponse {
    uncached(rendered.http_status(), "application/health+json", sliced(rendered.body.clone()))
}

/// `?exclude=NAME` (repeatable) and `?verbose`, as kube-apiserver's
/// `/livez` and `/readyz` take them. Parameters of other names are ignored.
#[derive(Debug, Default)]
struct ProbeQuery {
    exclude: Vec<String>,
    verbose: bool,
}

impl ProbeQuery {
    /// A malformed `verbose` is 400; `screen` has refused malformed escapes.
    fn parse(request: &HttpRequest) -> Result<ProbeQuery, ApiError> {
        let mut query = ProbeQuery::default();
        for (key, value) in form_urlencoded::parse(request.query_string().as_bytes()) {
            match &*key {
                "exclude" => query.exclude.push(value.into_owned()),
                "verbose" => {
                    query.verbose = match &*value {
                        "" | "true" => true,
                        "false" => false,
                        _ => return Err(ApiError::new(ApiErrorKind::BadVerbose, request.path())),
                    }
                }
                _ => {}
            }
        }
        Ok(query)
    }

    /// The checks excluded; a name no check has is 400, so that a typo in
    /// a probe does not pass silently.
    fn excluded(&self, snapshot: &Snapshot, request: &HttpRequest) -> Result<Excluded, ApiError> {
        snapshot.excluded(self.exclude.iter().map(String::as_str)).map_err(|name| {
            ApiError::new(ApiErrorKind::UnknownExclude(name.to_string()), request.path())
        })
    }
}

fn verbose_response((code, text): (StatusCode, String)) -> HttpResponse {
    uncached(code, "text/plain; charset=utf-8", sliced(Bytes::from(text)))
}

/// Whether a caller of a probe that answers everyone alike (readiness,
/// liveness) sees the outputs in `?verbose` lines: a token only adds that,
/// so a missing or wrong one reads as anonymous there, never as 401.
fn probe_sees_details(access: &Access, request: &HttpRequest) -> bool {
    authenticate(access, request).is_ok_and(|principal| {
        access.may_see_details(principal)
            && access.sees_details(&client_address(access, request), principal).is_ok()
    })
}

/// `/health/ready` and `/health/live` with a query string: `?exclude=`
/// and `?verbose`, answered from the snapshot's pieces.
fn probe_with_query(
    request: &HttpRequest,
    probe: Probe,
    plain: impl FnOnce(&Snapshot, &Excluded, bool) -> HttpResponse,
) -> Result<HttpResponse, ApiError> {
    let state = state_of(request);
    let query = ProbeQuery::parse(request)?;
    let snapshot = state.reader.current();
    let excluded = query.excluded(&snapshot, request)?;
    let draining = state.is_draining();
    if !query.verbose {
        return Ok(plain(&snapshot, &excluded, draining));
    }
    let details = probe_sees_details(&state.access.load(), request);
    Ok(verbose_response(snapshot.verbose(probe, &excluded, details, draining)))
}

/// What the operations about one check share: they need details, and a
/// name no check has is 404.
fn about_check(
    request: &HttpRequest,
    name: web::Path<String>,
    answer: impl FnOnce(&Piece) -> HttpResponse,
) -> Result<HttpResponse, ApiError> {
    let state = state_of(request);
    require_details(&state.access.load(), request)?;
    let snapshot = state.reader.current();
    match snapshot.check(name.as_str()) {
        Some(piece) => Ok(answer(piece)),
        None => Err(ApiError::new(ApiErrorKind::UnknownCheck(name.into_inner()), request.path())),
    }
}

#[utoipa::path(
    method(get, head),
    path = "/health",
    operation_id = "getHealth",
    responses(HealthAnswers, CommonProblems, TokenProblems,)
)]
pub async fn get_health(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let state = state_of(&request);
    let access = state.access.load();
    let principal = authenticate(&access, &request)?;
    let query =
        if request.query_string().is_empty() { None } else { Some(ProbeQuery::parse(&request)?) };
    let snapshot = state.reader.current();
    let sees_details = sees_details(&access, &request, principal);
    let Some(query) = query.filter(|query| query.verbose || !query.exclude.is_empty()) else {
        if !sees_details {
            return Ok(health_response(&snapshot.health_anonymous));
        }
        let notes = maintenance_notes(&state.alerts().list());
        return Ok(health_response(&snapshot.health.with_notes(&notes)));
    };
    let excluded = query.excluded(&snapshot, &request)?;
    if query.verbose {
        let answer = snapshot.verbose(Probe::Health, &excluded, sees_details, false);
        return Ok(verbose_response(answer));
    }
    Ok(health_response(&snapshot.health_without(&excluded, sees_details)))
}

/// One note per maintenance window in force, for callers who see details.
fn maintenance_notes(alerts: &healthd_models::AlertList) -> Vec<String> {
    alerts
        .maintenance
        .iter()
        .map(|window| {
            const NAMED: usize = 20;
            let ids = &window.component_ids;
            let mut checks = ids[..ids.len().min(NAMED)].join(", ");
            if ids.len() > NAMED {
                checks.push_str(&format!(" and {} more", ids.len() - NAMED));
            }
            format!(
                "maintenance {} until {}: notifications held back for {checks}",
                window.name,
                window.ends_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
        })
        .collect()
}

/// Whether this caller sees the checks in `/health` and `/health/page`
/// (the other tier gets the status and the identity only).
fn sees_details(access: &Access, request: &HttpRequest, principal: Principal) -> bool {
    // Most probes are anonymous: they skip working out the client address.
    access.may_see_details(principal)
        && access.sees_details(&client_address(access, request), principal).is_ok()
}

#[utoipa::path(
    method(get, head), path = "/health/live", operation_id = "getLiveness",
    responses(
        (status = 200, body = healthd_models::HealthReport, content_type = "application/health+json"),
        CommonProblems,
    )
)]
pub async fn get_liveness(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    if request.query_string().is_empty() {
        return Ok(health_response(&state_of(&request).reader.current().liveness));
    }
    // Liveness counts no check: names are checked all the same, so that
    // one probe spec with `?exclude=` fits liveness and readiness alike.
    probe_with_query(&request, Probe::Live, |snapshot, _, _| health_response(&snapshot.liveness))
}

#[utoipa::path(
    method(get, head),
    path = "/health/ready",
    operation_id = "getReadiness",
    responses(HealthAnswers, CommonProblems,)
)]
pub async fn get_readiness(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    if request.query_string().is_empty() {
        let state = state_of(&request);
        let snapshot = state.reader.current();
        return Ok(health_response(snapshot.readiness_answer(state.is_draining())));
    }
    probe_with_query(&request, Probe::Ready, |snapshot, excluded, draining| {
        health_response(snapshot.readiness_without(draining, excluded))
    })
}

#[utoipa::path(
    method(get, head),
    path = "/health/startup",
    operation_id = "getStartup",
    responses(HealthAnswers, CommonProblems,)
)]
pub async fn get_startup(request: HttpRequest) -> HttpResponse {
    health_response(&state_of(&request).reader.current().startup)
}

#[utoipa::path(
    method(get, head), path = "/health/checks/{name}", operation_id = "getCheck",
    params(("name" = String, Path, description = "The check's `name` from the configuration.")),
    responses(
        (status = 404, body = healthd_models::Problem, content_type = "application/problem+json"),
        HealthAnswers,
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_check(
    request: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    about_check(&request, name, |check| health_response(&check.body))
}

#[utoipa::path(
    method(get, head), path = "/health/groups/{name}", operation_id = "getGroup",
    params(("name" = String, Path, description = "The group's `name` from `[[groups]]`.")),
    responses(
        (status = 404, body = healthd_models::Problem, content_type = "application/problem+json"),
        HealthAnswers,
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_group(
    request: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let state = state_of(&request);
    let access = state.access.load();
    let principal = authenticate(&access, &request)?;
    let snapshot = state.reader.current();
    let Some(group) = snapshot.group(&name) else {
        return Err(ApiError::new(ApiErrorKind::UnknownGroup(name.into_inner()), request.path()));
    };
    let sees_details =
        access.sees_details_within(group.details, principal, || client_address(&access, &request));
    Ok(health_response(if sees_details { group.detailed } else { group.anonymous }))
}

#[utoipa::path(
    method(get, head), path = "/metrics", operation_id = "getMetrics",
    responses(
        (status = 200, body = String, content_type = "text/plain; version=0.0.4"),
        CommonProblems,
        TokenProblems,
    )
)]
pub async fn get_metrics(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let state = state_of(&request);
    require_details(&state.access.load(), &request)?;
    let snapshot = arc_swap::Guard::into_inner(state.reader.current());
    let sources = metrics::Sources {
        requests: &state.requests,
        reloads: &state.reloads,
        connections: &state.connections,
        store: state.store.as_ref().map(Store::stats),
        alerts: &state.alerts,
        draining: state.is_draining(),
    };
    let rendered = metrics::render(&snapshot, &state.metrics_checks, sources).await;
    let body = BoxBody::new(Slices([rendered.head, rendered.checks, rendered.tail].into()));
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    Ok(uncached(StatusCode::OK, content_type, body))
}

/// 404 in problem+json. Also the `App`'s default service: a request
/// target that is not a path (`OPTIONS *`, `CONNECT host:port`) never
/// reaches the scope.
pub async fn not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ApiErrorKind::NotFound, request.path()))
}

async fn method_not_allowed(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ApiErrorKind::MethodNotAllowed, request.path()))
}

async fn ping_method_not_allowed(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ApiErrorKind::PingMethodNotAllowed, request.path()))
}

#[cfg(test)]
mod tests {
    use super::query_is_well_formed;

    #[test]
    fn query_strings_must_decode() {
        assert!(query_is_well_formed(""));
        assert!(query_is_well_formed("a=b&c"));
        assert!(query_is_well_formed("name=%C3%A9"));
        assert!(!query_is_well_formed("a=%zz"));
        assert!(!query_is_well_formed("a=%4"));
        assert!(!query_is_well_formed("a=%ff"));
    }
}
