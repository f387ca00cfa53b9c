//! A stateful Stripe double for the invoice sync's tests.
//!
//! No Stripe emulator on the registries handles the invoice flow (see docs/testing.md), so this
//! is one: an axum server on `127.0.0.1:0` that speaks Stripe's form-encoded requests and
//! JSON error shapes for exactly the endpoints `tally-stripe` calls
//! (`POST /v1/customers`, `/v1/invoices`, `/v1/invoiceitems`,
//! `/v1/invoices/{id}/finalize`, the paginated lists `GET /v1/invoices?customer=…` and
//! `GET /v1/invoiceitems?invoice=…`, newest first, with `limit`, `starting_after` and
//! `has_more`, and the customer search `GET /v1/customers/search?query=metadata['k']:'v'`,
//! one page, newest first, over the stored customers' metadata, without Stripe's index
//! lag), keeps customers, invoices and items in memory, and
//! implements Stripe's idempotency keys: the same key with the same request replays the first
//! answer, the same key with a different request is a `400 idempotency_error`. Results are
//! stored only for requests that executed (as Stripe does), so an injected fault before
//! execution leaves the key free. Reads (`GET`) are never stored under a key.
//! [`StripeDouble::forget_idempotency_keys`] drops every stored key, as Stripe does after
//! 24 hours, so tests can show a rerun after that still creates nothing twice.
//!
//! Faults ([`Fault`]) are injected one at a time ([`StripeDouble::push_fault`]) or at random
//! ([`StripeDouble::set_chaos`]): a 500, a 429 with `Retry-After`, a hang past the client's
//! timeout (nothing applied), and "applied but the answer lost" (the request executes and its
//! result is stored under the key, then the client gets a 500).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The secret key the double accepts.
pub const DOUBLE_SECRET_KEY: &str = "sk_test_double";

/// One injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `500 api_error`, nothing applied.
    ServerError,
    /// `429 rate_limit` with `Retry-After: <secs>`, nothing applied.
    RateLimited {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// Hangs for this long before answering 500; nothing applied. Make it longer than the
    /// client's timeout.
    Hang(Duration),
    /// The request is applied (and its result stored under its idempotency key), then the
    /// client gets a 500 instead of the answer.
    LostResponse,
    /// No fault: the request goes through. Queued ahead of another fault, it aims that one
    /// at a later request.
    Pass,
    /// `400 invalid_request_error` with this message, nothing applied: Stripe refusing a
    /// request outright (a feature the account does not have, a bad parameter).
    Refused(&'static str),
}

/// An invoice item as the double holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemView {
    /// `ii_…`.
    pub id: String,
    /// Minor units.
    pub amount: i64,
    /// As sent.
    pub description: String,
    /// `metadata[…]` as sent.
    pub metadata: BTreeMap<String, String>,
}

/// An invoice as the double holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceView {
    /// `in_…`.
    pub id: String,
    /// `cus_…`.
    pub customer: String,
    /// `draft`, `open` or `paid`.
    pub status: String,
    /// Sum of the items, set at finalize.
    pub total: i64,
    /// `metadata[…]` as sent.
    pub metadata: BTreeMap<String, String>,
    /// The items attached to it, in creation order.
    pub items: Vec<ItemView>,
}

#[derive(Default)]
struct Stored {
    method_path: String,
    /// The body as sent. Compared byte for byte, which is stricter than Stripe (it compares
    /// parameters): a client whose retries reorder parameters is caught here.
    body: String,
    status: u16,
    answer: Value,
}

struct Chaos {
    rate: f64,
    rng: StdRng,
    hang: Duration,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    customers: BTreeMap<String, Value>,
    invoices: BTreeMap<String, InvoiceView>,
    items: BTreeMap<String, (String, ItemView)>,
    keys: HashMap<String, Stored>,
    queued: VecDeque<Fault>,
    chaos: Option<Chaos>,
    requests: u64,
    faults_injected: BTreeMap<&'static str, u64>,
}

/// The running double. Dropping it stops the server.
pub struct StripeDouble {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    server: JoinHandle<()>,
}

impl Drop for StripeDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl StripeDouble {
    /// Starts the double on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            inner,
            server,
        })
    }

    /// The base URL to configure the client with (ends in `/`).
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Makes the next request fail this way (queued faults go before random ones).
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.inner).queued.push_back(fault);
    }

    /// Injects a random fault of a random kind into each request with probability `rate`;
    /// hangs last `hang`. Seeded, so a failing run can be replayed.
    pub fn set_chaos(&self, rate: f64, seed: u64, hang: Duration) {
        lock(&self.inner).chaos = Some(Chaos {
            rate,
            rng: StdRng::seed_from_u64(seed),
            hang,
        });
    }

    /// Forgets every idempotency key, as Stripe does 24 hours after a key's first use: a
    /// request repeated with an old key executes again.
    pub fn forget_idempotency_keys(&self) {
        lock(&self.inner).keys.clear();
    }

    /// Stops injecting random faults.
    pub fn clear_chaos(&self) {
        let mut inner = lock(&self.inner);
        inner.chaos = None;
        inner.queued.clear();
    }

    /// Every invoice, by id.
    pub fn invoices(&self) -> Vec<InvoiceView> {
        lock(&self.inner).invoices.values().cloned().collect()
    }

    /// How many customers exist.
    pub fn customer_count(&self) -> usize {
        lock(&self.inner).customers.len()
    }

    /// How many requests arrived, and how many faults of each kind were injected.
    pub fn stats(&self) -> (u64, BTreeMap<&'static str, u64>) {
        let inner = lock(&self.inner);
        (inner.requests, inner.faults_injected.clone())
    }
}

/// Stripe's error shape.
fn error(status: StatusCode, kind: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"type": kind, "message": message}}))
}

/// The answer, or, under [`Fault::LostResponse`], a 500 in its place: the request took
/// effect but the client never learns how.
fn answer_unless_lost(fault: Option<Fault>, status: StatusCode, answer: Value) -> Response {
    if fault == Some(Fault::LostResponse) {
        let (s, b) = error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "An unknown error occurred",
        );
        return respond(s, b);
    }
    respond(status, answer)
}

fn respond(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Decodes `application/x-www-form-urlencoded` (Stripe's nested keys stay as sent, e.g.
/// `metadata[tally_org]`).
fn parse_form(body: &str) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {DOUBLE_SECRET_KEY}"));
    if !auth_ok {
        let (s, b) = error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided",
        );
        return respond(s, b);
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let params = parse_form(&body);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method_path = format!("{method} {}", uri.path());

    // Pick a fault, if any, before anything executes.
    let fault = {
        let mut g = lock(&inner);
        g.requests += 1;
        let fault = g.queued.pop_front().or_else(|| {
            let chaos = g.chaos.as_mut()?;
            if chaos.rng.random::<f64>() >= chaos.rate {
                return None;
            }
            Some(match chaos.rng.random_range(0..4) {
                0 => Fault::ServerError,
                1 => Fault::RateLimited {
                    retry_after_secs: chaos.rng.random_range(1..=3),
                },
                2 => Fault::Hang(chaos.hang),
                _ => Fault::LostResponse,
            })
        });
        let name = match fault {
            None | Some(Fault::Pass) => None,
            Some(Fault::ServerError) => Some("500"),
            Some(Fault::RateLimited { .. }) => Some("429"),
            Some(Fault::Hang(_)) => Some("timeout"),
            Some(Fault::LostResponse) => Some("lost_response"),
            Some(Fault::Refused(_)) => Some("400"),
        };
        if let Some(name) = name {
            *g.faults_injected.entry(name).or_default() += 1;
        }
        fault
    };
    match fault {
        Some(Fault::ServerError) => {
            let (s, b) = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "An unknown error occurred",
            );
            return respond(s, b);
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            let (s, b) = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Too many requests hit the API too quickly.",
            );
            let mut r = respond(s, b);
            if let Ok(v) = retry_after_secs.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            return r;
        }
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            let (s, b) = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "Request timed out",
            );
            return respond(s, b);
        }
        Some(Fault::Refused(message)) => {
            let (s, b) = error(StatusCode::BAD_REQUEST, "invalid_request_error", message);
            return respond(s, b);
        }
        Some(Fault::LostResponse | Fault::Pass) | None => {}
    }

    let mut g = lock(&inner);
    if method == Method::GET {
        let query = parse_form(uri.query().unwrap_or(""));
        let (status, answer) = list(&g, uri.path(), &query);
        drop(g);
        return answer_unless_lost(fault, status, answer);
    }
    let (status, answer) = match key.as_ref().and_then(|k| g.keys.get(k)) {
        Some(stored) if stored.method_path == method_path && stored.body == body => (
            StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
            stored.answer.clone(),
        ),
        Some(_) => error(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
        ),
        None => {
            let (status, answer) = execute(&mut g, &method, uri.path(), &params);
            if let Some(k) = key {
                g.keys.insert(
                    k,
                    Stored {
                        method_path,
                        body,
                        status: status.as_u16(),
                        answer: answer.clone(),
                    },
                );
            }
            (status, answer)
        }
    };
    drop(g);
    answer_unless_lost(fault, status, answer)
}

/// The double's clock for `created`: a fixed start plus the id counter, so every object is
/// strictly younger than the one created before it (Stripe's whole seconds can tie).
fn created(g: &Inner) -> i64 {
    1_790_000_000 + g.next_id as i64
}

fn new_id(g: &mut Inner, prefix: &str) -> String {
    g.next_id += 1;
    format!("{prefix}_{:014}", g.next_id)
}

fn metadata(form: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    form.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
                .map(|k| (k.to_owned(), v.clone()))
        })
        .collect()
}

/// The hosted page the double gives a finalized invoice, shaped like Stripe's.
pub fn hosted_invoice_url(invoice: &str) -> String {
    format!("https://invoice.stripe.com/i/acct_double/{invoice}")
}

fn invoice_json(inv: &InvoiceView) -> Value {
    json!({
        "id": inv.id,
        "object": "invoice",
        "customer": inv.customer,
        "status": inv.status,
        "total": inv.total,
        "amount_due": inv.total,
        "currency": "usd",
        "metadata": inv.metadata,
        // Stripe sets it once an invoice is finalized; a draft has none.
        "hosted_invoice_url": (inv.status != "draft").then(|| hosted_invoice_url(&inv.id)),
        "lines": {"object": "list", "data": inv.items.iter().map(|i| json!({"id": i.id, "amount": i.amount})).collect::<Vec<_>>()},
    })
}

fn item_json(invoice: &str, item: &ItemView) -> Value {
    json!({
        "id": item.id,
        "object": "invoiceitem",
        "amount": item.amount,
        "invoice": invoice,
        "description": item.description,
        "metadata": item.metadata,
    })
}

/// One page of a list, Stripe style: newest first, `limit` (default 10, at most 100),
/// `starting_after` an id of the previous page.
fn page(all: Vec<(String, Value)>, query: &BTreeMap<String, String>) -> (StatusCode, Value) {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "Invalid limit: must be between 1 and 100",
            );
        }
    };
    let mut rest: Vec<(String, Value)> = all.into_iter().rev().collect();
    if let Some(after) = query.get("starting_after") {
        let Some(pos) = rest.iter().position(|(id, _)| id == after) else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("No such object: '{after}'"),
            );
        };
        rest.drain(..=pos);
    }
    let has_more = rest.len() > limit;
    let data: Vec<Value> = rest.into_iter().take(limit).map(|(_, v)| v).collect();
    (
        StatusCode::OK,
        json!({"object": "list", "data": data, "has_more": has_more}),
    )
}

/// `GET /v1/invoices?customer=…` and `GET /v1/invoiceitems?invoice=…`. Ids grow with
/// creation, so id order is creation order.
fn list(g: &Inner, path: &str, query: &BTreeMap<String, String>) -> (StatusCode, Value) {
    match path {
        "/v1/invoices" => {
            let all = g
                .invoices
                .values()
                .filter(|i| query.get("customer").is_none_or(|c| *c == i.customer))
                .map(|i| (i.id.clone(), invoice_json(i)))
                .collect();
            page(all, query)
        }
        "/v1/invoiceitems" => {
            let all = g
                .items
                .iter()
                .filter(|(_, (inv, _))| query.get("invoice").is_none_or(|i| i == inv))
                .map(|(id, (inv, item))| (id.clone(), item_json(inv, item)))
                .collect();
            page(all, query)
        }
        "/v1/customers/search" => search_customers(g, query),
        _ => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!("Unrecognized request URL (GET: {path})."),
        ),
    }
}

/// `GET /v1/customers/search?query=metadata['<key>']:'<value>'`: the customers whose
/// metadata holds exactly that, newest first (Stripe promises no order, and newest first
/// catches a client that takes the first hit for the oldest), in Stripe's shape. Only the
/// one clause Tally sends is understood; any other query is a `400`, as a malformed one is
/// at Stripe.
fn search_customers(g: &Inner, query: &BTreeMap<String, String>) -> (StatusCode, Value) {
    let invalid = |m: &str| error(StatusCode::BAD_REQUEST, "invalid_request_error", m);
    if let Some(l) = query.get("limit")
        && !l.parse::<usize>().is_ok_and(|l| (1..=100).contains(&l))
    {
        return invalid("Invalid limit: must be between 1 and 100");
    }
    let Some(q) = query.get("query") else {
        return invalid("Missing required param: query.");
    };
    let Some((key, value)) = metadata_clause(q) else {
        return invalid(&format!("Invalid search query: {q}"));
    };
    let data: Vec<Value> = g
        .customers
        .values()
        .rev()
        .filter(|c| c["metadata"][&key].as_str() == Some(value.as_str()))
        .cloned()
        .collect();
    (
        StatusCode::OK,
        json!({
            "object": "search_result",
            "url": "/v1/customers/search",
            "data": data,
            "has_more": false,
            "next_page": null,
        }),
    )
}

/// Reads `metadata['<key>']:'<value>'` (either quote, a backslash escaping the next
/// character), as Stripe's search query language does.
fn metadata_clause(q: &str) -> Option<(String, String)> {
    let rest = q.trim().strip_prefix("metadata[")?;
    let (key, rest) = quoted(rest)?;
    let (value, rest) = quoted(rest.strip_prefix("]:")?)?;
    rest.trim().is_empty().then_some((key, value))
}

/// A quoted string literal at the start of `s`, unescaped, and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    let (_, quote) = chars.next().filter(|(_, c)| *c == '\'' || *c == '"')?;
    let mut out = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Some((out, &s[i + c.len_utf8()..]));
        } else {
            out.push(c);
        }
    }
    None
}

fn missing(param: &str) -> (StatusCode, Value) {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        &format!("Missing required param: {param}."),
    )
}

fn execute(
    g: &mut Inner,
    method: &Method,
    path: &str,
    form: &BTreeMap<String, String>,
) -> (StatusCode, Value) {
    if *method != Method::POST {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!("Unrecognized request URL ({method}: {path})."),
        );
    }
    match path {
        "/v1/customers" => {
            let id = new_id(g, "cus");
            let c = json!({
                "id": id,
                "object": "customer",
                "created": created(g),
                "name": form.get("name"),
                "metadata": metadata(form),
            });
            g.customers.insert(id, c.clone());
            (StatusCode::OK, c)
        }
        "/v1/invoices" => {
            let Some(customer) = form.get("customer") else {
                return missing("customer");
            };
            if !g.customers.contains_key(customer) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("No such customer: '{customer}'"),
                );
            }
            let id = new_id(g, "in");
            let inv = InvoiceView {
                id: id.clone(),
                customer: customer.clone(),
                status: "draft".to_owned(),
                total: 0,
                metadata: metadata(form),
                items: Vec::new(),
            };
            let answer = invoice_json(&inv);
            g.invoices.insert(id, inv);
            (StatusCode::OK, answer)
        }
        "/v1/invoiceitems" => {
            let Some(invoice) = form.get("invoice") else {
                return missing("invoice");
            };
            let Some(amount) = form.get("amount") else {
                return missing("amount");
            };
            let Ok(amount) = amount.parse::<i64>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "Invalid integer: amount",
                );
            };
            let id = new_id(g, "ii");
            let Some(inv) = g.invoices.get_mut(invoice) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("No such invoice: '{invoice}'"),
                );
            };
            if form.get("customer").is_some_and(|c| *c != inv.customer) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "The invoice belongs to another customer.",
                );
            }
            if inv.status != "draft" {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "You can only add invoice items to draft invoices.",
                );
            }
            let item = ItemView {
                id: id.clone(),
                amount,
                description: form.get("description").cloned().unwrap_or_default(),
                metadata: metadata(form),
            };
            inv.items.push(item.clone());
            let answer = item_json(invoice, &item);
            g.items.insert(id, (invoice.clone(), item));
            (StatusCode::OK, answer)
        }
        _ => {
            let Some(invoice) = path
                .strip_prefix("/v1/invoices/")
                .and_then(|p| p.strip_suffix("/finalize"))
            else {
                return error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    &format!("Unrecognized request URL (POST: {path})."),
                );
            };
            let Some(inv) = g.invoices.get_mut(invoice) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    &format!("No such invoice: '{invoice}'"),
                );
            };
            if inv.status != "draft" {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "This invoice is already finalized.",
                );
            }
            inv.total = inv.items.iter().map(|i| i.amount).sum();
            inv.status = if inv.total == 0 { "paid" } else { "open" }.to_owned();
            (StatusCode::OK, invoice_json(inv))
        }
    }
}
