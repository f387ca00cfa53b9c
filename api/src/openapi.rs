//! `GET /openapi.json`: the OpenAPI 3.1 document of every Tally route, served by this
//! router.
//!
//! The shared part (`POST /v1/events`, the shared error object, the security scheme) comes
//! from the HTTP seam, `tally_http::openapi::document` (through [`crate::http`]), so this
//! crate documents ingest's route without depending on ingest; this module adds the routes
//! of this crate (`GET /v1/usage`, the management routes) and their schemas. Tests check it
//! against the implementation: every route of [`crate::ROUTES`] and of ingest
//! (`tally_ingest::ROUTES`, a dev-dependency) is documented with its method, every status
//! the handlers answer is listed, and the schemas' property names are those of
//! [`UsageResponse`](crate::UsageResponse), [`SeriesPoint`](crate::SeriesPoint) and
//! [`UsageParams`](crate::usage::UsageParams).

use axum::Json;
use serde_json::{Value, json};

use crate::http::openapi::{
    BuiltOnce, add_paths, add_schemas, add_security_schemes, error_responses, json_response,
    operation_responses, schema_ref, service_document,
};
use crate::roles::markdown_table;
use crate::{Endpoint, ROUTES, outside_org};

/// The statuses `GET /v1/usage` answers with.
pub const GET_USAGE_STATUSES: &[u16] = &[200, 400, 401, 403, 404, 429, 500, 503];

/// The statuses each route answers with (`GET /v1/usage` and the management routes).
pub fn statuses(endpoint: Endpoint) -> &'static [u16] {
    match endpoint {
        Endpoint::Usage => GET_USAGE_STATUSES,
        Endpoint::OpenApi => &[200],
        Endpoint::MyOrgs => &[200, 401, 403, 429, 500, 503],
        Endpoint::GetOrg
        | Endpoint::ListMembers
        | Endpoint::ListProjects
        | Endpoint::GetProject
        | Endpoint::ListKeys => &[200, 400, 401, 403, 404, 429, 500, 503],
        Endpoint::ListAudit | Endpoint::LineEvents | Endpoint::Export => {
            &[200, 400, 401, 403, 404, 429, 500, 503]
        }
        Endpoint::UsageSummary | Endpoint::UpcomingInvoice | Endpoint::ListInvoices => {
            &[200, 400, 401, 403, 404, 429, 500, 503]
        }
        Endpoint::CreateProject | Endpoint::CreateKey => {
            &[201, 400, 401, 403, 404, 409, 429, 500, 503]
        }
        Endpoint::RevokeKey => &[200, 400, 401, 403, 404, 429, 500, 503],
        Endpoint::UpdateOrg | Endpoint::DeleteOrg => &[200, 400, 401, 403, 404, 429, 500, 503],
        Endpoint::UpdateProject | Endpoint::ArchiveProject | Endpoint::RemoveProjectMember => {
            &[200, 400, 401, 403, 404, 429, 500, 503]
        }
        Endpoint::AddProjectMember => &[201, 400, 401, 403, 404, 409, 429, 500, 503],
        Endpoint::RotateKey => &[201, 400, 401, 403, 404, 409, 429, 500, 503],
        Endpoint::TransferOwnership => &[200, 400, 401, 403, 404, 409, 429, 500, 503],
        Endpoint::UpdateMember | Endpoint::RemoveMember => {
            &[200, 400, 401, 403, 404, 429, 500, 503]
        }
        Endpoint::ListInvitations | Endpoint::RevokeInvitation => {
            &[200, 400, 401, 403, 404, 429, 500, 503]
        }
        Endpoint::CreateInvitation | Endpoint::AcceptInvitation => {
            &[201, 400, 401, 403, 404, 409, 429, 500, 503]
        }
        Endpoint::GetSecurityPolicy => &[200, 400, 401, 403, 404, 429, 500, 503],
        Endpoint::PutSecurityPolicy => &[200, 400, 401, 403, 404, 409, 429, 500, 503],
        Endpoint::CreateSession => &[201, 401, 403, 409, 429, 500, 503],
        Endpoint::MySessions => &[200, 401, 403, 429, 500, 503],
        Endpoint::RevokeMySession | Endpoint::ListOrgSessions | Endpoint::RevokeOrgSession => {
            &[200, 400, 401, 403, 404, 429, 500, 503]
        }
    }
}

/// The whole document: ingest's plus this crate's routes.
pub fn document() -> Value {
    let mut doc = service_document();
    add_paths(&mut doc, json!({"/v1/usage": {"get": get_usage()}}));
    add_paths(&mut doc, json!({"/v1/me/orgs": {"get": my_orgs()}}));
    add_paths(
        &mut doc,
        json!({"/v1/invitations/accept": {"post": accept_invitation()}}),
    );
    add_paths(
        &mut doc,
        json!({"/v1/sessions": {"post": create_session(), "get": my_sessions()}}),
    );
    add_paths(
        &mut doc,
        json!({"/v1/sessions/{session_id}": {"delete": revoke_my_session()}}),
    );
    for route in ROUTES {
        if let Some(op) = management_operation(route.endpoint) {
            add_paths(
                &mut doc,
                json!({ route.path: { route.method.to_ascii_lowercase(): op } }),
            );
        }
    }
    add_security_schemes(
        &mut doc,
        json!({"userToken": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A user's JWT (HS256 or RS256 as the server is configured; `sub` is the user id), e.g. from `tally token create`.",
        }}),
    );
    crate::openapi_dashboard::add(&mut doc);
    add_schemas(&mut doc, management_schemas());
    add_schemas(&mut doc, invoice_schemas());
    add_schemas(
        &mut doc,
        json!({
            "UsageResponse": {
                "type": "object",
                "required": ["org_id", "mode", "meter", "granularity", "from", "to", "series"],
                "properties": {
                    "org_id": {"type": "string"},
                    "project_id": {"type": "string", "description": "Present when the series is for one project."},
                    "mode": {"type": "string", "enum": ["live", "test"], "description": "Which usage was read: live, or test mode (events sent with `tk_test_` keys, never billed)."},
                    "meter": {"type": "string"},
                    "granularity": {"type": "string", "enum": ["month", "day", "hour"]},
                    "from": {"type": "string", "format": "date-time", "description": "Start of the range read: `from` moved back to the start of its bucket."},
                    "to": {"type": "string", "format": "date-time", "description": "Exclusive end."},
                    "series": {"type": "array", "items": schema_ref("SeriesPoint"), "description": "Buckets with usage, in time order; buckets without usage are omitted. With `filter[..]`: of the series kept."},
                    "groups": {"type": "array", "items": schema_ref("UsageGroup"), "description": "With `group_by`: one entry per value of the dimension, in value order."},
                    "projects": {"type": "array", "items": schema_ref("ProjectUsage"), "description": "With `per_project=true`: one entry per project the caller may see, in id order."},
                },
            },
            "ProjectUsage": {
                "type": "object",
                "required": ["project_id", "series"],
                "properties": {
                    "project_id": {"type": "string"},
                    "series": {"type": "array", "items": schema_ref("SeriesPoint"), "description": "The project's buckets with usage, in time order."},
                    "groups": {"type": "array", "items": schema_ref("UsageGroup"), "description": "With `group_by`: the project's series per value of the dimension."},
                },
            },
            "UsageGroup": {
                "type": "object",
                "required": ["value", "series"],
                "properties": {
                    "value": {"type": "string", "description": "The dimension's value."},
                    "series": {"type": "array", "items": schema_ref("SeriesPoint")},
                },
            },
            "SeriesPoint": {
                "type": "object",
                "required": ["start", "value"],
                "properties": {
                    "start": {"type": "string", "format": "date-time"},
                    "value": {"type": "string", "description": "The counter as a decimal string, exactly what the accepted events imply; for a time_weighted_sum meter the bucket's value × hours (at most 9 decimal places, rounded once half to even)."},
                },
            },
        }),
    );
    doc
}

/// The handler: the document, built once.
pub(crate) async fn serve() -> Json<Value> {
    static DOC: BuiltOnce = BuiltOnce::new(document);
    Json(DOC.get().clone())
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
    let responses = operation_responses(
        GET_USAGE_STATUSES,
        json!({"200": json_response("The counter series.", "UsageResponse")}),
    );
    let instant = instant_schema();
    json!({
        "operationId": "getUsage",
        "summary": "Read a usage counter series",
        "description": format!(
            "A meter's counter of the caller's org (or of one of its projects) at month, day or hour granularity over a half-open range; at most {} buckets and {} calendar months. Needs an API key with scope `usage:read`, or a user's JWT with `org_id` naming an org they are a member of (any role). A `time_weighted_sum` meter answers value × hours per bucket (GB-hours from storage readings: each reading holds until the next), integrated from its readings up to the end of the bucket, the range's `to` or now, whichever comes first (a reading is never integrated into the future).",
            crate::usage::MAX_BUCKETS,
            crate::usage::MAX_MONTHS
        ),
        "security": [{"apiKey": []}, {"userToken": []}],
        "parameters": [
            param("meter", true, "The meter: one of the org's meters (another is 400 `unknown_meter`).", json!({"type": "string", "minLength": 1})),
            param("granularity", false, "Bucket width; default day.", json!({"type": "string", "enum": ["month", "day", "hour"], "default": "day"})),
            param("from", false, "Inclusive start; default the start of the current month (or of the month before `to`).", instant.clone()),
            param("to", false, "Exclusive end; default now.", instant),
            param("project_id", false, "One project of the org instead of the whole org (404 if it is not the org's).", json!({"type": "string"})),
            param("org_id", false, "The org; required with a user token; optional with an API key, which implies its org (another org is 404).", json!({"type": "string"})),
            param("group_by", false, "A dimension of the meter (see the catalogue's `dimensions`): the answer's `groups` has one series per value. A meter without dimensions is 400 `no_dimensions`, another name 400 `unknown_dimension`.", json!({"type": "string", "minLength": 1, "maxLength": 32})),
            json!({
                "name": "filter",
                "in": "query",
                "required": false,
                "style": "deepObject",
                "explode": true,
                "description": format!("`filter[<dimension>]=<value>`: keep the series with that value (at most {} filters, values 1 to 64 bytes of A-Z a-z 0-9 _ . : / -; else 400 `invalid_filter`, `unknown_dimension` or `no_dimensions`). At most {} series are read per request (400 `too_many_series`).", tally_core::dimension::MAX_DIMENSIONS, crate::usage::MAX_SERIES_READ),
                "schema": {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": tally_core::dimension::MAX_DIMENSIONS},
            }),
            param("per_project", false, &format!("`true`: beside the org's series, `projects` has one series per project the caller may see (owners, admins and API keys: every project; members and viewers: their own), in one request. With `project_id`, `group_by` or `filter` it is 400 `invalid_parameter`; more than {} such projects is 400 `too_many_projects`.", crate::usage::MAX_PER_PROJECT), json!({"type": "string", "enum": ["true", "false"], "default": "false"})),
            param("mode", false, "`live` or `test`. Test-mode usage (events sent with `tk_test_` keys) is counted apart, never priced or invoiced, and held to the free plan's hard limits of its own. Default: `live` for a user; an API key's own mode, and an API key asking for the other mode is 403.", json!({"type": "string", "enum": ["live", "test"]})),
        ],
        "responses": responses,
    })
}

fn my_orgs() -> Value {
    let responses = operation_responses(
        statuses(Endpoint::MyOrgs),
        json!({"200": json_response("The caller's orgs with their role in each.", "MyOrgsResponse")}),
    );
    json!({
        "operationId": "myOrgs",
        "summary": "List the orgs the caller is a member of",
        "description": "Needs a user's JWT (an API key is 403). Every org the user belongs to, with their role there.",
        "security": [{"userToken": []}],
        "responses": responses,
    })
}

fn accept_invitation() -> Value {
    let codes = statuses(Endpoint::AcceptInvitation);
    let responses = operation_responses(
        codes,
        json!({
            "409": json_response("The invitation was accepted already, or the caller is a member already.", "Error"),
            "201": json_response("The new membership.", "Membership"),
        }),
    );
    json!({
        "operationId": "acceptInvitation",
        "summary": "Accept an invitation: become a member of its org with its role",
        "description": "Needs a user's JWT (an API key is 403) whose user's email is the invited one (403 otherwise). The token is the one `createInvitation` answered; an unknown, revoked or expired token (invitations last 7 days) is 404, a second accept 409. Writes one audit record in the invitation's org, allowed or refused (a token that matches no invitation has no org and writes none). Outside the role table: `invitation.accept`.",
        "security": [{"userToken": []}],
        "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("AcceptInvitation")}}},
        "responses": responses,
    })
}

fn create_session() -> Value {
    let responses = operation_responses(
        statuses(Endpoint::CreateSession),
        json!({
            "409": json_response("`too_many_sessions`: the user holds 50 live sessions already.", "Error"),
            "201": json_response("The session, and its token (shown this once).", "OpenedSession"),
        }),
    );
    json!({
        "operationId": "createSession",
        "summary": "Open a sign-in session: a session token the user and their orgs' admins can list and revoke",
        "description": format!(
            "Needs a user's token (`tally token create`, or the configured OIDC issuer's); a session token is 403 `session_token` (a session never renews itself), an API key 403. The session token is an HS256 JWT whose `sid` names the session; it carries the opening token's `amr` and lives the shortest `session_lifetime_seconds` among the user's orgs' security policies (an org that set none counts as {} seconds, 12 hours). Revoking the session ends the token at once on the server that revoked it and within {} seconds on the others. A user holds at most {} live sessions (409 `too_many_sessions`).",
            tally_core::security::DEFAULT_SESSION_LIFETIME_SECS,
            crate::sessions::SESSION_CACHE_TTL_SECS,
            tally_core::security::MAX_SESSIONS_PER_USER,
        ),
        "security": [{"userToken": []}],
        "responses": responses,
    })
}

fn my_sessions() -> Value {
    let responses = operation_responses(
        statuses(Endpoint::MySessions),
        json!({"200": json_response("The caller's live sessions, newest first.", "SessionsResponse")}),
    );
    json!({
        "operationId": "mySessions",
        "summary": "List the caller's live sign-in sessions",
        "description": "Needs a user's JWT (an API key is 403). `current` marks the session of the token that asks.",
        "security": [{"userToken": []}],
        "responses": responses,
    })
}

fn revoke_my_session() -> Value {
    let responses = operation_responses(
        statuses(Endpoint::RevokeMySession),
        json!({"200": json_response("The revoked session.", "SessionView")}),
    );
    json!({
        "operationId": "revokeMySession",
        "summary": "Revoke one of the caller's own sign-in sessions (its token stops working; revoking again keeps the first time)",
        "description": "Needs a user's JWT (an API key is 403). A session that is not the caller's is 404.",
        "security": [{"userToken": []}],
        "parameters": [json!({"name": "session_id", "in": "path", "required": true, "description": "The session.", "schema": {"type": "string"}})],
        "responses": responses,
    })
}

/// An instant of a query: RFC 3339 or a date (midnight UTC), as `parse_instant` reads it.
fn instant_schema() -> Value {
    json!({
        "description": "RFC 3339, or YYYY-MM-DD (midnight UTC)",
        "anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "string", "format": "date"},
        ],
    })
}

/// A display name as `tally_core::tenant::check_name` accepts it: 1–200 characters, not
/// only whitespace, no control characters.
fn name_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": tally_core::tenant::MAX_NAME_LEN,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
        "description": "1–200 characters, not only whitespace, no control characters.",
    })
}

/// A month as `Month::parse` takes it: `YYYY-MM`, years 2000 to 9999.
fn month_schema() -> Value {
    json!({"type": "string", "pattern": "^[2-9][0-9]{3}-(0[1-9]|1[0-2])$"})
}

/// A meter name as `MeterName::parse` takes it.
fn meter_schema() -> Value {
    json!({"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 64})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

/// The OpenAPI operation of a management route (`None` for the others).
fn management_operation(endpoint: Endpoint) -> Option<Value> {
    let (id, summary, ok_schema, body, extra): (&str, &str, &str, Option<&str>, Vec<Value>) =
        match endpoint {
            outside_org!() => {
                return None;
            }
            Endpoint::ListOrgSessions => (
                "listOrgSessions",
                "The live sign-in sessions of the organization's members, newest first (at most 500; `truncated` says more exist). A session is its user's: a member of two orgs is seen by the admins of both",
                "SessionsResponse",
                None,
                vec![],
            ),
            Endpoint::RevokeOrgSession => (
                "revokeOrgSession",
                "Revoke a sign-in session of one of the organization's members (its token stops working); a session of anyone outside the organization is 404",
                "SessionView",
                None,
                vec![path_param("session_id", "The session.")],
            ),
            Endpoint::ListInvitations => (
                "listInvitations",
                "List the pending invitations (never their tokens or hashes)",
                "InvitationsResponse",
                None,
                vec![],
            ),
            Endpoint::CreateInvitation => (
                "createInvitation",
                "Invite an email address with a role; the token to accept with is in `token`, shown this once (expires after 7 days; 409 if the email has a pending invitation; 403 with `limit` and `count` past the plan's user limit, where pending invitations count)",
                "CreatedInvitation",
                Some("CreateInvitation"),
                vec![],
            ),
            Endpoint::RevokeInvitation => (
                "revokeInvitation",
                "Revoke a pending invitation; answers it as it was",
                "InvitationView",
                None,
                vec![path_param("invitation_id", "The invitation.")],
            ),
            Endpoint::GetSecurityPolicy => (
                "getSecurityPolicy",
                "Read the organization's security policy (the default, with `updated_at` null, if it set none)",
                "SecurityPolicy",
                None,
                vec![],
            ),
            Endpoint::PutSecurityPolicy => (
                "putSecurityPolicy",
                "Replace the organization's security policy: require MFA (the token's `amr` must contain `mfa`, `otp`, `hwk` or `swk`, else 403 `mfa_required`), an IP allowlist of at most 50 IPv4/IPv6 CIDR blocks for users and API keys (403 `ip_not_allowed` outside it; empty: any address), and the session lifetime. 409 `would_lock_out` when the policy would refuse the caller's own address or token.",
                "SecurityPolicy",
                Some("PutSecurityPolicy"),
                vec![],
            ),
            Endpoint::GetOrg => ("getOrg", "Read the organization", "Org", None, vec![]),
            Endpoint::UpdateOrg => (
                "updateOrg",
                "Change the organization's name or plan (a plan whose project limit the org exceeds is 403 with `limit` and `count`)",
                "Org",
                Some("UpdateOrg"),
                vec![],
            ),
            Endpoint::DeleteOrg => (
                "deleteOrg",
                "Delete the organization (soft: it is marked `deleted_at` and every API key is revoked; afterwards its routes answer 404)",
                "Org",
                None,
                vec![],
            ),
            Endpoint::TransferOwnership => (
                "transferOwnership",
                "Hand ownership to another member; the owner becomes an admin",
                "Org",
                Some("TransferOwnership"),
                vec![],
            ),
            Endpoint::UpdateMember => (
                "updateMember",
                "Change a member's role (the owner's cannot change, nobody becomes owner: 403)",
                "MemberView",
                Some("UpdateMember"),
                vec![path_param("user_id", "The member.")],
            ),
            Endpoint::RemoveMember => (
                "removeMember",
                "Remove a member (not the owner: 403); answers the removed membership",
                "MemberView",
                None,
                vec![path_param("user_id", "The member.")],
            ),
            Endpoint::ListMembers => (
                "listMembers",
                "List the members and their roles",
                "MembersResponse",
                None,
                vec![],
            ),
            Endpoint::ListProjects => (
                "listProjects",
                "List the projects (members and viewers: the ones they are on)",
                "ProjectsResponse",
                None,
                vec![],
            ),
            Endpoint::CreateProject => (
                "createProject",
                "Create a project (403 with `limit` and `count` past the plan's project limit)",
                "Project",
                Some("CreateProject"),
                vec![],
            ),
            Endpoint::GetProject => (
                "getProject",
                "Read a project",
                "Project",
                None,
                vec![path_param("project_id", "The project.")],
            ),
            Endpoint::UpdateProject => (
                "updateProject",
                "Rename a project",
                "Project",
                Some("UpdateProject"),
                vec![path_param("project_id", "The project.")],
            ),
            Endpoint::ArchiveProject => (
                "archiveProject",
                "Archive a project: ingest refuses its events (within its 10 s project cache), it no longer counts against the plan's project limit, and it stays listed with `archived_at` (archiving again keeps the first time)",
                "Project",
                None,
                vec![path_param("project_id", "The project.")],
            ),
            Endpoint::AddProjectMember => (
                "addProjectMember",
                "Put a member of the org on a project (members and viewers see only the projects they are on; 409 if they are on it already)",
                "ProjectMemberView",
                Some("AddProjectMember"),
                vec![path_param("project_id", "The project.")],
            ),
            Endpoint::RemoveProjectMember => (
                "removeProjectMember",
                "Take a member off a project",
                "ProjectMemberView",
                None,
                vec![
                    path_param("project_id", "The project."),
                    path_param("user_id", "The member."),
                ],
            ),
            Endpoint::ListKeys => (
                "listKeys",
                "List the API keys (never their secrets or hashes)",
                "KeysResponse",
                None,
                vec![],
            ),
            Endpoint::CreateKey => (
                "createKey",
                "Create an API key; its secret is in `key`, shown this once",
                "CreatedKey",
                Some("CreateKey"),
                vec![],
            ),
            Endpoint::RevokeKey => (
                "revokeKey",
                "Revoke an API key (ingest's key cache may accept it for up to its TTL)",
                "KeyView",
                None,
                vec![path_param("key_id", "The key.")],
            ),
            Endpoint::RotateKey => (
                "rotateKey",
                "Rotate an API key: a new key (its secret in `key`, shown once) with the same name and scopes; the old one keeps working for `overlap_seconds` (409 if it is revoked)",
                "RotatedKey",
                Some("RotateKey"),
                vec![path_param("key_id", "The key to rotate.")],
            ),
            Endpoint::UsageSummary => (
                "usageSummary",
                "This month so far, per meter: value, the plan's included quantity, the hard limit (free plan) and the percentage used",
                "UsageSummary",
                None,
                vec![],
            ),
            Endpoint::UpcomingInvoice => (
                "upcomingInvoice",
                "This month so far priced with month close's engine (the plan month close would bill, the stored month counters, `price_month`), and `projected_total`: the month projected to its end at the current rate and priced the same way. Projection: sum and count meters scale by days_in_month / days_elapsed (elapsed counted in seconds, at least one hour; rounded to 9 decimal places); max, latest and unique_count meters are not scaled (a peak, a latest reading or a distinct count is already the month's level). Adjustment lines for late usage of closed months are added by month close and not shown here",
                "UpcomingInvoice",
                None,
                vec![],
            ),
            Endpoint::ListInvoices => (
                "listInvoices",
                "Closed months' reports, newest first, with their total and Stripe invoice (id, status, hosted URL when recorded); 503 on a server without billing records",
                "InvoicesResponse",
                None,
                vec![
                    param(
                        "limit",
                        false,
                        "Page size, 1 to 100; default 12.",
                        json!({"type": "integer", "minimum": 1, "maximum": 100}),
                    ),
                    param(
                        "before",
                        false,
                        "Only months before this one (the previous page's `next_before`).",
                        month_schema(),
                    ),
                ],
            ),
            Endpoint::Export => (
                "exportUsage",
                "A month's usage counters (or with kind=ledger its ledger entries, each event once) as CSV, streamed; the rows `tally export` writes (docs/audit.md)",
                "LineEventsResponse",
                None,
                vec![
                    param("period", true, "The month, YYYY-MM.", month_schema()),
                    param(
                        "kind",
                        false,
                        "`counters` (default) or `ledger`.",
                        json!({"type": "string", "enum": ["counters", "ledger"]}),
                    ),
                    param("meter", false, "Only this meter.", meter_schema()),
                ],
            ),
            Endpoint::LineEvents => (
                "listLineEvents",
                "The ledger entries a report line bills (the meter's events of the month, each once), a page at a time, in the canonical texts its digest is computed from (docs/audit.md); a page may hold fewer than `limit`: follow `next_cursor` until it is absent",
                "LineEventsResponse",
                None,
                vec![
                    json!({"name": "period", "in": "path", "required": true, "description": "The report's month, YYYY-MM.", "schema": month_schema()}),
                    json!({"name": "meter", "in": "path", "required": true, "description": "The line's meter.", "schema": meter_schema()}),
                    param(
                        "limit",
                        false,
                        "Page size, 1 to 1,000; default 100.",
                        json!({"type": "integer", "minimum": 1, "maximum": 1000}),
                    ),
                    param(
                        "cursor",
                        false,
                        "The `next_cursor` of the previous page.",
                        json!({"type": "string", "minLength": 1, "maxLength": 512}),
                    ),
                ],
            ),
            Endpoint::ListAudit => (
                "listAudit",
                "Read the audit trail, newest first",
                "AuditResponse",
                None,
                vec![
                    param(
                        "from",
                        false,
                        "Records at or after (RFC 3339 or YYYY-MM-DD).",
                        instant_schema(),
                    ),
                    param("to", false, "Records before.", instant_schema()),
                    param(
                        "user",
                        false,
                        "Only this actor (a user id, `apikey:<id>` or `cli`).",
                        json!({"type": "string"}),
                    ),
                    param(
                        "action",
                        false,
                        "Only this action (`project.create`, ...).",
                        json!({"type": "string"}),
                    ),
                    param(
                        "resource",
                        false,
                        "Only this resource (`project:prj_…`).",
                        json!({"type": "string"}),
                    ),
                    param(
                        "limit",
                        false,
                        "Page size, 1 to 200; default 50.",
                        json!({"type": "integer", "minimum": 1, "maximum": 200}),
                    ),
                    param(
                        "cursor",
                        false,
                        "The `next_cursor` of the previous page.",
                        json!({"type": "string", "pattern": "^[0-9]{20}#[A-Za-z0-9_]{0,64}$"}),
                    ),
                ],
            ),
        };
    let action = endpoint.action().map_or("", |a| a.as_str());
    let codes = statuses(endpoint);
    let mut responses = error_responses(codes);
    if codes.contains(&409) {
        responses.insert(
            "409".into(),
            json_response("A unique value is taken (the project slug, a membership, an ownership that changed meanwhile).", "Error"),
        );
    }
    let ok = if codes.contains(&201) { "201" } else { "200" };
    responses.insert(ok.into(), json_response(summary, ok_schema));
    let mut parameters = vec![path_param("org_id", "The organization.")];
    parameters.extend(extra);
    let mut op = json!({
        "operationId": id,
        "summary": summary,
        "description": format!(
            "Needs a user's JWT whose role in the org allows `{action}`; a caller outside the org gets 404, a role without the permission (or an API key) 403.{} Roles:\n\n{}",
            if endpoint.action().is_some_and(|a| a.is_mutation()) { " Writes one audit record, allowed or refused." } else { "" },
            markdown_table()
        ),
        "security": [{"userToken": []}],
        "parameters": parameters,
        "responses": responses,
    });
    if endpoint == Endpoint::Export {
        // Not JSON: a CSV file, streamed.
        op["responses"]["200"] = json!({"description": summary, "content": {"text/csv": {"schema": {"type": "string"}}}});
    }
    if let (Some(schema), Some(obj)) = (body, op.as_object_mut()) {
        obj.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": schema_ref(schema)}}}),
        );
    }
    Some(op)
}

fn management_schemas() -> Value {
    let ts = json!({"type": "string", "format": "date-time"});
    let ts_opt = json!({"type": ["string", "null"], "format": "date-time"});
    let key_view = json!({
        "id": {"type": "string"}, "org_id": {"type": "string"}, "name": {"type": "string"},
        "display_prefix": {"type": "string"}, "scopes": {"type": "array", "items": {"type": "string", "enum": ["events:write", "usage:read"]}},
        "created_at": ts, "expires_at": ts_opt, "revoked_at": ts_opt,
        "last_used_at": {"type": ["string", "null"], "format": "date-time", "description": "When ingest last accepted the key (as of its last flush, every few seconds); null if never."},
    });
    let mut created_key = key_view.clone();
    if let Some(o) = created_key.as_object_mut() {
        o.insert(
            "key".into(),
            json!({"type": "string", "description": "The secret, shown this once."}),
        );
    }
    let invitation_view = json!({
        "id": {"type": "string"}, "org_id": {"type": "string"},
        "email": {"type": "string", "description": "Lowercased."},
        "role": {"type": "string", "enum": ["admin", "member", "viewer"]},
        "invited_by": {"type": "string"}, "created_at": ts, "expires_at": ts,
    });
    let mut created_invitation = invitation_view.clone();
    if let Some(o) = created_invitation.as_object_mut() {
        o.insert(
            "token".into(),
            json!({"type": "string", "description": "The token to accept with, shown this once."}),
        );
    }
    let invitation_required = json!([
        "id",
        "org_id",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at"
    ]);
    let mut created_required = invitation_required.clone();
    if let Some(a) = created_required.as_array_mut() {
        a.push(json!("token"));
    }
    let invitation_schemas = json!({
        "InvitationView": {"type": "object", "required": invitation_required, "properties": invitation_view},
        "CreatedInvitation": {"type": "object", "required": created_required, "properties": created_invitation},
        "InvitationsResponse": {"type": "object", "required": ["invitations"], "properties": {"invitations": {"type": "array", "items": schema_ref("InvitationView")}}},
        "CreateInvitation": {"type": "object", "required": ["email", "role"], "additionalProperties": false, "properties": {
            "email": {
                "type": "string",
                "maxLength": tally_core::tenant::MAX_EMAIL_LEN,
                "pattern": "^[^@\\s\\u0000-\\u001f\\u007f-\\u009f]+@[^@\\s.\\u0000-\\u001f\\u007f-\\u009f][^@\\s\\u0000-\\u001f\\u007f-\\u009f]*\\.[^@\\s\\u0000-\\u001f\\u007f-\\u009f]*[^@\\s.\\u0000-\\u001f\\u007f-\\u009f]$",
                "description": "An email address: one `@`, a dotted domain, no whitespace or control characters; at most 254 bytes of UTF-8."},
            "role": {"type": "string", "enum": ["admin", "member", "viewer"]}}},
        "AddProjectMember": {"type": "object", "required": ["user_id"], "additionalProperties": false, "properties": {
            "user_id": {"type": "string", "description": "A member of the org."}}},
        "ProjectMemberView": {"type": "object", "required": ["project_id", "user_id"], "properties": {
            "project_id": {"type": "string"}, "user_id": {"type": "string"}}},
        "AcceptInvitation": {"type": "object", "required": ["token"], "additionalProperties": false, "properties": {
            "token": {"type": "string", "minLength": 1, "maxLength": 128}}},
        "Membership": {"type": "object", "required": ["org_id", "user_id", "role", "created_at"], "properties": {
            "org_id": {"type": "string"}, "user_id": {"type": "string"},
            "role": {"type": "string", "enum": ["owner", "admin", "member", "viewer"]}, "created_at": ts}},
    });
    let mut schemas = json!({
        "Org": {"type": "object", "required": ["id", "name", "slug", "plan", "owner_id", "created_at"], "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "slug": {"type": "string"},
            "plan": {"type": "string", "enum": ["free", "starter", "pro", "enterprise"]},
            "owner_id": {"type": "string"}, "created_at": ts,
            "deleted_at": {"type": "string", "format": "date-time", "description": "When it was deleted; absent while it is live."}}},
        "UpdateOrg": {"type": "object", "additionalProperties": false, "description": "Absent or null fields are left as they are.", "properties": {
            "name": {"anyOf": [name_schema(), {"type": "null"}]},
            "plan": {"description": "Refused whenever present, with 403 plan_change_forbidden: a plan decides the bill, so only the operator changes it (tally org set-plan)."}}},
        "TransferOwnership": {"type": "object", "required": ["user_id"], "additionalProperties": false, "properties": {
            "user_id": {"type": "string", "description": "A member of the org."}}},
        "MyOrg": {"type": "object", "required": ["org", "role"], "properties": {
            "org": schema_ref("Org"), "role": {"type": "string", "enum": ["owner", "admin", "member", "viewer"]}}},
        "MyOrgsResponse": {"type": "object", "required": ["orgs"], "properties": {"orgs": {"type": "array", "items": schema_ref("MyOrg")}}},
        "UpdateMember": {"type": "object", "required": ["role"], "additionalProperties": false, "properties": {
            "role": {"type": "string", "enum": ["admin", "member", "viewer"]}}},
        "MemberView": {"type": "object", "required": ["user_id", "role", "created_at"], "properties": {
            "user_id": {"type": "string"}, "role": {"type": "string", "enum": ["owner", "admin", "member", "viewer"]}, "created_at": ts}},
        "MembersResponse": {"type": "object", "required": ["members"], "properties": {"members": {"type": "array", "items": schema_ref("MemberView")}}},
        "Project": {"type": "object", "required": ["id", "org_id", "name", "slug", "created_at"], "properties": {
            "id": {"type": "string"}, "org_id": {"type": "string"}, "name": {"type": "string"}, "slug": {"type": "string"}, "created_at": ts,
            "archived_at": {"type": "string", "format": "date-time", "description": "When it was archived; absent while it is active."}}},
        "UpdateProject": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": name_schema()}},
        "ProjectsResponse": {"type": "object", "required": ["projects"], "properties": {"projects": {"type": "array", "items": schema_ref("Project")}}},
        "CreateProject": {"type": "object", "required": ["name", "slug"], "additionalProperties": false, "properties": {
            "name": name_schema(), "slug": {"type": "string", "maxLength": 64, "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"}}},
        "KeyView": {"type": "object", "required": ["id", "org_id", "name", "display_prefix", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at"], "properties": key_view},
        "CreatedKey": {"type": "object", "required": ["id", "org_id", "name", "display_prefix", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at", "key"], "properties": created_key},
        "RotateKey": {"type": "object", "additionalProperties": false, "properties": {
            "overlap_seconds": {"type": ["integer", "null"], "minimum": 0, "maximum": 2_592_000, "default": 86_400, "description": "How long the old key keeps working (null: the default)."}}},
        "RotatedKey": {"type": "object", "required": ["key", "previous"], "properties": {
            "key": {"type": "string", "description": "The new secret, shown this once."},
            "new": schema_ref("KeyView"), "previous": schema_ref("KeyView")}},
        "UsageSummary": {"type": "object", "required": ["org_id", "period", "plan", "meters"], "properties": {
            "org_id": {"type": "string"}, "period": {"type": "string", "description": "YYYY-MM, the current UTC month."},
            "plan": {"type": "string"}, "meters": {"type": "array", "items": schema_ref("MeterSummary")}}},
        "MeterSummary": {"type": "object", "required": ["meter", "value"], "properties": {
            "meter": {"type": "string"},
            "value": {"type": "string", "description": "The month's counter so far, a decimal string."},
            "included": {"type": "string", "description": "The plan's monthly allowance; absent when unlimited."},
            "limit": {"type": "string", "description": "The hard limit (free plan: the allowance); absent when usage past the allowance is billed as overage."},
            "percent_used": {"type": "string", "description": "value / included × 100, two decimals; absent without an allowance."},
            "dimensions": {"type": "array", "items": {"type": "string"}, "description": "The meter's dimensions by name, in catalogue order (each a `group_by` of GET /v1/usage); absent when it has none."}}},
        "KeysResponse": {"type": "object", "required": ["keys"], "properties": {"keys": {"type": "array", "items": schema_ref("KeyView")}}},
        "CreateKey": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": name_schema(), "scopes": {"type": ["array", "null"], "minItems": 1, "items": {"type": "string", "enum": ["events:write", "usage:read"]}, "description": "At least one scope; absent or null: both."},
            "expires_at": {"anyOf": [instant_schema(), {"type": "null"}], "description": "When the key stops working (RFC 3339 or YYYY-MM-DD), in the future (400 invalid_field otherwise); absent or null: never."}, "test": {"type": "boolean", "default": false}}},
        "AuditRecord": {"type": "object", "required": ["id", "org_id", "actor", "action", "resource", "outcome", "at"], "properties": {
            "id": {"type": "string"}, "org_id": {"type": "string"},
            "actor": {"type": "string", "description": "A user id, `apikey:<id>`, or `cli`."},
            "action": {"type": "string", "description": "`org.create`, `project.create`, `key.create`, `key.revoke`, ..."},
            "resource": {"type": "string"}, "outcome": {"type": "string", "enum": ["allowed", "refused"]},
            "reason": {"type": "string", "description": "The error code of a refusal."},
            "before": {}, "after": {}, "at": ts, "ip": {"type": "string"}, "user_agent": {"type": "string"}}},
        "LineEvent": {"type": "object", "required": ["event_id", "org_id", "project_id", "meter", "aggregation", "quantity", "timestamp", "properties"], "properties": {
            "event_id": {"type": "string"}, "org_id": {"type": "string"}, "project_id": {"type": "string"}, "meter": {"type": "string"},
            "aggregation": {"type": "string", "description": "`sum`, `count`, `max`, `latest` or `unique_count:<property>`."},
            "quantity": {"type": "string", "description": "The decimal, normalized (no trailing zeros)."},
            "timestamp": {"type": "string", "description": "RFC 3339, UTC, nine fraction digits."},
            "properties": {"type": "object"}}},
        "LineEventsResponse": {"type": "object", "required": ["events"], "properties": {
            "events": {"type": "array", "items": schema_ref("LineEvent")},
            "next_cursor": {"type": "string", "description": "Pass as `cursor` for the next page; absent on the last page."}}},
        "SecurityPolicy": {"type": "object", "required": ["org_id", "require_mfa", "ip_allowlist", "session_lifetime_seconds", "updated_at"], "properties": {
            "org_id": {"type": "string"}, "require_mfa": {"type": "boolean"},
            "ip_allowlist": {"type": "array", "maxItems": 50, "items": {"type": "string", "description": "A network in CIDR notation, canonical."}},
            "session_lifetime_seconds": {"type": "integer", "minimum": 300, "maximum": 2_592_000},
            "updated_at": ts_opt}},
        "PutSecurityPolicy": {"type": "object", "required": ["require_mfa", "ip_allowlist", "session_lifetime_seconds"], "additionalProperties": false, "properties": {
            "require_mfa": {"type": "boolean", "description": "Users' tokens must show a second factor in `amr`."},
            "ip_allowlist": {"type": "array", "maxItems": 50, "items": {"type": "string", "maxLength": 64, "description": "An IPv4 or IPv6 network in CIDR notation (no bits set below the prefix), or a bare address."}, "description": "Empty: any address."},
            "session_lifetime_seconds": {"type": "integer", "minimum": 300, "maximum": 2_592_000, "description": "How long a session of the org's members may live (5 minutes to 30 days)."}}},
        "SessionView": {"type": "object", "required": ["id", "user_id", "created_at", "expires_at", "ip", "user_agent", "revoked_at", "current"], "properties": {
            "id": {"type": "string"}, "user_id": {"type": "string"}, "created_at": ts, "expires_at": ts,
            "ip": {"type": ["string", "null"], "description": "The client address it was opened from."},
            "user_agent": {"type": ["string", "null"], "maxLength": 256, "description": "The User-Agent it was opened with."},
            "revoked_at": ts_opt,
            "current": {"type": "boolean", "description": "Whether the request that shows it was made with it."}}},
        "OpenedSession": {"type": "object", "required": ["token", "session"], "properties": {
            "token": {"type": "string", "description": "The session token (a JWT), shown this once."},
            "session": schema_ref("SessionView")}},
        "SessionsResponse": {"type": "object", "required": ["sessions", "truncated"], "properties": {
            "sessions": {"type": "array", "items": schema_ref("SessionView")},
            "truncated": {"type": "boolean", "description": "Whether more live sessions exist than were listed."}}},
        "AuditResponse": {"type": "object", "required": ["records"], "properties": {
            "records": {"type": "array", "items": schema_ref("AuditRecord")},
            "next_cursor": {"type": "string", "description": "Pass as `cursor` for the next page; absent on the last page."}}},
    });
    if let (Some(all), Some(more)) = (schemas.as_object_mut(), invitation_schemas.as_object()) {
        all.extend(more.clone());
    }
    schemas
}

/// The schemas of the invoice routes (`crate::invoices`).
fn invoice_schemas() -> Value {
    json!({
        "UpcomingLine": {"type": "object", "required": ["meter", "quantity", "included", "billable", "amount", "projected_quantity", "projected_amount"], "properties": {
            "meter": {"type": "string"},
            "quantity": {"type": "string", "description": "Month-to-date quantity, in the meter's unit (for a time_weighted_sum meter, value × hours up to now, with last month's closing readings carried in)."},
            "included": {"type": "string", "description": "The plan's allowance."},
            "billable": {"type": "string", "description": "max(0, quantity − included)."},
            "amount": {"type": "string", "description": "The line so far, after the plan's discount, rounded once to the cent."},
            "projected_quantity": {"type": "string", "description": "The quantity projected to month end (sum and count scaled; max, latest and unique_count not; time_weighted_sum: the value × hours so far plus the readings held now for the hours left)."},
            "projected_amount": {"type": "string", "description": "The line priced at the projected quantity."},
            "catalogue_version": {"type": "string", "description": "The catalogue version that priced the line: its number, or file / builtin when no stored version is in force."},
            "overrides": {"type": "array", "items": {"type": "string", "pattern": "^ovr_[0-9a-f]{16}$"}, "description": "The org's price overrides that changed the line (operator-set); absent at list price."},
        }},
        "UpcomingInvoice": {"type": "object", "required": ["org_id", "period", "plan", "currency", "as_of", "days_elapsed", "days_in_month", "lines", "flat_fee", "subtotal", "discount", "total", "projected_total"], "properties": {
            "org_id": {"type": "string"},
            "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
            "plan": {"type": "string", "description": "The plan month close would bill the month on."},
            "currency": {"type": "string"},
            "as_of": {"type": "string", "format": "date-time", "description": "The server's clock when the figures were computed."},
            "days_elapsed": {"type": "string", "description": "Days of the month gone by (decimal, at least 1/24)."},
            "days_in_month": {"type": "integer", "minimum": 28, "maximum": 31},
            "lines": {"type": "array", "items": schema_ref("UpcomingLine")},
            "flat_fee": {"type": "string"},
            "subtotal": {"type": "string"},
            "discount": {"type": "string"},
            "total": {"type": "string", "description": "The month so far: subtotal − discount."},
            "projected_total": {"type": "string", "description": "The projected month's total, same engine."},
            "catalogue_version": {"type": "string", "description": "The catalogue version that priced the month: its number, or file / builtin."},
            "overrides": {"type": "array", "items": {"type": "string", "pattern": "^ovr_[0-9a-f]{16}$"}, "description": "Every price override that applied (fee, discount, lines); absent when none did."},
        }},
        "StripeStatus": {"type": "object", "required": ["status", "invoice_id", "hosted_url"], "properties": {
            "status": {"type": "string", "enum": ["not_synced", "in_progress", "finalized", "paid", "payment_failed"]},
            "invoice_id": {"type": ["string", "null"]},
            "hosted_url": {"type": ["string", "null"], "description": "The invoice's hosted page (Stripe's hosted_invoice_url), recorded when the sync finalizes the invoice; null before that or when Stripe gave none."},
        }},
        "InvoiceSummary": {"type": "object", "required": ["period", "plan", "currency", "total", "closed_at", "stripe"], "properties": {
            "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
            "plan": {"type": "string"},
            "currency": {"type": "string"},
            "total": {"type": "string"},
            "closed_at": {"type": "string", "format": "date-time", "description": "When month close stored the report."},
            "stripe": schema_ref("StripeStatus"),
            "catalogue_version": {"type": "string", "description": "The catalogue version that priced the month (a number, file or builtin); absent on reports stored before it was recorded."},
            "overrides": {"type": "array", "items": {"type": "string", "pattern": "^ovr_[0-9a-f]{16}$"}, "description": "The price overrides that applied to the month; absent when none did."},
        }},
        "InvoicesResponse": {"type": "object", "required": ["invoices"], "properties": {
            "invoices": {"type": "array", "items": schema_ref("InvoiceSummary"), "description": "Closed months, newest first."},
            "next_before": {"type": "string", "description": "Pass as `before` for the next page; absent on the last."},
        }},
    })
}
