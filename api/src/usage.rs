//! `GET /v1/usage`: a counter series for one meter of the caller's org, or of one of its
//! projects.
//!
//! Query parameters: `meter` (required, a meter of the catalogue), `granularity` (`month`,
//! `day` or `hour`; default `day`), `from` and `to` (RFC 3339 or `YYYY-MM-DD` meaning
//! midnight UTC; half-open), `project_id` (optional, must be a project of the org, else
//! `404`) and `org_id` (optional with an API key, but then it must be the key's org, else
//! `404`), and `mode` (`live` or `test`: test-mode usage, sent with `tk_test_…` keys, is
//! kept apart and never billed; a user reads live usage unless asking for `mode=test`, an API
//! key reads the usage of its own mode and is refused the other with `403`). Without
//! `from`/`to` the range is the current UTC month so far; with only `to`, `from` is the start
//! of the month holding the instant just before `to`.
//!
//! `from` is moved back to the start of its bucket, so the first bucket is whole; a range
//! may span at most [`MAX_BUCKETS`] buckets. Values are decimal strings exactly as stored;
//! buckets without usage are omitted.
//!
//! A meter with dimensions (see [`tally_core::dimension`]) may be narrowed and split:
//! `filter[<dim>]=<value>` (at most one per dimension, values by the dimension charset)
//! keeps the series with that value, and `group_by=<dim>` answers one series per value in
//! value order under `groups`, with `series` the total of what was kept. The series are
//! those the org's ingest registered in the months read (the registry is their index); at
//! most [`MAX_SERIES_READ`] are read per request. The catalogue gives dimensions to `sum`
//! and `count` meters only; the `latest` rule below (split only by all its dimensions) is a
//! guard for a meter built in code. `per_project=true` adds each visible project's series
//! under `projects` (not beside a dimension split: see [`check_per_project`]).
//!
//! A `time_weighted_sum` meter answers value × hours per bucket from its readings
//! (`crate::usage_time_weighted`), integrated up to now, not its counters.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use tally_core::event::ErrorCode;
use tally_core::ids::{MeterName, OrgId, ProjectId};

use rust_decimal::Decimal;
use tally_core::dimension::{self, MAX_DIMENSIONS};
use tally_core::meter::{Aggregation, Meter, MeterCatalogue};
use tally_core::period::{Granularity, Month};
use tally_core::ports::{CounterQuery, CounterValue, MeterMonth, SeriesRegistry, UsageStore};
use tally_core::tenant::KeyMode;

use crate::ApiState;
use crate::auth::Caller;
use crate::http::{ApiError, query_params};

/// Most buckets one request may span (about 416 days of hours, 27 years of days).
pub const MAX_BUCKETS: i64 = 10_000;

/// Most series of a dimensioned meter one grouped or filtered request reads (each is one
/// counter read per month touched); narrow it with `filter[..]`.
pub const MAX_SERIES_READ: usize = 200;

/// Most calendar months one request may touch, whatever its granularity: a store keeps
/// counters by org and month, so each month touched is at least one read (5 years).
pub const MAX_MONTHS: i64 = 60;

/// The query string, as sent. Every value is checked by the handler so that each problem
/// is answered with the parameter it concerns.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageParams {
    /// The meter (required).
    pub meter: Option<String>,
    /// `month`, `day` or `hour`.
    pub granularity: Option<String>,
    /// Inclusive start.
    pub from: Option<String>,
    /// Exclusive end.
    pub to: Option<String>,
    /// One project instead of the whole org.
    pub project_id: Option<String>,
    /// The org; optional with an API key (it implies its org).
    pub org_id: Option<String>,
    /// `live` or `test`; by default a user's `live`, an API key's own mode.
    pub mode: Option<String>,
    /// A dimension of the meter to split the answer by.
    pub group_by: Option<String>,
    /// `true`: beside the org's series, one series per project the caller may see (the
    /// dashboard's stacked chart in one request instead of one per project).
    pub per_project: Option<String>,
    /// Every other parameter; the `filter[<dim>]` ones narrow a dimensioned meter, the rest
    /// are ignored as before.
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, String>,
}

/// The `200` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageResponse {
    /// The org the counters belong to.
    pub org_id: String,
    /// The project, when the series is for one project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// `live` or `test`: which usage was read.
    pub mode: String,
    /// The meter.
    pub meter: String,
    /// Bucket width.
    pub granularity: String,
    /// Start of the range actually read (the start of `from`'s bucket).
    pub from: String,
    /// Exclusive end of the range.
    pub to: String,
    /// Buckets with usage, in time order (with filters: of the series kept).
    pub series: Vec<SeriesPoint>,
    /// With `group_by`: one entry per value of the dimension, in value order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<UsageGroup>>,
    /// With `per_project=true`: one entry per project the caller may see, in id order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<ProjectUsage>>,
}

/// One project's series in a `per_project=true` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectUsage {
    /// The project.
    pub project_id: String,
    /// Its buckets with usage, in time order (with filters: of the series kept).
    pub series: Vec<SeriesPoint>,
    /// Never set today: `per_project` is refused beside `group_by` and `filter`; kept so a
    /// later release may allow both without a new shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<UsageGroup>>,
}

/// The most projects a `per_project=true` answer splits into; defined beside
/// [`UsageReader::readable_projects`](crate::auth::UsageReader::readable_projects), which
/// enforces it, so that `auth` need not import this module.
pub use crate::auth::MAX_PER_PROJECT;

/// One value of the `group_by` dimension and its buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageGroup {
    /// The dimension's value.
    pub value: String,
    /// Buckets with usage, in time order.
    pub series: Vec<SeriesPoint>,
}

/// One bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// The bucket start, RFC 3339 in UTC (`2026-11-01T00:00:00Z`).
    pub start: String,
    /// The counter value as a decimal string, exactly as stored.
    pub value: String,
}

/// A usage query whose parameters were checked against the catalogue and the bounds: what
/// [`read`] reads. The route and `tally usage` both build it with [`UsageRequest::parse`],
/// so both refuse alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRequest {
    /// The meter, one of the catalogue's.
    pub meter: MeterName,
    /// Bucket width.
    pub granularity: Granularity,
    /// Start of the range, moved back to the start of its bucket.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
    /// One project instead of the whole org; the caller checks it is the org's (see
    /// [`project_not_found`]).
    pub project: Option<ProjectId>,
    /// How a dimensioned meter is narrowed and split; `None` for the meter's total.
    pub split: Option<Split>,
    /// For a `time_weighted_sum` meter, the instant its readings are integrated up to: the
    /// `now` the request was parsed at, so a reading is never integrated into the future
    /// (a bucket of the current hour, day or month ends at now). `None` for other meters.
    pub integrate_until: Option<DateTime<Utc>>,
}

/// `group_by` and `filter[..]` of a dimensioned meter, checked against its dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// How the meter aggregates (series fold into a group by it).
    pub aggregation: Aggregation,
    /// The dimension to group by.
    pub group_by: Option<String>,
    /// (dimension, value) pairs a kept series must have.
    pub filters: Vec<(String, String)>,
}

/// The `mode` parameter: `None` when absent, else `live` or `test` (`400 invalid_mode`).
pub fn parse_mode(mode: Option<&str>) -> Result<Option<KeyMode>, ApiError> {
    mode.map(|m| {
        KeyMode::parse(m).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_mode",
                "mode",
                format!("mode must be live or test, got {:?}", clip(m)),
            )
        })
    })
    .transpose()
}

/// The `404` of a `project_id` that is not a project of the org (or one the reader may not
/// see: the two are answered alike).
pub fn project_not_found(id: &ProjectId) -> ApiError {
    ApiError::not_found(
        "project_id",
        format!("project {id} not found in this organization"),
    )
}

impl UsageRequest {
    /// Checks `meter`, `granularity`, `from`, `to` (with their defaults relative to `now`,
    /// and the [`MAX_BUCKETS`] and [`MAX_MONTHS`] bounds) and the shape of `project_id`;
    /// `org_id` and `mode` are the caller's to check. Each problem is a `400` naming its
    /// parameter.
    pub fn parse(
        params: &UsageParams,
        catalogue: &MeterCatalogue,
        now: DateTime<Utc>,
    ) -> Result<Self, ApiError> {
        let meter = match params.meter.as_deref() {
            None | Some("") => {
                return Err(ApiError::bad_request(
                    ErrorCode::MissingField.as_str(),
                    "meter",
                    format!(
                        "meter is required; this org's meters are {}",
                        catalogue.names().join(", ")
                    ),
                ));
            }
            Some(m) => catalogue
                .get(m)
                .ok_or_else(|| unknown_meter(catalogue, m))?,
        };
        let split = parse_split(params, meter)?;
        let integrate_until = (meter.aggregation == Aggregation::TimeWeightedSum).then_some(now);
        let meter = meter.name.clone();
        let granularity = match params.granularity.as_deref() {
            None => Granularity::Day,
            Some(g) => Granularity::parse(g).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_granularity",
                    "granularity",
                    format!("granularity must be month, day or hour, got {:?}", clip(g)),
                )
            })?,
        };
        let to = match params.to.as_deref() {
            Some(s) => parse_instant("to", s)?,
            None => now,
        };
        let from = match params.from.as_deref() {
            Some(s) => parse_instant("from", s)?,
            None if params.to.is_none() => Month::of(now).start(),
            None => Month::of(
                to.checked_sub_signed(TimeDelta::nanoseconds(1))
                    .unwrap_or(to),
            )
            .start(),
        };
        let from = granularity.truncate(from);
        if from > to {
            return Err(ApiError::bad_request(
                "invalid_range",
                "to",
                format!(
                    "to ({}) must not be before from ({})",
                    rfc3339(to),
                    rfc3339(from)
                ),
            ));
        }
        let buckets = bucket_count(granularity, from, to);
        if buckets > MAX_BUCKETS {
            return Err(ApiError::bad_request(
                "range_too_large",
                "from",
                format!(
                    "from..to spans {buckets} {granularity} buckets; at most {MAX_BUCKETS} per request (narrow the range or use a coarser granularity)"
                ),
            ));
        }
        let months = bucket_count(Granularity::Month, Granularity::Month.truncate(from), to);
        if months > MAX_MONTHS {
            return Err(ApiError::bad_request(
                "range_too_large",
                "from",
                format!(
                    "from..to touches {months} months; at most {MAX_MONTHS} per request (narrow the range)"
                ),
            ));
        }
        let project = params
            .project_id
            .as_deref()
            .map(|p| {
                ProjectId::parse(p)
                    .map_err(|e| ApiError::bad_request("invalid_id", "project_id", e.to_string()))
            })
            .transpose()?;
        Ok(UsageRequest {
            meter,
            granularity,
            from,
            to,
            project,
            split,
            integrate_until,
        })
    }
}

/// Reads the series `req` asks for from `org`'s `mode` usage (test usage is kept under the
/// org's test twin, see `OrgId::test_twin`); `registry` lists a dimensioned meter's series
/// when the request splits it (without one, such a request is `503`).
pub async fn read(
    usage: &dyn UsageStore,
    registry: Option<&dyn SeriesRegistry>,
    org: &OrgId,
    mode: KeyMode,
    req: UsageRequest,
) -> Result<UsageResponse, ApiError> {
    let empty = bucket_count(req.granularity, req.from, req.to) == 0;
    let mut groups = None;
    let series = match (&req.split, empty) {
        (_, true) => Vec::new(),
        (None, false) if req.integrate_until.is_some() => {
            crate::usage_time_weighted::read(usage, &mode.usage_org(org), &req).await?
        }
        (None, false) => {
            usage
                .counter_series(&CounterQuery {
                    org: mode.usage_org(org),
                    project: req.project.clone(),
                    meter: req.meter.clone(),
                    granularity: req.granularity,
                    from: req.from,
                    to: req.to,
                })
                .await?
        }
        (Some(split), false) => {
            let registry = registry.ok_or_else(|| {
                ApiError::Unavailable("this server keeps no series registry".into())
            })?;
            let (total, by_value) =
                read_split(usage, registry, &mode.usage_org(org), &req, split).await?;
            if split.group_by.is_some() {
                groups = Some(
                    by_value
                        .into_iter()
                        .map(|(value, points)| UsageGroup {
                            value,
                            series: points_of(points),
                        })
                        .collect(),
                );
            }
            total
        }
    };
    Ok(UsageResponse {
        org_id: org.to_string(),
        project_id: req.project.map(|p| p.to_string()),
        mode: mode.as_str().to_owned(),
        meter: req.meter.as_str().to_owned(),
        granularity: req.granularity.to_string(),
        from: rfc3339(req.from),
        to: rfc3339(req.to),
        series: points_of(series),
        groups,
        projects: None,
    })
}

fn points_of(series: Vec<CounterValue>) -> Vec<SeriesPoint> {
    series
        .into_iter()
        .map(|c| SeriesPoint {
            start: rfc3339(c.start),
            value: c.value.to_string(),
        })
        .collect()
}

/// Checks `group_by` and the `filter[..]` parameters against `meter`'s dimensions: `None`
/// when there are none (the meter's total).
fn parse_split(params: &UsageParams, meter: &Meter) -> Result<Option<Split>, ApiError> {
    let mut filters: Vec<(String, String)> = Vec::new();
    for (key, value) in &params.other {
        let Some(dim) = key
            .strip_prefix("filter[")
            .and_then(|k| k.strip_suffix(']'))
        else {
            continue;
        };
        let field = format!("filter[{}]", clip(dim));
        if filters.len() >= MAX_DIMENSIONS {
            return Err(ApiError::bad_request(
                "too_many_filters",
                field,
                format!("at most {MAX_DIMENSIONS} filters, one per dimension"),
            ));
        }
        known_dimension(meter, dim, &field)?;
        dimension::check_value(value)
            .map_err(|e| ApiError::bad_request("invalid_filter", field.clone(), e))?;
        filters.push((dim.to_owned(), value.clone()));
    }
    if let Some(g) = params.group_by.as_deref() {
        known_dimension(meter, g, "group_by")?;
    }
    if filters.is_empty() && params.group_by.is_none() {
        return Ok(None);
    }
    if meter.aggregation == Aggregation::Latest {
        let named = filters.len() + usize::from(params.group_by.is_some());
        let all = meter.dimensions.keys.iter().all(|d| {
            filters.iter().any(|(f, _)| *f == d.name) || params.group_by.as_deref() == Some(&d.name)
        });
        if !all || named > meter.dimensions.keys.len() {
            return Err(ApiError::bad_request(
                "invalid_group_by",
                "group_by",
                format!(
                    "meter {:?} keeps the latest reading; it can be split only by all its \
                     dimensions ({}) at once",
                    meter.name.as_str(),
                    meter.dimensions.names().join(", ")
                ),
            ));
        }
    }
    Ok(Some(Split {
        aggregation: meter.aggregation.clone(),
        group_by: params.group_by.clone(),
        filters,
    }))
}

/// `400` unless `dim` is a dimension of `meter`: `no_dimensions` for a meter without any,
/// `unknown_dimension` otherwise, both naming `field`.
fn known_dimension(meter: &Meter, dim: &str, field: &str) -> Result<(), ApiError> {
    if meter.dimensions.is_empty() {
        return Err(ApiError::bad_request(
            "no_dimensions",
            field.to_owned(),
            format!(
                "meter {:?} has no dimensions to group or filter by",
                meter.name.as_str()
            ),
        ));
    }
    if meter.dimensions.get(dim).is_none() {
        return Err(ApiError::bad_request(
            "unknown_dimension",
            field.to_owned(),
            format!(
                "unknown dimension {:?} of meter {:?}; its dimensions are {}",
                clip(dim),
                meter.name.as_str(),
                meter.dimensions.names().join(", ")
            ),
        ));
    }
    Ok(())
}

/// The kept series of a split request, read and folded: the total over them, and per value
/// of the `group_by` dimension (empty without one).
async fn read_split(
    usage: &dyn UsageStore,
    registry: &dyn SeriesRegistry,
    usage_org: &OrgId,
    req: &UsageRequest,
    split: &Split,
) -> Result<(Vec<CounterValue>, BTreeMap<String, Vec<CounterValue>>), ApiError> {
    let mut keys = BTreeSet::new();
    let mut month = Month::of(req.from);
    let last = Month::of(
        req.to
            .checked_sub_signed(TimeDelta::nanoseconds(1))
            .unwrap_or(req.to),
    );
    while month <= last {
        for key in registry
            .list_series(&MeterMonth::new(usage_org, &req.meter, month))
            .await?
        {
            let values = key.series_values();
            if split
                .filters
                .iter()
                .all(|(d, v)| values.iter().any(|(kd, kv)| kd == d && kv == v))
            {
                keys.insert(key);
            }
        }
        month = month.next();
    }
    if keys.len() > MAX_SERIES_READ {
        return Err(ApiError::bad_request(
            "too_many_series",
            "group_by",
            format!(
                "{} series match; at most {MAX_SERIES_READ} per request (add filter[..])",
                keys.len()
            ),
        ));
    }
    let mut total: BTreeMap<DateTime<Utc>, Decimal> = BTreeMap::new();
    let mut groups: BTreeMap<String, BTreeMap<DateTime<Utc>, Decimal>> = BTreeMap::new();
    for key in keys {
        let points = usage
            .counter_series(&CounterQuery {
                org: usage_org.clone(),
                project: req.project.clone(),
                meter: key.clone(),
                granularity: req.granularity,
                from: req.from,
                to: req.to,
            })
            .await?;
        let group = split.group_by.as_deref().and_then(|g| {
            key.series_values()
                .into_iter()
                .find(|(d, _)| *d == g)
                .map(|(_, v)| v.to_owned())
        });
        for p in points {
            fold_into(
                &split.aggregation,
                total.entry(p.start).or_default(),
                p.value,
            );
            if let Some(g) = &group {
                let at = groups.entry(g.clone()).or_default();
                fold_into(&split.aggregation, at.entry(p.start).or_default(), p.value);
            }
        }
    }
    let listed = |m: BTreeMap<DateTime<Utc>, Decimal>| {
        m.into_iter()
            .map(|(start, value)| CounterValue { start, value })
            .collect::<Vec<_>>()
    };
    Ok((
        listed(total),
        groups.into_iter().map(|(g, m)| (g, listed(m))).collect(),
    ))
}

/// Folds one series' bucket value into a group's: sums and counts add, a max keeps the
/// largest; a latest group holds one series (see [`parse_split`]), so it keeps the value.
fn fold_into(aggregation: &Aggregation, into: &mut Decimal, value: Decimal) {
    *into = match aggregation {
        Aggregation::Max => (*into).max(value),
        Aggregation::Latest | Aggregation::TimeWeightedSum => value,
        _ => *into + value,
    };
}

/// The route handler.
pub(crate) async fn get_usage(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageResponse>, ApiError> {
    let params = query_params(params)?;
    let reader = caller.usage_org(&state, params.org_id.as_deref()).await?;
    let org = reader.org.clone();
    tracing::Span::current().record("org", org.as_str());
    let mode = match parse_mode(params.mode.as_deref())? {
        None => reader.key_mode.unwrap_or(KeyMode::Live),
        Some(m) => m,
    };
    if let Some(own) = reader.key_mode
        && own != mode
    {
        let own = own.as_str();
        return Err(ApiError::Forbidden(format!(
            "a {own} key reads {own} usage only: leave mode out, or ask for mode={own}"
        )));
    }
    let req = UsageRequest::parse(&params, &state.catalogue.load().meters, state.clock.now())?;
    if let Some(id) = &req.project
        // A project the reader may not see is answered like one that does not exist.
        && (state.tenants.get_project(&org, id).await?.is_none()
            || !reader.may_read_project(&state, id).await?)
    {
        return Err(project_not_found(id));
    }
    let per_project = parse_per_project(params.per_project.as_deref())?;
    check_per_project(per_project, &req)?;
    let mut answer = read(
        &*state.usage,
        state.series.as_deref(),
        &org,
        mode,
        req.clone(),
    )
    .await?;
    if per_project {
        let mut projects = Vec::new();
        for id in reader.readable_projects(&state).await? {
            let one = UsageRequest {
                project: Some(id),
                ..req.clone()
            };
            let part = read(&*state.usage, state.series.as_deref(), &org, mode, one).await?;
            projects.push(ProjectUsage {
                project_id: part.project_id.unwrap_or_default(),
                series: part.series,
                groups: part.groups,
            });
        }
        answer.projects = Some(projects);
    }
    Ok(Json(answer))
}

/// `per_project` splits the whole org, by project only: refused beside `project_id`, and
/// beside `group_by`/`filter` (each project would read up to [`MAX_SERIES_READ`] series, so
/// one request would multiply the series bound by the project bound).
pub(crate) fn check_per_project(per_project: bool, req: &UsageRequest) -> Result<(), ApiError> {
    let clash = if !per_project {
        None
    } else if req.project.is_some() {
        Some("per_project splits the whole org by project: leave project_id out")
    } else if req.split.is_some() {
        Some(
            "per_project cannot be combined with group_by or filter: split by project or by dimension",
        )
    } else {
        None
    };
    match clash {
        Some(message) => Err(ApiError::bad_request(
            "invalid_parameter",
            "per_project",
            message,
        )),
        None => Ok(()),
    }
}

/// The `per_project` parameter: absent or `false` is off, `true` on, anything else `400
/// invalid_parameter`.
fn parse_per_project(v: Option<&str>) -> Result<bool, ApiError> {
    match v {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_parameter",
            "per_project",
            format!("per_project must be true or false, got {:?}", clip(other)),
        )),
    }
}

fn unknown_meter(catalogue: &MeterCatalogue, m: &str) -> ApiError {
    ApiError::bad_request(
        ErrorCode::UnknownMeter.as_str(),
        "meter",
        format!(
            "unknown meter {:?}; this org's meters are {}",
            clip(m),
            catalogue.names().join(", ")
        ),
    )
}

/// At most 64 characters of a caller's value, for messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses `YYYY-MM-DD` (midnight UTC) or RFC 3339. A `+` of an offset that arrived
/// unescaped in the query string (and so decoded as a space) is put back.
pub(crate) fn parse_instant(field: &'static str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            ErrorCode::InvalidTimestamp.as_str(),
            field,
            format!(
                "{field} must be RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01), got {:?}",
                clip(s)
            ),
        )
    };
    let b = s.as_bytes();
    if b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
    {
        let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?;
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    let parsed = DateTime::parse_from_rfc3339(s).or_else(|e| match s.rfind(' ') {
        Some(i) if i > 10 => DateTime::parse_from_rfc3339(&format!("{}+{}", &s[..i], &s[i + 1..])),
        _ => Err(e),
    });
    parsed.map(|t| t.with_timezone(&Utc)).map_err(|_| bad())
}

/// Buckets of width `g` from `from` (a bucket start) up to the exclusive `to`.
fn bucket_count(g: Granularity, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    if to <= from {
        return 0;
    }
    let last = g.truncate(
        to.checked_sub_signed(TimeDelta::nanoseconds(1))
            .unwrap_or(to),
    );
    let steps = match g {
        Granularity::Hour => (last - from).num_seconds() / 3600,
        Granularity::Day => (last - from).num_seconds() / 86_400,
        Granularity::Month => {
            let (a, b) = (Month::of(from), Month::of(last));
            i64::from(b.year() - a.year()) * 12 + i64::from(b.month()) - i64::from(a.month())
        }
    };
    steps + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::t;

    #[test]
    fn instants_parse_as_dates_or_rfc3339() {
        assert_eq!(
            parse_instant("from", "2026-11-01").unwrap(),
            t("2026-11-01T00:00:00Z")
        );
        assert_eq!(
            parse_instant("from", "2026-11-01T02:00:00+02:00").unwrap(),
            t("2026-11-01T00:00:00Z")
        );
        assert_eq!(
            parse_instant("from", "2026-11-01T02:00:00 02:00").unwrap(),
            t("2026-11-01T00:00:00Z")
        );
        for bad in [
            "2026-13-01",
            "2026-1-01",
            "yesterday",
            "",
            "2026-11-01T25:00:00Z",
            "2026-02-30",
        ] {
            let e = parse_instant("to", bad).unwrap_err();
            assert!(
                matches!(e, ApiError::BadRequest { ref field, .. } if field.as_deref() == Some("to")),
                "{bad}"
            );
        }
    }

    #[test]
    fn buckets_are_counted_half_open() {
        let c = |g, a, b| bucket_count(g, t(a), t(b));
        assert_eq!(
            c(
                Granularity::Hour,
                "2026-11-01T00:00:00Z",
                "2026-11-01T00:00:00Z"
            ),
            0
        );
        assert_eq!(
            c(
                Granularity::Hour,
                "2026-11-01T00:00:00Z",
                "2026-11-01T01:00:00Z"
            ),
            1
        );
        assert_eq!(
            c(
                Granularity::Hour,
                "2026-11-01T00:00:00Z",
                "2026-11-01T01:00:00.5Z"
            ),
            2
        );
        assert_eq!(
            c(
                Granularity::Day,
                "2026-11-01T00:00:00Z",
                "2026-12-01T00:00:00Z"
            ),
            30
        );
        assert_eq!(
            c(
                Granularity::Month,
                "2026-11-01T00:00:00Z",
                "2027-01-01T00:00:00Z"
            ),
            2
        );
        assert_eq!(
            c(
                Granularity::Month,
                "2026-11-01T00:00:00Z",
                "2027-01-01T00:00:01Z"
            ),
            3
        );
    }
}

#[cfg(test)]
#[path = "usage_dimensions_tests.rs"]
mod dimensions_tests;
