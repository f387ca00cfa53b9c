//! `GET /openapi.json`: the OpenAPI 3.1 document of every Tally route, served by this
//! router.
//!
//! The ingest part (`POST /v1/events`, the shared error object, the security scheme) comes
//! from [`tally_ingest::openapi::document`]; this module adds the routes of this crate
//! (`GET /v1/usage`) and their schemas. Tests check it against the implementation: every
//! route of [`crate::ROUTES`] and [`tally_ingest::ROUTES`] is documented with its method,
//! every status the handlers answer is listed, and the schemas' property names are those of
//! [`UsageResponse`](crate::UsageResponse), [`SeriesPoint`](crate::SeriesPoint) and
//! [`UsageParams`](crate::usage::UsageParams).

use std::sync::OnceLock;

use axum::Json;
use serde_json::{Value, json};
use tally_ingest::openapi::{add_paths, add_schemas, error_responses, schema_ref};

/// The statuses `GET /v1/usage` answers with.
pub const GET_USAGE_STATUSES: &[u16] = &[200, 400, 401, 403, 404, 500, 503];

/// The whole document: ingest's plus this crate's routes.
pub fn document() -> Value {
    let mut doc = tally_ingest::openapi::document();
    add_paths(&mut doc, json!({"/v1/usage": {"get": get_usage()}}));
    add_schemas(
        &mut doc,
        json!({
            "UsageResponse": {
                "type": "object",
                "required": ["org_id", "meter", "granularity", "from", "to", "series"],
                "properties": {
                    "org_id": {"type": "string"},
                    "project_id": {"type": "string", "description": "Present when the series is for one project."},
                    "meter": {"type": "string"},
                    "granularity": {"type": "string", "enum": ["month", "day", "hour"]},
                    "from": {"type": "string", "format": "date-time", "description": "Start of the range read: `from` moved back to the start of its bucket."},
                    "to": {"type": "string", "format": "date-time", "description": "Exclusive end."},
                    "series": {"type": "array", "items": schema_ref("SeriesPoint"), "description": "Buckets with usage, in time order; buckets without usage are omitted."},
                },
            },
            "SeriesPoint": {
                "type": "object",
                "required": ["start", "value"],
                "properties": {
                    "start": {"type": "string", "format": "date-time"},
                    "value": {"type": "string", "description": "The counter as a decimal string, exactly what the accepted events imply."},
                },
            },
        }),
    );
    doc
}

/// The handler: the document, built once.
pub(crate) async fn serve() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(document).clone())
}

fn param(name: &str, required: bool, description: &str, schema: Value) -> Value {
    json!({
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    })
}

fn get_usage() -> Value {
    let mut responses = error_responses(GET_USAGE_STATUSES);
    responses.insert(
        "200".into(),
        json!({
            "description": "The counter series.",
            "content": {"application/json": {"schema": schema_ref("UsageResponse")}},
        }),
    );
    let instant =
        json!({"type": "string", "description": "RFC 3339, or YYYY-MM-DD (midnight UTC)"});
    json!({
        "operationId": "getUsage",
        "summary": "Read a usage counter series",
        "description": format!(
            "A meter's counter of the caller's org (or of one of its projects) at month, day or hour granularity over a half-open range; at most {} buckets. Needs an API key with scope `usage:read`.",
            crate::usage::MAX_BUCKETS
        ),
        "security": [{"apiKey": []}],
        "parameters": [
            param("meter", true, "The meter.", json!({"type": "string"})),
            param("granularity", false, "Bucket width; default day.", json!({"type": "string", "enum": ["month", "day", "hour"], "default": "day"})),
            param("from", false, "Inclusive start; default the start of the current month (or of the month before `to`).", instant.clone()),
            param("to", false, "Exclusive end; default now.", instant),
            param("project_id", false, "One project of the org instead of the whole org (404 if it is not the org's).", json!({"type": "string"})),
            param("org_id", false, "The org; optional with an API key, which implies its org (another org is 404).", json!({"type": "string"})),
        ],
        "responses": responses,
    })
}
