//! The OpenAPI 3.1 document's shared part, hand-written with `serde_json::json!` (no code
//! generator, so no build cost), and the helpers every Tally API builds its part with.
//!
//! [`document`] is what every API's document starts from: `POST /v1/events` (the ingest
//! contract, documented here so the usage API can serve the whole service's document
//! without depending on ingest), `GET /openapi.json`, the shared components (the error
//! object, the API-key security scheme, `Retry-After`, the error responses) and the event
//! schemas. `tally-api` adds its own paths with [`add_paths`] and [`add_schemas`] and serves
//! the whole document at `GET /openapi.json`; a deployment of ingest alone serves
//! [`document`] with `tally_ingest::openapi::router`.
//!
//! Tests keep the document honest (in ingest and in the API): every route served is
//! documented with its method, every status a handler answers is listed for it, and the
//! schemas' property names are those of the real structs (a serialized `IngestResponse`
//! and [`ErrorBody`](crate::ErrorBody) have exactly the documented keys; the documented
//! event fields are exactly what validation accepts).

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::events::{MAX_BATCH_EVENTS, MAX_BODY_BYTES};

/// The OpenAPI version written.
pub const OPENAPI_VERSION: &str = "3.1.0";

/// The statuses `POST /v1/events` answers with.
pub const POST_EVENTS_STATUSES: &[u16] = &[202, 400, 401, 403, 413, 429, 500, 503];

/// The statuses `GET /v1/entitlements` answers with.
pub const GET_ENTITLEMENTS_STATUSES: &[u16] = &[200, 400, 401, 403, 429, 500, 503];

/// The shared document: `POST /v1/events`, `GET /v1/entitlements`, `GET /openapi.json` and every shared component.
pub fn document() -> Value {
    let mut doc = json!({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Tally",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Usage metering: send usage events, read usage counters. Errors are JSON: {\"error\": {\"code\", \"message\", \"field\"?}}.",
        },
        "paths": {},
        "components": components(),
    });
    add_paths(
        &mut doc,
        json!({
            "/v1/events": {"post": post_events()},
            "/v1/entitlements": {"get": get_entitlements()},
            "/openapi.json": {"get": get_openapi()},
        }),
    );
    doc
}

/// Merges `paths` (an object of path -> path item) into `doc["paths"]`, joining the
/// operations of a path both hold.
pub fn add_paths(doc: &mut Value, paths: Value) {
    let Value::Object(new) = paths else { return };
    let Some(existing) = doc.as_object_mut().and_then(|d| {
        d.entry("paths")
            .or_insert_with(|| json!({}))
            .as_object_mut()
    }) else {
        return;
    };
    for (path, item) in new {
        match (existing.get_mut(&path), item) {
            (Some(Value::Object(ops)), Value::Object(more)) => ops.extend(more),
            (_, item) => {
                existing.insert(path, item);
            }
        }
    }
}

/// Merges `schemas` (name -> schema) into `doc["components"]["schemas"]`.
pub fn add_schemas(doc: &mut Value, schemas: Value) {
    add_components(doc, "/components/schemas", schemas);
}

/// Merges `schemes` (name -> security scheme) into `doc["components"]["securitySchemes"]`,
/// beside the `apiKey` scheme every document has.
pub fn add_security_schemes(doc: &mut Value, schemes: Value) {
    add_components(doc, "/components/securitySchemes", schemes);
}

/// Merges the object `new` into the components object at `pointer` (which the document
/// skeleton holds already).
fn add_components(doc: &mut Value, pointer: &str, new: Value) {
    let Value::Object(new) = new else { return };
    if let Some(existing) = doc.pointer_mut(pointer).and_then(Value::as_object_mut) {
        existing.extend(new);
    }
}

/// The operation of `GET /openapi.json`.
fn get_openapi() -> Value {
    json!({
        "operationId": "getOpenApi",
        "summary": "This document",
        "security": [],
        "responses": {
            "200": {
                "description": "The OpenAPI 3.1 document of every route",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
        },
    })
}

/// A reference to a schema of `components.schemas`.
pub fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A response with `description` whose JSON body is the schema `schema` of
/// `components.schemas`.
pub fn json_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": schema_ref(schema)}},
    })
}

/// The `responses` of an operation: the shared error responses of `statuses`
/// ([`error_responses`]), with the operation's `own` (an object of status -> response)
/// added, or in place of the shared ones it names.
pub fn operation_responses(statuses: &[u16], own: Value) -> Map<String, Value> {
    let mut responses = error_responses(statuses);
    if let Value::Object(own) = own {
        responses.extend(own);
    }
    responses
}

/// A reference to a response of `components.responses`.
pub fn response_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/responses/{name}")})
}

/// What `v` stands for in `doc`: the target of its `$ref` (followed again while it is one),
/// or `v` itself when it is no reference. For the tests that check a document against the
/// routes; panics on a reference `doc` does not hold.
pub fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(
            doc,
            doc.pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}")),
        ),
        None => v,
    }
}

/// A document built on first use and kept for the life of the process: what a handler
/// serves on every request, and what the tests read and follow `$ref`s in.
pub struct BuiltOnce {
    doc: OnceLock<Value>,
    build: fn() -> Value,
}

impl BuiltOnce {
    /// The document `build` makes, once, when it is first asked for.
    pub const fn new(build: fn() -> Value) -> Self {
        BuiltOnce {
            doc: OnceLock::new(),
            build,
        }
    }

    /// The document, built now if it was not yet.
    pub fn get(&self) -> &Value {
        self.doc.get_or_init(self.build)
    }

    /// What `v` stands for in the document ([`resolve`]).
    pub fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        resolve(self.get(), v)
    }
}

/// The shared error responses, by status, for operations to pick from.
pub fn error_responses(statuses: &[u16]) -> Map<String, Value> {
    statuses
        .iter()
        .filter_map(|s| {
            let name = match s {
                400 => "BadRequest",
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                413 => "PayloadTooLarge",
                429 => "TooManyRequests",
                500 => "InternalError",
                503 => "ServiceUnavailable",
                _ => return None,
            };
            Some((s.to_string(), response_ref(name)))
        })
        .collect()
}

fn post_events() -> Value {
    let responses = operation_responses(
        POST_EVENTS_STATUSES,
        json!({"202": json_response("The request was taken: `accepted` events are durably queued (resent ids included; they are counted once), each refused event is listed in `rejected` with its index, id and error.", "IngestResponse")}),
    );
    json!({
        "operationId": "postEvents",
        "summary": "Send usage events",
        "description": format!(
            "One event, or a batch of 1 to {MAX_BATCH_EVENTS} events, at most {MAX_BODY_BYTES} bytes. Needs an API key with scope `events:write`; the org of every event is the key's. Each event is validated on its own: a bad event is a rejection inside the 202, never a failure of the others. Rate limited per key by a token bucket sized by the plan (free 10 requests/s, burst 20; starter 100/200; pro 1,000/2,000; enterprise 5,000/10,000), one token per request (429 `rate_limited` with Retry-After); orgs on plans with hard limits are refused past a meter's monthly allowance (`plan_limit_exceeded`: a 429 when every event of the request is refused for it, else per-event rejections)."
        ),
        "security": [{"apiKey": []}],
        "requestBody": {
            "required": true,
            "content": {
                // What is answered 202, not only what is accepted: an event that is not a
                // valid `Event` is a rejection inside the 202 (one bad event never sinks a
                // batch), so the body schemas admit it; only the body's shape is a 400.
                "application/json": {"schema": {"anyOf": [
                    schema_ref("Event"),
                    schema_ref("EventBatch"),
                    {
                        "type": "object",
                        "not": {"required": ["events"]},
                        "description": "Any other object is taken as one event and, if it is not a valid Event, answered 202 with its rejection.",
                    },
                ]}},
                "application/cloudevents+json": {"schema": {"anyOf": [
                    schema_ref("CloudEvent"),
                    {"type": "object", "description": "Any other object is one event, answered 202 with its rejection."},
                ]}},
                "application/cloudevents-batch+json": {"schema": {
                    "type": "array",
                    "items": {"anyOf": [schema_ref("CloudEvent"), {"description": "Any other JSON value is rejected alone, in `rejected`."}]},
                    "minItems": 1,
                    "maxItems": MAX_BATCH_EVENTS,
                }},
            },
        },
        "responses": responses,
    })
}

/// The operation of `GET /v1/entitlements` (served by ingest, `tally_ingest::entitlements`).
fn get_entitlements() -> Value {
    let responses = operation_responses(
        GET_ENTITLEMENTS_STATUSES,
        json!({"200": {
            "description": "With `meter`: that meter's Entitlement; without: every meter's, in an EntitlementsResponse.",
            "content": {"application/json": {"schema": {"anyOf": [schema_ref("Entitlement"), schema_ref("EntitlementsResponse")]}}},
        }}),
    );
    json!({
        "operationId": "getEntitlements",
        "summary": "Whether the key's org may consume more of a meter now",
        "description": "Needs an API key with scope `events:write` or `usage:read`. Per meter: the plan's monthly allowance (`limit`, null when unlimited), whether it is hard (events past it are refused) or soft (billed as overage), the month-to-date `usage`, `remaining` = max(0, limit − usage), and `allowed`: false only on a hard plan whose sum, count or unique_count meter has usage >= limit (a max or latest meter takes any reading up to the limit; soft plans stay allowed past the allowance, with remaining 0). A `time_weighted_sum` meter (value × hours, e.g. GB-hours) is always `allowed` with `limit` and `remaining` null: its figure is known only after the fact, so the catalogue refuses a hard limit on it. A test key answers for the org's test usage under the free plan's hard limits. Staleness and latency: the figures are the month counters ingest's hard limits read, cached per process for the usage TTL (2 s by default) plus the events this process accepted since; usage accepted elsewhere shows within that TTL + the aggregator's batching window (200 ms) + the time events wait in the queue. An answer costs at most one store read per meter per TTL; otherwise it is served from memory. Each check takes one unit from the key's rate bucket, the one `POST /v1/events` takes from (429 `rate_limited` with Retry-After when it is empty).",
        "security": [{"apiKey": []}],
        "parameters": [{
            "name": "meter",
            "in": "query",
            "required": false,
            "description": "The meter (one of the catalogue's; unknown: 400 with field `meter`). Without it, every meter.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 64},
        }],
        "responses": responses,
    })
}

fn components() -> Value {
    json!({
        "securitySchemes": {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (`tk_live_…` or `tk_test_…`) as `Authorization: Bearer <key>`. A test key's usage is counted apart from live usage (read it with that key), never billed, and held to the free plan's hard limits of its own.",
            },
        },
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 1},
            },
            "WWW-Authenticate": {
                "description": "`Bearer`.",
                "schema": {"type": "string"},
            },
        },
        "responses": error_response_components(),
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": schema_ref("ErrorBody")},
            },
            "ErrorBody": error_body_schema(),
            "Event": event_schema(),
            "EventBatch": {
                "type": "object",
                "required": ["events"],
                "additionalProperties": false,
                "properties": {
                    "events": {
                        "type": "array",
                        "description": "Events; an item that is not a valid Event (any JSON value) is rejected alone, in `rejected`, never the batch.",
                        "items": {"anyOf": [schema_ref("Event"), {"description": "Any other JSON value: a rejection in the 202."}]},
                        "minItems": 1,
                        "maxItems": MAX_BATCH_EVENTS,
                    },
                },
            },
            "CloudEvent": cloud_event_schema(),
            "IngestResponse": {
                "type": "object",
                "required": ["accepted", "rejected"],
                "properties": {
                    "accepted": {"type": "integer", "minimum": 0, "description": "Events durably queued."},
                    "rejected": {"type": "array", "items": schema_ref("Rejection"), "description": "Refused events, in body order."},
                    "notices": {"type": "array", "items": schema_ref("Rejection"), "description": "Accepted events to look at, absent when none: duplicate_conflict for an id sent twice in the request with other contents (the first is counted)."},
                },
            },
            "Entitlement": {
                "type": "object",
                "required": ["meter", "allowed", "limit", "usage", "remaining", "hard", "period"],
                "properties": {
                    "meter": {"type": "string"},
                    "allowed": {"type": "boolean", "description": "Whether one more event of the meter would be accepted now."},
                    "limit": {"type": ["string", "null"], "description": "The plan's monthly allowance (decimal string); null when unlimited, and always for a time_weighted_sum meter."},
                    "usage": {"type": "string", "description": "Month-to-date usage (decimal string), at most a few seconds stale (see the operation)."},
                    "remaining": {"type": ["string", "null"], "description": "max(0, limit − usage); null when unlimited."},
                    "hard": {"type": "boolean", "description": "Whether events past `limit` are refused (else billed as overage)."},
                    "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$", "description": "The month (UTC)."},
                },
            },
            "EntitlementsResponse": {
                "type": "object",
                "required": ["plan", "period", "entitlements"],
                "properties": {
                    "plan": {"type": "string", "description": "The plan the limits come from (`free` for a test key)."},
                    "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                    "entitlements": {"type": "array", "items": schema_ref("Entitlement"), "description": "Every meter, in name order."},
                },
            },
            "Rejection": {
                "type": "object",
                "required": ["index", "id", "error"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0, "description": "Position in the body (0 for a single event)."},
                    "id": {"type": ["string", "null"], "description": "The event's id, when one could be read."},
                    "error": schema_ref("ErrorBody"),
                },
            },
        },
    })
}

fn error_body_schema() -> Value {
    json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {
                "type": "string",
                "description": "snake_case reason: invalid_body, malformed_json, unauthorized, forbidden, not_found, payload_too_large, rate_limited, plan_limit_exceeded, service_unavailable, internal_error; per event: missing_field, invalid_type, invalid_id, invalid_quantity, invalid_timestamp, timestamp_in_future, unknown_meter, unknown_project, project_archived, too_many_projects, period_closed, invalid_properties, unknown_field, malformed_event, duplicate_key, dimension_cardinality_exceeded, queue_unavailable, plan_limit_exceeded.",
            },
            "message": {"type": "string", "description": "A human sentence."},
            "field": {"type": "string", "description": "The offending field (`body`, `events`, `quantity`, `data.quantity`, ...), when one is to blame."},
            "meter": {"type": "string", "description": "plan_limit_exceeded: the meter whose allowance is used up."},
            "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$", "description": "plan_limit_exceeded: the month of the allowance."},
            "limit": {"type": ["string", "integer"], "description": "plan_limit_exceeded: the plan's monthly allowance of the meter (decimal string); or, for a plan's project or user limit (403, `field` `projects` or `users`), that limit (integer)."},
            "count": {"type": "integer", "minimum": 0, "description": "plan_limit_exceeded for a project or user limit (403): how many the org has."},
            "usage": {"type": "string", "description": "plan_limit_exceeded: the org's usage in that month (decimal string)."},
            "request_id": {"type": "string", "description": "On 5xx answers: the request's id (as in x-request-id), to quote to the operator; the message is generic and the detail is in the server's log."},
        },
    })
}

fn event_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "project_id", "meter", "timestamp"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Idempotency key, unique per org: 1–128 printable ASCII characters. Resending an id never counts twice."},
            "project_id": {"type": "string", "description": "A project of the API key's org."},
            "meter": {"type": "string", "description": "One of the org's meters: api_calls, compute_minutes, storage_bytes, bandwidth_bytes by default."},
            "quantity": {
                "oneOf": [
                    {"type": "number", "minimum": 0},
                    {"type": "string", "pattern": "^(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?$"},
                ],
                "description": "A JSON number or decimal string, finite, >= 0, at most 18 significant digits. Optional for api_calls (1).",
            },
            "timestamp": {"type": "string", "format": "date-time", "description": "RFC 3339; not more than 5 minutes in the future; its month must still be open."},
            "properties": {"type": "object", "maxProperties": 32, "description": "Small free-form attributes (at most 4096 bytes of JSON)."},
        },
    })
}

fn cloud_event_schema() -> Value {
    json!({
        "type": "object",
        "description": "A structured-mode CloudEvent: id → id, type → meter, subject → project_id, time → timestamp, data.quantity → quantity, other data fields → properties. specversion (1.0) and source are required; other attributes are ignored. Errors name the CloudEvents attribute (`type`, `data.quantity`, ...).",
        "required": ["specversion", "source", "id", "type", "subject", "time"],
        "properties": {
            "specversion": {"type": "string", "const": "1.0"},
            "source": {"type": "string", "minLength": 1},
            "id": {"type": "string"},
            "type": {"type": "string", "description": "The meter."},
            "subject": {"type": "string", "description": "The project id."},
            "time": {"type": "string", "format": "date-time"},
            "data": {
                "type": "object",
                "properties": {"quantity": {"type": ["number", "string"]}},
                "additionalProperties": true,
            },
        },
        "additionalProperties": true,
    })
}

fn error_response_components() -> Value {
    let error = |description: &str, headers: Value| {
        json!({
            "description": description,
            "headers": headers,
            "content": {"application/json": {"schema": schema_ref("Error")}},
        })
    };
    let retry = || json!({"Retry-After": {"$ref": "#/components/headers/Retry-After"}});
    json!({
        "BadRequest": error("The request is malformed; `field` names what to fix (`body`, `events`, a query parameter).", json!({})),
        "Unauthorized": error("Missing, unknown, revoked or expired credentials.", json!({"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}})),
        "Forbidden": error("The credentials lack the scope (or role) the route needs.", json!({})),
        "NotFound": error("No such resource for this caller (another org's resources are not revealed).", json!({})),
        "PayloadTooLarge": error("The body is larger than 1 MiB (code `payload_too_large`).", json!({})),
        "TooManyRequests": error("`rate_limited`: the API key's rate limit is exceeded (`Retry-After` says when a token is back); or `plan_limit_exceeded`: every event of the request is past a hard monthly allowance (the error gives `meter`, `period`, `limit` and `usage`; `Retry-After` runs to the next month).", retry()),
        "InternalError": error("A bug or corrupt stored data; it has been logged.", json!({})),
        "ServiceUnavailable": error("Storage or the queue could not be reached; nothing was accepted. Retry after `Retry-After` (1 s).", retry()),
    })
}
