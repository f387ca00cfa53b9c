//! Tally's Stripe adapter: [`StripeProvider`] implements core's
//! [`InvoiceProvider`](tally_core::ports::InvoiceProvider) port against Stripe's API (or the
//! test double in `tally-tests`, through [`StripeConfig::base_url`]).
//!
//! Requests are async-stripe 1.0's request types (`CreateCustomer`, `CreateInvoice`,
//! `CreateInvoiceItem`, `FinalizeInvoiceInvoice`, and `SearchCustomer` / `ListInvoice` /
//! `ListInvoiceItem` to find what an earlier run created once Stripe forgot its idempotency
//! keys), so the form encoding is Stripe's own bindings'. Writes carry the idempotency key;
//! reads carry none (a read has nothing to replay, and a replayed read would be stale).
//! The transport is this crate's: async-stripe's client retries by itself and drops the
//! `Retry-After` header, while the sync must decide retries itself (with the same
//! idempotency key) and honour `Retry-After`. Each request is sent once, with a timeout,
//! and its failure sorted into [`ProviderError::Retryable`] (429, 5xx, timeouts, a
//! connection lost before the answer) or [`ProviderError::Fatal`] (any other 4xx, with
//! Stripe's message). Responses are read into the few fields Tally uses, so fields Stripe
//! adds never break a sync.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use stripe_client_core::{RequestBuilder, StripeMethod, StripeRequest};
use tally_core::ports::{
    FinalizedInvoice, IdempotencyKey, InvoiceProvider, NewCustomer, NewInvoice, NewInvoiceItem,
    ProviderError, ProviderId,
};
use tally_core::{Month, OrgId};

/// Stripe's API address.
pub const STRIPE_API_BASE: &str = "https://api.stripe.com/";

/// The Stripe API version the async-stripe request types were generated for, sent on every
/// request so the account's default version cannot change the shapes under them.
pub fn stripe_api_version() -> &'static str {
    stripe_client_core::VERSION.as_str()
}

/// Longest answer body read; Stripe's objects for these calls are a few KB.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// How to reach Stripe.
#[derive(Clone)]
pub struct StripeConfig {
    /// The secret key (`sk_test_…`, `sk_live_…`).
    pub secret_key: String,
    /// Where the API lives, ending in `/`: [`STRIPE_API_BASE`], or the test double's address.
    pub base_url: String,
    /// How long one request may take before it counts as a (retryable) timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret key.
        f.debug_struct("StripeConfig")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What can go wrong building the client.
#[derive(Debug, thiserror::Error)]
pub enum StripeConfigError {
    /// The base URL is not an `http://` or `https://` URL ending in `/`.
    #[error("base_url must be an http(s) URL ending in '/': {0:?}")]
    BaseUrl(String),
    /// The secret key is empty or holds characters a header cannot carry.
    #[error("secret_key must be a non-empty printable ASCII string")]
    SecretKey,
}

/// The Stripe adapter. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct StripeProvider {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    auth: HeaderValue,
    base_url: String,
    timeout: Duration,
}

impl std::fmt::Debug for StripeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeProvider")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl StripeProvider {
    /// Builds the client (TLS with the webpki roots; plain HTTP allowed for a loopback double).
    pub fn new(config: StripeConfig) -> Result<Self, StripeConfigError> {
        let url = &config.base_url;
        if !(url.starts_with("https://") || url.starts_with("http://")) || !url.ends_with('/') {
            return Err(StripeConfigError::BaseUrl(url.clone()));
        }
        if config.secret_key.is_empty() {
            return Err(StripeConfigError::SecretKey);
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", config.secret_key))
            .map_err(|_| StripeConfigError::SecretKey)?;
        auth.set_sensitive(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            auth,
            base_url: config.base_url,
            timeout: config.timeout,
        })
    }

    /// Sends one request once and returns the answer's body, or the classified error.
    async fn send(
        &self,
        req: RequestBuilder,
        key: Option<&IdempotencyKey>,
    ) -> Result<Bytes, ProviderError> {
        let mut uri = format!("{}v1{}", self.base_url, req.path);
        if let Some(q) = &req.query {
            uri.push('?');
            uri.push_str(q);
        }
        let method = match req.method {
            StripeMethod::Get => Method::GET,
            StripeMethod::Post => Method::POST,
            StripeMethod::Delete => Method::DELETE,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(AUTHORIZATION, self.auth.clone())
            .header("stripe-version", stripe_api_version());
        if let Some(key) = key {
            request = request.header("idempotency-key", key.as_str());
        }
        let request = request
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(req.body.unwrap_or_default())))
            .map_err(|e| ProviderError::Fatal {
                status: 0,
                message: format!("could not build the request to {uri}: {e}"),
            })?;
        let attempt = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| ProviderError::Retryable {
                        reason: format!("request failed: {e}"),
                        retry_after: None,
                    })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ProviderError::Retryable {
                    reason: format!("answer lost ({status}): {e}"),
                    retry_after: None,
                })?
                .to_bytes();
            Ok((status, retry_after, body))
        };
        let (status, retry_after, body) = tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| ProviderError::Retryable {
                reason: format!("no answer within {:?}", self.timeout),
                retry_after: None,
            })??;
        classify(status, retry_after, body)
    }
}

/// Stripe's error body: `{"error": {"type": …, "message": …}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
) -> Result<Bytes, ProviderError> {
    if status.is_success() {
        return Ok(body);
    }
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .ok()
        .map(|b| {
            format!(
                "{}{}",
                b.error.kind.map(|k| format!("{k}: ")).unwrap_or_default(),
                b.error.message.unwrap_or_default()
            )
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Err(ProviderError::Retryable {
            reason: format!("{status}: {message}"),
            retry_after,
        })
    } else {
        Err(ProviderError::Fatal {
            status: status.as_u16(),
            message,
        })
    }
}

/// The fields of a Stripe object Tally reads.
#[derive(Deserialize)]
struct Object {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    total: Option<i64>,
    /// Set on finalized invoices: the page the customer pays at.
    #[serde(default)]
    hosted_invoice_url: Option<String>,
}

fn object(body: &Bytes) -> Result<(ProviderId, Object), ProviderError> {
    let obj: Object = serde_json::from_slice(body).map_err(|e| ProviderError::Retryable {
        // A truncated or garbled answer: the same key replays the real one.
        reason: format!("unreadable answer: {e}"),
        retry_after: None,
    })?;
    let id = ProviderId::new(&obj.id).ok_or_else(|| ProviderError::Retryable {
        reason: "answer without an id".to_owned(),
        retry_after: None,
    })?;
    Ok((id, obj))
}

#[async_trait]
impl InvoiceProvider for StripeProvider {
    async fn create_customer(
        &self,
        customer: &NewCustomer,
        key: &IdempotencyKey,
    ) -> Result<ProviderId, ProviderError> {
        let req = stripe_core::customer::CreateCustomer::new()
            .name(customer.name.clone())
            .metadata(HashMap::from([(
                CUSTOMER_METADATA_KEY.to_owned(),
                customer.org.as_str().to_owned(),
            )]));
        let body = self.send(req.build(), Some(key)).await?;
        Ok(object(&body)?.0)
    }

    /// Customer search (`GET /v1/customers/search`), every page. Stripe's search index lags
    /// writes by up to about a minute (longer during its outages), which does not matter
    /// here: the sync only searches before creating a customer its ledger lacks, and within
    /// Stripe's 24 hours the creation's idempotency key replays the first answer anyway,
    /// while after 24 hours the index has long caught up. Search results come in no set
    /// order, so all pages are read before picking the oldest.
    async fn find_customer(&self, org: &OrgId) -> Result<Option<ProviderId>, ProviderError> {
        let query = format!(
            "metadata[{}]:{}",
            search_quoted(CUSTOMER_METADATA_KEY)?,
            search_quoted(org.as_str())?
        );
        let mut found: Vec<Searched> = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut req =
                stripe_core::customer::SearchCustomer::new(query.clone()).limit(LIST_PAGE_SIZE);
            if let Some(n) = &next {
                req = req.page(n.as_str());
            }
            let body = self.send(req.build(), None).await?;
            let page: SearchPage =
                serde_json::from_slice(&body).map_err(|e| ProviderError::Retryable {
                    reason: format!("unreadable search answer: {e}"),
                    retry_after: None,
                })?;
            // The query is an exact match, but check: adopting another org's customer
            // would bill the wrong account.
            found.extend(page.data.into_iter().filter(|c| {
                c.metadata.get(CUSTOMER_METADATA_KEY).map(String::as_str) == Some(org.as_str())
            }));
            match (page.has_more, page.next_page) {
                (true, Some(n)) => next = Some(n),
                _ => return oldest_customer(org, found),
            }
        }
        Err(too_many_pages("customers"))
    }

    async fn create_draft_invoice(
        &self,
        invoice: &NewInvoice,
        key: &IdempotencyKey,
    ) -> Result<ProviderId, ProviderError> {
        use stripe_billing::invoice::{CreateInvoice, CreateInvoicePendingInvoiceItemsBehavior};
        let req = CreateInvoice::new()
            .customer(invoice.customer.as_str())
            .currency(currency(&invoice.currency))
            .auto_advance(false)
            .collection_method(stripe_shared::InvoiceCollectionMethod::SendInvoice)
            .days_until_due(30u32)
            .pending_invoice_items_behavior(CreateInvoicePendingInvoiceItemsBehavior::Exclude)
            .description(invoice.description.clone())
            // One entry: a HashMap of several would serialize in a different order on a
            // retry, and the same idempotency key with different parameters is refused.
            .metadata(HashMap::from([(
                INVOICE_METADATA_KEY.to_owned(),
                invoice_metadata(&invoice.org, invoice.period),
            )]));
        let body = self.send(req.build(), Some(key)).await?;
        Ok(object(&body)?.0)
    }

    async fn add_invoice_item(
        &self,
        item: &NewInvoiceItem,
        key: &IdempotencyKey,
    ) -> Result<ProviderId, ProviderError> {
        let req = stripe_billing::invoice_item::CreateInvoiceItem::new()
            .customer(item.customer.as_str())
            .invoice(item.invoice.as_str())
            .amount(item.amount_minor)
            .currency(currency(&item.currency))
            .description(item.description.clone())
            .metadata(HashMap::from([(
                "tally_step".to_owned(),
                item.step.clone(),
            )]));
        let body = self.send(req.build(), Some(key)).await?;
        Ok(object(&body)?.0)
    }

    async fn finalize_invoice(
        &self,
        invoice: &ProviderId,
        key: &IdempotencyKey,
    ) -> Result<FinalizedInvoice, ProviderError> {
        let req = stripe_billing::invoice::FinalizeInvoiceInvoice::new(invoice.as_str())
            .auto_advance(false);
        let body = self.send(req.build(), Some(key)).await?;
        let (id, obj) = object(&body)?;
        Ok(FinalizedInvoice {
            id,
            status: obj.status.unwrap_or_default(),
            total_minor: obj.total.unwrap_or_default(),
            // A URL that is not a plain https page is not shown to customers; the invoice
            // itself is still finalized and recorded.
            hosted_url: obj
                .hosted_invoice_url
                .as_deref()
                .and_then(tally_core::ports::hosted_url),
        })
    }

    async fn find_invoice(
        &self,
        customer: &ProviderId,
        org: &OrgId,
        period: Month,
    ) -> Result<Option<ProviderId>, ProviderError> {
        let want = invoice_metadata(org, period);
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut req = stripe_billing::invoice::ListInvoice::new()
                .customer(customer.as_str())
                .limit(LIST_PAGE_SIZE);
            if let Some(a) = &after {
                req = req.starting_after(a.as_str());
            }
            let page = list_page(&self.send(req.build(), None).await?)?;
            if let Some(found) = page
                .data
                .iter()
                .find(|o| o.metadata.get(INVOICE_METADATA_KEY) == Some(&want))
            {
                return Ok(Some(list_id(&found.id)?));
            }
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => after = Some(last.id.clone()),
                _ => return Ok(None),
            }
        }
        Err(too_many_pages("invoices"))
    }

    async fn list_invoice_items(
        &self,
        invoice: &ProviderId,
    ) -> Result<Vec<(ProviderId, Option<String>)>, ProviderError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut req = stripe_billing::invoice_item::ListInvoiceItem::new()
                .invoice(invoice.as_str())
                .limit(LIST_PAGE_SIZE);
            if let Some(a) = &after {
                req = req.starting_after(a.as_str());
            }
            let page = list_page(&self.send(req.build(), None).await?)?;
            for o in &page.data {
                out.push((list_id(&o.id)?, o.metadata.get(STEP_METADATA_KEY).cloned()));
            }
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => after = Some(last.id.clone()),
                _ => return Ok(out),
            }
        }
        Err(too_many_pages("invoice items"))
    }
}

/// Default per-request timeout against Stripe.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The customer metadata key naming Tally's org; [`InvoiceProvider::find_customer`] searches
/// on it.
pub const CUSTOMER_METADATA_KEY: &str = "tally_org";

/// The invoice metadata key naming Tally's (org, period); the webhook reads it too.
pub const INVOICE_METADATA_KEY: &str = "tally_invoice";

/// The invoice item metadata key naming the sync step that added the item.
pub const STEP_METADATA_KEY: &str = "tally_step";

/// Objects per list page (Stripe's maximum).
const LIST_PAGE_SIZE: i64 = 100;

/// Pages read before giving up: 10,000 invoices of one customer, or items of one invoice,
/// is far beyond anything Tally creates.
const MAX_LIST_PAGES: usize = 100;

/// `<org>:<YYYY-MM>`, the value of [`INVOICE_METADATA_KEY`].
fn invoice_metadata(org: &OrgId, period: Month) -> String {
    format!("{}:{}", org.as_str(), period)
}

/// One page of a Stripe list: `{"data": [...], "has_more": bool}`.
#[derive(Deserialize)]
struct ListPage {
    data: Vec<Listed>,
    #[serde(default)]
    has_more: bool,
}

#[derive(Deserialize)]
struct Listed {
    id: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

/// One page of a Stripe search: `{"object": "search_result", "data": [...], "has_more": bool,
/// "next_page": "…"}`.
#[derive(Deserialize)]
struct SearchPage {
    data: Vec<Searched>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    next_page: Option<String>,
}

#[derive(Deserialize)]
struct Searched {
    id: String,
    /// Unix seconds.
    #[serde(default)]
    created: i64,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

/// A string literal of Stripe's search query language: single-quoted, with `\` and `'`
/// escaped by a backslash. Control characters have no escape there, so they are refused
/// rather than sent (org ids never hold them; this guards the query, not the ids).
fn search_quoted(value: &str) -> Result<String, ProviderError> {
    if value.chars().any(char::is_control) {
        return Err(ProviderError::Fatal {
            status: 0,
            message: format!("cannot search for {value:?}: it holds a control character"),
        });
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    Ok(out)
}

/// The oldest of the org's customers (by `created`, then id, so every run picks the same
/// one); warns when there are several, since the others are duplicates someone should
/// delete in Stripe's dashboard.
fn oldest_customer(
    org: &OrgId,
    mut found: Vec<Searched>,
) -> Result<Option<ProviderId>, ProviderError> {
    found.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let Some(oldest) = found.first() else {
        return Ok(None);
    };
    if found.len() > 1 {
        let others: Vec<&str> = found[1..].iter().map(|c| c.id.as_str()).collect();
        tracing::warn!(
            org = org.as_str(),
            adopted = oldest.id.as_str(),
            ?others,
            "several Stripe customers carry this org; adopting the oldest"
        );
    }
    Ok(Some(list_id(&oldest.id)?))
}

fn list_page(body: &Bytes) -> Result<ListPage, ProviderError> {
    serde_json::from_slice(body).map_err(|e| ProviderError::Retryable {
        reason: format!("unreadable list answer: {e}"),
        retry_after: None,
    })
}

fn list_id(id: &str) -> Result<ProviderId, ProviderError> {
    ProviderId::new(id).ok_or_else(|| ProviderError::Retryable {
        reason: "a listed object without an id".to_owned(),
        retry_after: None,
    })
}

/// The Stripe currency of an ISO code as Tally writes it (`usd`); one Stripe does not know
/// is billed in US dollars.
fn currency(code: &str) -> stripe_types::Currency {
    code.parse().unwrap_or(stripe_types::Currency::USD)
}

fn too_many_pages(what: &str) -> ProviderError {
    ProviderError::Fatal {
        status: 0,
        message: format!("more than {MAX_LIST_PAGES} pages of {what}; refusing to read on"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_are_sorted_into_retryable_and_fatal() {
        let body = |m: &str| Bytes::from(format!(r#"{{"error":{{"type":"t","message":"{m}"}}}}"#));
        let secs = Some(Duration::from_secs(3));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, secs, body("slow down")),
            Err(ProviderError::Retryable {
                reason: "429 Too Many Requests: t: slow down".into(),
                retry_after: secs
            })
        );
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, Bytes::from("<html>")),
            Err(ProviderError::Retryable { .. })
        ));
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, None, body("No such customer")),
            Err(ProviderError::Fatal {
                status: 400,
                message: "t: No such customer".into()
            })
        );
        assert_eq!(
            classify(StatusCode::OK, None, Bytes::from("{}")).unwrap(),
            Bytes::from("{}")
        );
    }

    #[test]
    fn search_values_are_quoted_and_escaped() {
        assert_eq!(search_quoted("org_abc123").unwrap(), "'org_abc123'");
        assert_eq!(search_quoted(r"a'b\c").unwrap(), r"'a\'b\\c'");
        assert!(matches!(
            search_quoted("a\nb"),
            Err(ProviderError::Fatal { status: 0, .. })
        ));
    }

    #[test]
    fn the_oldest_of_several_customers_is_adopted() {
        let org = OrgId::parse("org_dup").unwrap();
        let c = |id: &str, created: i64| Searched {
            id: id.into(),
            created,
            metadata: HashMap::new(),
        };
        assert_eq!(oldest_customer(&org, Vec::new()).unwrap(), None);
        let got = oldest_customer(&org, vec![c("cus_b", 20), c("cus_z", 10), c("cus_a", 20)]);
        assert_eq!(got.unwrap(), ProviderId::new("cus_z"));
        // A tie on `created` (whole seconds) goes to the smaller id, the same every run.
        let got = oldest_customer(&org, vec![c("cus_b", 10), c("cus_a", 10)]);
        assert_eq!(got.unwrap(), ProviderId::new("cus_a"));
    }

    #[test]
    fn config_is_checked_and_the_key_never_printed() {
        let config = |url: &str, key: &str| StripeConfig {
            secret_key: key.into(),
            base_url: url.into(),
            timeout: Duration::from_secs(1),
        };
        assert!(StripeProvider::new(config("ftp://x/", "sk_test_1")).is_err());
        assert!(StripeProvider::new(config("https://x", "sk_test_1")).is_err());
        assert!(StripeProvider::new(config(STRIPE_API_BASE, "")).is_err());
        assert!(StripeProvider::new(config(STRIPE_API_BASE, "sk\ntest")).is_err());
        let p = StripeProvider::new(config(STRIPE_API_BASE, "sk_test_secret")).unwrap();
        assert!(
            !format!("{p:?}{:?}", config(STRIPE_API_BASE, "sk_test_secret")).contains("secret")
        );
    }
}
