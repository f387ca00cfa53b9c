//! `tally serve`: the whole of Tally in one process on the embedded default.
//!
//! The command ([`serve`]) reads flags and the environment into an [`App`], binds its
//! address and hands both, with the process's stop signal ([`crate::signal::shutdown`]), to
//! [`run`]. `run` is library code in the mini-redis style: it takes an already bound
//! listener and any shutdown future, so tests run the whole app in process on
//! `127.0.0.1:0` and stop it without signals, through exactly the code the binary runs.
//!
//! One axum server carries the ingest and management routers; the aggregator drains the
//! queue in a background task; a small scheduler bills each ended month once its grace
//! period has passed (closes it and stores the report of every org that existed in it, as
//! `tally bill` does), oldest first, catching up months whose month-end it missed (see
//! [`close_ended_months`]). When
//! the shutdown future completes the server stops taking requests, finishes the ones in
//! flight (each answered `202` only after its events were durably queued), and the
//! aggregator drains what is queued before `run` returns. Anything still queued after the
//! drain limit stays in `queue.db` and is applied on the next start: nothing accepted is
//! lost either way.
//!
//! On SQLite a task prunes ledger rows written more than 45 days ago every hour
//! ([`crate::prune`]); counters stay.
//!
//! With an alert sender configured (`TALLY_ALERT_WEBHOOK_URL` and
//! `TALLY_ALERT_WEBHOOK_SECRET` for the binary), a task sends plan-limit alerts every
//! `--alert-interval` ([`crate::alerts::run_periodically`]).
//!
//! The catalogue in force is re-read from the store every `--catalogue-refresh` and at each
//! month turn, and swapped without a restart ([`crate::catalogue::refresh_periodically`]):
//! ingest, the API and the alert task read the new version from their next request or pass.
//!
//! `GET /metrics` serves the process's `metrics` (ingest, aggregator, queue) in Prometheus
//! text format. API keys' last-used times, which ingest keeps in memory, are written to the
//! store every few seconds ([`tally_ingest::keys::flush_key_uses`]) and once more on shutdown.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::Args;
use tally_aggregator::AggregatorConfig;
use tally_api::jwt::JwtConfig;
use tally_billing::schedule::{earliest_org_month, months_to_bill};
use tally_billing::{Catalogue, ClosePorts, CloseRequest, NoProgress, close_month};
use tally_core::Month;
use tally_core::ports::{Clock, SystemClock};
use tally_http::LiveCatalogue;
use tally_notify::WebhookSender;
use tally_oidc::{OidcSettings, OidcVerifier};
use tally_stripe::StripeProvider;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::backend::{self, Backends};
use crate::catalogue::Running;
use crate::settings::{Common, jwt_config, parse_duration};

/// `tally serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port, printed in the log).
    #[arg(long, env = "TALLY_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Do not close ended months automatically.
    #[arg(long)]
    pub no_billing_scheduler: bool,
    /// How long after a month ends it stays open for late events (e.g. 1h, 30m, 90s).
    #[arg(long, env = "TALLY_GRACE_PERIOD", default_value = "1h", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// Most events the aggregator applies in one batch (it also stops waiting 200 ms after
    /// the first). Bigger batches share the ledger's index pages between more events per
    /// commit: 5,000 raised workload W from ~38k to ~52k events/s end to end in
    /// bench/RESULTS.md, at the cost of a longer tail for ingest latency.
    #[arg(long, env = "TALLY_BATCH_EVENTS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_events: u32,
    /// Most events the aggregator applies in one batch while the queue is deep (a receive
    /// came back with --batch-events events): a backlog is drained in fewer, fuller store
    /// transactions. Never below --batch-events. See "Aggregator throughput" in
    /// bench/RESULTS.md for the figures behind the default.
    #[arg(long, env = "TALLY_DEEP_BATCH_EVENTS", default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub deep_batch_events: u32,
    /// Longest the aggregator keeps draining the queue at shutdown (e.g. 30s).
    #[arg(long, env = "TALLY_DRAIN_LIMIT", default_value = "30s", value_parser = parse_duration)]
    pub drain_limit: Duration,
    /// How often plan-limit alerts are checked and sent, when TALLY_ALERT_WEBHOOK_URL and
    /// TALLY_ALERT_WEBHOOK_SECRET are set (e.g. 60s, 5m; at least 1s).
    #[arg(long, env = "TALLY_ALERT_INTERVAL", default_value = "60s", value_parser = parse_alert_interval)]
    pub alert_interval: Duration,
    /// How often, in seconds, the stored catalogue versions are re-read so that a version
    /// published with `tally catalogue apply` is served without a restart (also at each
    /// month turn, when a version effective from the new month takes over); 1 to 3600.
    #[arg(long, env = "TALLY_CATALOGUE_REFRESH_SECONDS", default_value_t = crate::catalogue::DEFAULT_REFRESH_SECONDS, value_parser = clap::value_parser!(u64).range(1..=crate::catalogue::MAX_REFRESH_SECONDS))]
    pub catalogue_refresh: u64,
    /// An OpenID Connect issuer whose ID tokens the management API accepts besides its own
    /// (e.g. a Cognito user pool: https://cognito-idp.REGION.amazonaws.com/POOL_ID); users
    /// are matched by verified email. Needs --oidc-audience.
    #[arg(long, env = "TALLY_OIDC_ISSUER", requires = "oidc_audience")]
    pub oidc_issuer: Option<String>,
    /// The `aud` the issuer's tokens must carry (Cognito: the app client id).
    #[arg(long, env = "TALLY_OIDC_AUDIENCE", requires = "oidc_issuer")]
    pub oidc_audience: Option<String>,
    /// The issuer's JWKS URL, when not found by discovery at
    /// ISSUER/.well-known/openid-configuration.
    #[arg(long, env = "TALLY_OIDC_JWKS_URL", requires = "oidc_issuer")]
    pub oidc_jwks_url: Option<String>,
    /// The OAuth client the dashboard's "Sign in with …" button uses (the authorization-code
    /// flow with PKCE; Cognito: the user-pool client id, usually the audience). Unset: the
    /// dashboard takes a pasted token only.
    #[arg(long, env = "TALLY_OIDC_CLIENT_ID", requires = "oidc_issuer")]
    pub oidc_client_id: Option<String>,
    /// The client's secret, for a confidential client (sent to the token endpoint by HTTP
    /// Basic); a public client needs none, PKCE protects its code.
    #[arg(
        long,
        env = "TALLY_OIDC_CLIENT_SECRET",
        requires = "oidc_client_id",
        hide_env_values = true
    )]
    pub oidc_client_secret: Option<String>,
    /// The callback URL registered for the client (https://HOST/dashboard/callback); unset:
    /// derived from each request's Host (http:// only on 127.0.0.1 and localhost).
    #[arg(long, env = "TALLY_OIDC_REDIRECT_URL", requires = "oidc_client_id")]
    pub oidc_redirect_url: Option<String>,
}

/// The OIDC verifier `args` configure, if an issuer is set.
pub fn oidc_from_args(args: &ServeArgs) -> anyhow::Result<Option<OidcVerifier>> {
    let (Some(issuer), Some(audience)) = (&args.oidc_issuer, &args.oidc_audience) else {
        return Ok(None);
    };
    let verifier = OidcVerifier::new(OidcSettings {
        issuer: issuer.clone(),
        audience: audience.clone(),
        jwks_url: args.oidc_jwks_url.clone(),
    })
    .context("--oidc-issuer, --oidc-audience or --oidc-jwks-url")?;
    let verifier = match &args.oidc_client_id {
        Some(client_id) => verifier
            .with_client(tally_oidc::flow::ClientSettings {
                client_id: client_id.clone(),
                client_secret: args.oidc_client_secret.clone(),
                redirect_url: args.oidc_redirect_url.clone(),
            })
            .context("--oidc-client-id, --oidc-client-secret or --oidc-redirect-url")?,
        None => verifier,
    };
    info!(issuer = %issuer, "accepting the OIDC issuer's tokens");
    Ok(Some(verifier))
}

fn parse_alert_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(format!("--alert-interval must be from 1s to 1d, got {s:?}"));
    }
    Ok(d)
}

/// The ingest and management routers merged, plus `GET /healthz`; `jwt` verifies users'
/// tokens (none: JWTs are refused), and `oidc` those of an OpenID Connect issuer; both take
/// their meters and plan limits from `catalogue` (whatever it holds at each request), and
/// the upcoming invoice of a month no stored version covers is priced with `file` (the
/// `--catalogue` file or the built-in one). Also hands back ingest's key cache, whose
/// last-used times [`tally_ingest::keys::flush_key_uses`] writes.
pub fn router(
    backends: &Backends,
    clock: Arc<dyn Clock>,
    auth: (Option<JwtConfig>, Option<OidcVerifier>),
    catalogue: &LiveCatalogue,
    file: &Catalogue,
    edge: EdgeSettings,
) -> (Router, Arc<tally_ingest::KeyCache>) {
    let (jwt, oidc) = auth;
    let ingest = tally_ingest::Ingest::new(
        tally_ingest::IngestState::new(
            backends.stores.tenants.clone(),
            backends.stores.usage.clone(),
            backends.queue.clone(),
            catalogue.clone(),
            clock.clone(),
        )
        .with_series(backends.stores.series.clone()),
        tally_ingest::IngestConfig {
            trusted_proxies: edge.trusted_proxies,
            ..tally_ingest::IngestConfig::default()
        },
    );
    let keys = ingest.key_cache();
    let ingest = ingest.router();
    // The dashboard's page and sign-in ride on the API's router (tally_dashboard::with_api).
    let api = tally_dashboard::with_api(tally_api::ApiState {
        tenants: backends.stores.tenants.clone(),
        usage: backends.stores.usage.clone(),
        catalogue: catalogue.clone(),
        clock,
        jwt: jwt.map(Arc::new),
        oidc: oidc.map(Arc::new),
        users: Arc::new(tally_api::http::RateLimiter::new(tally_api::USER_BUCKETS)),
        user_rate: edge.user_rate,
        trusted_proxies: edge.trusted_proxies,
        // The upcoming invoice prices as month close does: the stored version of the month
        // (through `pricing`), else the file or built-in catalogue; the invoice list reads
        // month close's reports and the Stripe sync ledger.
        prices: Some(Arc::new(file.core().clone())),
        billing: Some(tally_api::BillingPorts {
            reports: backends.stores.reports.clone(),
            sync: backends.stores.sync.clone(),
        }),
        pricing: Some(tally_api::PricingPorts {
            versions: backends.stores.catalogues.clone(),
            overrides: backends.stores.overrides.clone(),
        }),
        sessions: Arc::new(tally_api::sessions::SessionCache::new(
            tally_api::sessions::SESSION_CACHE_CAPACITY,
        )),
        series: Some(backends.stores.series.clone()),
    });
    let router = ingest.merge(api).route(
        "/healthz",
        get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
    );
    (router, keys)
}

/// How the app runs: the `tally serve` flags other than the address. [`Settings::default`]
/// is what the flags default to.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether the billing scheduler runs (`--no-billing-scheduler` turns it off).
    pub billing_scheduler: bool,
    /// How long after a month ends it stays open for late events (at most
    /// [`tally_billing::close::MAX_GRACE`]).
    pub grace_period: Duration,
    /// Most events the aggregator applies in one batch.
    pub batch_events: usize,
    /// Most events the aggregator applies in one batch while the queue is deep.
    pub deep_batch_events: usize,
    /// Longest the aggregator keeps draining the queue at shutdown.
    pub drain_limit: Duration,
    /// How often plan-limit alerts are checked, when [`App::alert_sender`] is set.
    pub alert_interval: Duration,
    /// How often the stored catalogue versions are re-read (and at each month turn).
    pub catalogue_refresh: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            billing_scheduler: true,
            grace_period: Duration::from_secs(3600),
            batch_events: 1_000,
            deep_batch_events: 5_000,
            drain_limit: Duration::from_secs(30),
            alert_interval: Duration::from_secs(60),
            catalogue_refresh: Duration::from_secs(crate::catalogue::DEFAULT_REFRESH_SECONDS),
        }
    }
}

impl From<&ServeArgs> for Settings {
    fn from(args: &ServeArgs) -> Settings {
        Settings {
            billing_scheduler: !args.no_billing_scheduler,
            grace_period: args.grace_period,
            batch_events: args.batch_events as usize,
            deep_batch_events: args.deep_batch_events as usize,
            drain_limit: args.drain_limit,
            alert_interval: args.alert_interval,
            catalogue_refresh: Duration::from_secs(args.catalogue_refresh),
        }
    }
}

/// How the HTTP edge sees its callers: read once from the environment
/// (`TALLY_TRUSTED_PROXIES`, `TALLY_USER_RATE`) when the app is opened.
#[derive(Debug, Clone, Copy)]
pub struct EdgeSettings {
    /// Proxies whose `X-Forwarded-For` entries are believed.
    pub trusted_proxies: usize,
    /// Each user's bucket on the management API.
    pub user_rate: tally_core::plan::RateLimit,
}

/// Everything [`run`] serves, opened and configured. The binary builds it with
/// [`App::from_env`]; tests build it with [`App::open`] and set the fields the environment
/// would have set (a pinned clock, Stripe, alerts), since tests in one process cannot each
/// have their own environment.
pub struct App {
    /// The store and the queue, opened once and shared by every task.
    pub backends: Backends,
    /// The flags' settings.
    pub settings: Settings,
    /// What every task asks for the time (`TALLY_NOW` shifts it; see [`crate::clock`]).
    pub clock: Arc<dyn Clock>,
    /// How users' JWTs are verified: the same configuration `tally token create` signs with.
    pub jwt: JwtConfig,
    /// The OpenID Connect issuer whose tokens are accepted too; `None`: only `jwt`'s.
    pub oidc: Option<OidcVerifier>,
    /// The Stripe adapter the billing scheduler syncs invoices through; `None`: no sync.
    pub stripe: Option<StripeProvider>,
    /// The signing secret of Stripe's webhooks at `POST /v1/stripe/webhook`; `None`: the
    /// route answers that it is not configured.
    pub stripe_webhook_secret: Option<String>,
    /// Where plan-limit alerts are sent; `None`: no alert task.
    pub alert_sender: Option<WebhookSender>,
    /// The catalogue in force: ingest validates and limits by it, the API reads its meters
    /// and plans, alerts measure by it. Read at start and replaced while the app runs when
    /// another stored version comes into force ([`Settings::catalogue_refresh`]).
    pub catalogue: Running,
    /// The `--catalogue` file or the built-in one: what the billing scheduler prices a month
    /// with when no published version covers it (each month is priced with the version
    /// effective for it, `tally_billing::versions`).
    pub file_catalogue: Arc<Catalogue>,
    /// Trusted proxies and the per-user rate.
    pub edge: EdgeSettings,
}

impl App {
    /// The backends `common` names, with the system clock, the JWT configuration of
    /// [`jwt_config`], and no Stripe and no alerts.
    pub async fn open(common: &Common, settings: Settings) -> anyhow::Result<App> {
        let backends = backend::open(common).await?;
        let jwt = jwt_config(common)?;
        let edge = EdgeSettings {
            trusted_proxies: crate::settings::trusted_proxies()?,
            user_rate: crate::settings::user_rate()?,
        };
        // The store's version in force this month, else the file or built-in catalogue;
        // `run` keeps it current (`crate::catalogue::refresh_periodically`).
        let in_force = crate::catalogue::in_force(common, &backends.stores).await?;
        if let Some(version) = in_force.version {
            info!(version, "running with the published catalogue version");
        }
        let catalogue = Running::new(in_force);
        let file_catalogue = Arc::new(common.load_catalogue()?);
        Ok(App {
            backends,
            settings,
            clock: Arc::new(SystemClock),
            jwt,
            oidc: None,
            stripe: None,
            stripe_webhook_secret: None,
            alert_sender: None,
            catalogue,
            file_catalogue,
            edge,
        })
    }

    /// The app as `tally serve` configures it: [`App::open`], then the clock
    /// (`TALLY_NOW`), Stripe (`TALLY_STRIPE_*`) and alerts (`TALLY_ALERT_WEBHOOK_*`) from the
    /// environment.
    pub async fn from_env(common: &Common, settings: Settings) -> anyhow::Result<App> {
        let mut app = App::open(common, settings).await?;
        app.clock = crate::clock::from_env()?;
        app.stripe = crate::stripe::provider_from_env()?;
        app.stripe_webhook_secret = crate::stripe::webhook_secret_from_env()?;
        app.alert_sender = crate::alerts::sender_from_env(app.clock.clone())?;
        Ok(app)
    }
}

/// `tally serve`: binds `--addr` and runs the app until SIGINT or SIGTERM.
pub async fn serve(common: &Common, args: ServeArgs) -> anyhow::Result<()> {
    let mut app = App::from_env(common, Settings::from(&args)).await?;
    app.oidc = oidc_from_args(&args)?;
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    info!(data = %common.data.display(), "serving the data directory");
    run(app, listener, crate::signal::shutdown()).await
}

/// Runs the whole app on `listener` until `shutdown` completes, then drains: the HTTP
/// server (ingest, management API, Stripe webhook, `/metrics`, `/healthz`), the aggregator,
/// the billing scheduler, the alert task and the key-use flush. It returns once the server
/// has answered the requests in flight and every task has stopped, the aggregator after
/// draining the queue for at most [`Settings::drain_limit`].
pub async fn run(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let App {
        backends,
        settings,
        clock,
        jwt,
        oidc,
        stripe,
        stripe_webhook_secret,
        alert_sender,
        catalogue,
        file_catalogue,
        edge,
    } = app;
    let grace = chrono::Duration::from_std(settings.grace_period)
        .ok()
        .filter(|g| *g <= tally_billing::close::MAX_GRACE)
        .with_context(|| {
            format!(
                "--grace-period must be at most {} days",
                tally_billing::close::MAX_GRACE.num_days()
            )
        })?;
    let stripe = stripe.map(Arc::new);
    let webhook = tally_billing::webhook::router(tally_billing::webhook::WebhookState {
        ledger: backends.stores.sync.clone(),
        secret: stripe_webhook_secret.map(Arc::from),
        clock: clock.clone(),
    });
    let local = listener
        .local_addr()
        .context("cannot read the listener's address")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let prometheus = prometheus()?;
    tokio::spawn(prometheus_upkeep(prometheus.clone(), stop_rx.clone()));

    let aggregator = crate::aggregate::spawn_aggregator(
        &backends,
        AggregatorConfig {
            max_events: settings.batch_events.max(1),
            deep_events: settings.deep_batch_events,
            ..AggregatorConfig::default()
        },
        &stop_rx,
        settings.drain_limit,
    );
    // Once now, by the app's clock (`App::open` read by the process's), so the previous
    // month's meters are at hand for late events from the first request.
    let first = crate::catalogue::refresh(
        backends.stores.catalogues.as_ref(),
        &file_catalogue,
        &catalogue,
        clock.as_ref(),
    )
    .await;
    if let Err(e) = first {
        warn!(error = %e, "cannot re-read the catalogue versions; keeping the one read at start");
    }
    let refresher = tokio::spawn(crate::catalogue::refresh_periodically(
        backends.stores.catalogues.clone(),
        file_catalogue.clone(),
        catalogue.clone(),
        clock.clone(),
        settings.catalogue_refresh,
        stop_rx.clone(),
    ));
    // Its own task: a slow or failing alert endpoint never holds up ingest or aggregation.
    let alert_task = alert_sender.map(|sender| {
        tokio::spawn(crate::alerts::run_periodically(
            backends.clone(),
            catalogue.whole.clone(),
            sender,
            clock.clone(),
            settings.alert_interval,
            stop_rx.clone(),
        ))
    });
    // The SQLite ledger keeps a record 45 days after writing it (DynamoDB: TTL).
    let pruner = crate::prune::spawn_periodic(&backends, clock.clone(), &stop_rx);
    let scheduler = settings.billing_scheduler.then(|| {
        tokio::spawn(close_ended_months(
            backends.clone(),
            file_catalogue.clone(),
            stripe,
            clock.clone(),
            grace,
            stop_rx.clone(),
        ))
    });

    info!(addr = %local, "tally listening on http://{local}");
    let (routes, keys) = router(
        &backends,
        clock,
        (Some(jwt), oidc),
        &catalogue.routes,
        &file_catalogue,
        edge,
    );
    let mut stop_keys = stop_rx.clone();
    let key_uses = tokio::spawn(tally_ingest::keys::flush_key_uses(
        keys,
        backends.stores.tenants.clone(),
        tally_ingest::keys::KEY_USE_FLUSH_EVERY,
        async move {
            let _ = stop_keys.wait_for(|stop| *stop).await;
        },
    ));
    let served = axum::serve(
        listener,
        routes
            .merge(webhook)
            .route(
                "/metrics",
                get(move || std::future::ready(prometheus.render())),
            )
            // Every route, the 404 of an unknown path included: a body left unread by an
            // early answer is drained within bounds, so the client reads the answer instead
            // of a reset (the routers' own layers step aside under this one).
            .layer(axum::middleware::from_fn(
                tally_api::http::drain_unread_body,
            ))
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    info!("no longer accepting requests; draining the queue");
    let others = [
        scheduler,
        alert_task,
        pruner,
        Some(refresher),
        Some(key_uses),
    ];
    crate::aggregate::stop_aggregator(
        &stop_tx,
        aggregator,
        "queued events stay on disk for the next start",
        others.into_iter().flatten(),
    )
    .await;
    served.context("server failed")?;
    match backends.queue.depth().await {
        Ok(0) => info!("stopped; queue empty"),
        Ok(n) => info!(
            messages = n,
            "stopped; messages left on the queue are applied at the next start"
        ),
        Err(e) => warn!(error = %e, "stopped; could not read queue depth"),
    }
    Ok(())
}

/// The process's `metrics` recorder, rendered in Prometheus text format at `GET /metrics`.
/// A process has one recorder, so it is installed by the first [`run`] and shared by any
/// later one (tests run several apps in one process; their metrics add up).
fn prometheus() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    static RECORDER: OnceLock<Result<metrics_exporter_prometheus::PrometheusHandle, String>> =
        OnceLock::new();
    RECORDER
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("cannot install the Prometheus metrics recorder: {e}"))
}

/// Keeps the recorder's histograms trimmed (the exporter's upkeep) until `stop`.
async fn prometheus_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
            _ = stop.changed() => return,
        }
    }
}

/// Bills every ended month still open, oldest first, once `grace` has passed since it
/// ended: the same [`close_month`] as `tally bill` (close the period so ingest refuses it,
/// then build and store the report of every org that existed in it), in the order
/// [`tally_billing::schedule::months_to_bill`] gives, so months whose month-end this process
/// missed (it was down) are caught up on its next check, at most
/// [`tally_billing::schedule::MAX_CATCH_UP_MONTHS`] back (an open month beyond that is
/// logged at error level on every check and needs `tally bill --period`).
///
/// It checks at start and then once a minute. Each month is finished (closed, reports
/// stored, and, when Stripe is configured, synced with the same
/// [`tally_billing::sync_period`] as `tally bill`) before the next is started; the first
/// month that fails (some org could not be billed, or Stripe left orgs pending) stops the
/// check, and the next check starts again from it, so a month is never closed while the
/// one before it failed. A month finished in this process is not run again in it; a
/// restart runs the newest due month once more, which finds its reports stored and changes
/// nothing. Orgs Stripe refused wait for someone to fix the cause (and a restart or
/// `tally bill`), as before.
async fn close_ended_months(
    backends: Backends,
    catalogue: Arc<Catalogue>,
    stripe: Option<Arc<tally_stripe::StripeProvider>>,
    clock: Arc<dyn Clock>,
    grace: chrono::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut done: BTreeSet<Month> = BTreeSet::new();
    // Orgs are created at their creation time, so the earliest creation month never moves
    // later: read once (it costs a read of every org), again only while there is no org.
    let mut earliest: Option<Month> = None;
    loop {
        if earliest.is_none() {
            match earliest_org_month(backends.stores.tenants.as_ref()).await {
                Ok(found) => earliest = found,
                Err(e) => warn!(error = %e, "cannot read the orgs to plan billing; will retry"),
            }
        }
        match months_to_bill(backends.stores.usage.as_ref(), clock.now(), grace, earliest).await {
            Ok(plan) => {
                if let Some(month) = plan.left_open_beyond_cap {
                    error!(
                        period = %month,
                        cap_months = tally_billing::schedule::MAX_CATCH_UP_MONTHS,
                        "period {month} is still open and older than the scheduler looks; bill it (and any older open month) with `tally bill --period {month}`"
                    );
                }
                for period in plan.months {
                    if done.contains(&period) {
                        continue;
                    }
                    let finished = bill_one_month(
                        &backends,
                        &catalogue,
                        stripe.as_deref(),
                        &clock,
                        grace,
                        period,
                    )
                    .await;
                    if !finished {
                        break;
                    }
                    done.insert(period);
                }
            }
            Err(e) => warn!(error = %e, "cannot read which periods are closed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Closes and bills `period`, then syncs its reports to Stripe when configured. Whether the
/// month is finished: false when month close failed or Stripe left orgs pending (retried
/// next check).
async fn bill_one_month(
    backends: &Backends,
    catalogue: &Catalogue,
    stripe: Option<&tally_stripe::StripeProvider>,
    clock: &Arc<dyn Clock>,
    grace: chrono::Duration,
    period: Month,
) -> bool {
    let ports = ClosePorts {
        tenants: backends.stores.tenants.as_ref(),
        usage: backends.stores.usage.as_ref(),
        reports: backends.stores.reports.as_ref(),
        versions: backends.stores.catalogues.as_ref(),
        overrides: backends.stores.overrides.as_ref(),
        clock: clock.as_ref(),
    };
    let request = CloseRequest {
        grace,
        ..CloseRequest::new(period)
    };
    // Month close prices with the version effective for the month (through
    // `ports.versions`), else `catalogue` (the file or built-in one).
    let out = match close_month(ports, catalogue, &request, &NoProgress).await {
        Ok(out) => out,
        Err(e) => {
            warn!(period = %period, error = %e, "billing run failed; will retry, and no later period is closed before this one");
            return false;
        }
    };
    info!(
        period = %period,
        orgs = out.reports.len(),
        stored_now = out.stored_now,
        not_in_period = out.not_in_period,
        "closed and billed period"
    );
    let Some(provider) = stripe else {
        return true;
    };
    let ports = tally_billing::PeriodSyncPorts {
        provider,
        ledger: backends.stores.sync.as_ref(),
        sleeper: &tally_notify::TokioSleeper,
        tenants: backends.stores.tenants.as_ref(),
    };
    let run = tally_billing::sync_period(
        ports,
        &out.reports,
        tally_billing::PeriodSyncOptions::default(),
        &NoProgress,
    )
    .await;
    let rerun = format!("tally bill --period {period}");
    if let Some(message) = crate::stripe::incomplete(&run, &rerun) {
        warn!(period = %period, "Stripe sync incomplete: {message}");
    }
    // Pending orgs are retried next check; refused ones wait for someone to fix the cause
    // (and a restart or `tally bill`).
    if run.pending().next().is_some() {
        return false;
    }
    info!(period = %period, orgs = run.orgs.len(), "synced invoices to Stripe");
    true
}
