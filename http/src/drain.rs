//! Early refusals without connection resets: [`drain_unread_body`], the middleware every
//! Tally router runs outermost.
//!
//! A handler may answer before it has read the request body: a `401`/`403`/`429` from an
//! extractor that runs before the body one, a `413` after the first [`MAX_BODY_BYTES`]
//! (`crate::events`), a `404`. hyper then closes the connection with the rest of the body
//! still unread in the socket, and Linux answers unread bytes with a TCP reset: a client
//! still uploading sees `ECONNRESET`/`EPIPE` and may never read the answer it was given.
//!
//! The middleware lends the handler the body through a counter. When the answer is ready and
//! the body was not read to its end, the answer goes out at once and a background task reads
//! and discards the rest (a "lingering close", as nginx does), within two bounds:
//!
//! - at most [`DRAIN_MAX_BYTES`] (8 MiB) more bytes, and
//! - at most [`DRAIN_MAX_TIME`] (10 s) from the answer.
//!
//! When the declared rest (`Content-Length` minus what the handler read) fits the byte bound,
//! the answer keeps the connection alive, and once the rest is read the same connection
//! takes the next request. When it does not fit, or the body is chunked (its length is not
//! known), the answer says `Connection: close`; the task still reads up to the bounds, which
//! gives a client that reads while it sends time to read the answer and stop, then the
//! connection is closed. A client that waits for `100 Continue` and was never asked for its
//! body (`Expect: 100-continue`, body not polled) is not asked now: the answer says
//! `Connection: close` and nothing is read.
//!
//! Why this cannot be abused: the drained bytes are discarded as they arrive (no memory is
//! held), each refused request costs at most [`DRAIN_MAX_BYTES`] of reading and
//! [`DRAIN_MAX_TIME`] of one connection, and a request the handler accepts costs more than
//! that already (it reads up to [`MAX_BODY_BYTES`] and parses it). A client that sends more
//! than the bounds after a refusal is cut off as before.
//!
//! [`MAX_BODY_BYTES`]: crate::events::MAX_BODY_BYTES

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, EXPECT};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// Most bytes of a request body read and discarded after an answer given before the body was
/// read to its end (8 × the 1 MiB event body limit).
pub const DRAIN_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// Longest the rest of such a body is read after the answer.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);

/// Counter of request bodies left unread by an answer, labelled `outcome`: `drained` (read
/// to the end; the connection lives on), `cut` (past [`DRAIN_MAX_BYTES`], past
/// [`DRAIN_MAX_TIME`] or a broken body; the connection is closed), `not_asked`
/// (`Expect: 100-continue` and never asked for; the connection is closed).
pub const METRIC_UNREAD_BODIES: &str = "tally_http_unread_bodies_total";

/// The bounds of a drain. [`DrainLimits::default`] is [`DRAIN_MAX_BYTES`] and
/// [`DRAIN_MAX_TIME`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainLimits {
    /// Most bytes read after the answer.
    pub max_bytes: u64,
    /// Longest reading after the answer.
    pub max_time: Duration,
}

impl Default for DrainLimits {
    fn default() -> Self {
        DrainLimits {
            max_bytes: DRAIN_MAX_BYTES,
            max_time: DRAIN_MAX_TIME,
        }
    }
}

/// Marks a request whose body an outer [`drain_unread_body`] already watches, so a router
/// that runs the middleware inside another that does (ingest inside `tally serve`) watches
/// it once.
#[derive(Debug, Clone, Copy)]
struct Watched;

/// Middleware (`axum::middleware::from_fn`) with the default [`DrainLimits`]: see the
/// module doc.
pub async fn drain_unread_body(request: Request, next: Next) -> Response {
    drain_unread_body_within(DrainLimits::default(), request, next).await
}

/// [`drain_unread_body`] within `limits` (tests use small ones).
pub async fn drain_unread_body_within(
    limits: DrainLimits,
    request: Request,
    next: Next,
) -> Response {
    if request.extensions().get::<Watched>().is_some() || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(Watched);
    let declared = content_length(&parts.headers);
    let expects_continue = parts
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let lent = Arc::new(Mutex::new(Lent {
        body: Some(body),
        read: 0,
        polled: false,
        ended: false,
    }));
    let request = Request::from_parts(parts, Body::new(Counted(lent.clone())));
    let mut response = next.run(request).await;

    let (rest, read, polled) = {
        let mut lent = lock(&lent);
        if lent.ended {
            return response;
        }
        (lent.body.take(), lent.read, lent.polled)
    };
    let Some(rest) = rest.filter(|b| !b.is_end_stream()) else {
        return response;
    };
    if expects_continue && !polled {
        // Reading now would make hyper send `100 Continue` and ask for the very body the
        // answer refuses; dropping it closes the connection without asking.
        metrics::counter!(METRIC_UNREAD_BODIES, "outcome" => "not_asked").increment(1);
        close(&mut response);
        return response;
    }
    let fits = declared.is_some_and(|n| n.saturating_sub(read) <= limits.max_bytes);
    if !fits {
        close(&mut response);
    }
    tokio::spawn(drain(rest, limits));
    response
}

/// Reads and discards `body` within `limits`; dropping it (at the end or at a bound) lets
/// hyper go on: to the next request when it was read to the end, else to closing.
async fn drain(mut body: Body, limits: DrainLimits) {
    let read_rest = async {
        let mut drained: u64 = 0;
        loop {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => return Ok(drained),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        drained = drained.saturating_add(data.len() as u64);
                        if drained > limits.max_bytes {
                            return Err("more than the drain's byte bound");
                        }
                    }
                }
                Some(Err(_)) => return Err("the body broke off"),
            }
        }
    };
    let outcome = match tokio::time::timeout(limits.max_time, read_rest).await {
        Ok(Ok(bytes)) => {
            tracing::debug!(bytes, "read the rest of a refused request's body");
            "drained"
        }
        Ok(Err(why)) => {
            tracing::debug!(why, "stopped reading a refused request's body");
            "cut"
        }
        Err(_) => {
            tracing::debug!("stopped reading a refused request's body: time bound");
            "cut"
        }
    };
    metrics::counter!(METRIC_UNREAD_BODIES, "outcome" => outcome).increment(1);
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn close(response: &mut Response) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

/// The request body while the handler has it, and what the handler did with it.
struct Lent {
    /// `None` once the middleware took it back to drain it.
    body: Option<Body>,
    /// Data bytes the handler read.
    read: u64,
    /// Whether the handler asked for any of it.
    polled: bool,
    /// Whether the handler read it to its end.
    ended: bool,
}

fn lock(lent: &Mutex<Lent>) -> MutexGuard<'_, Lent> {
    // A panic while polling leaves the counts as they were; they are still right to use.
    lent.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The body the handler sees: the request's, counted.
struct Counted(Arc<Mutex<Lent>>);

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut lent = lock(&self.0);
        lent.polled = true;
        let Some(body) = lent.body.as_mut() else {
            // The answer was given and the rest is being discarded: reading on would see a
            // truncated body, so this is an error, never an end.
            return Poll::Ready(Some(Err(axum::Error::new(
                "the request body was abandoned after the answer",
            ))));
        };
        let polled = Pin::new(body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    lent.read = lent.read.saturating_add(data.len() as u64);
                }
            }
            Poll::Ready(None) => lent.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let lent = lock(&self.0);
        lent.ended || lent.body.as_ref().is_some_and(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.0)
            .body
            .as_ref()
            .map_or_else(SizeHint::default, HttpBody::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The bound the connection tests drain within: 64 KiB, so that a 60 KiB rest is
    /// drained and a 100,000-byte one is not.
    const WITHIN_64_KIB: DrainLimits = DrainLimits {
        max_bytes: 64 * 1024,
        max_time: DRAIN_MAX_TIME,
    };

    /// A server on loopback whose one route refuses without reading the body, behind the
    /// middleware with `limits`.
    async fn refusing_server(limits: DrainLimits) -> std::net::SocketAddr {
        let app = axum::Router::new()
            .route(
                "/x",
                axum::routing::post(|| async {
                    crate::error::ApiError::Unauthorized("no key".into())
                }),
            )
            .layer(axum::middleware::from_fn(move |req, next| {
                drain_unread_body_within(limits, req, next)
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Reads one answer's head (to the blank line) and returns it lowercased.
    async fn read_head(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).await.unwrap();
            assert_eq!(n, 1, "EOF in the head: {:?}", String::from_utf8_lossy(&buf));
            buf.push(byte[0]);
        }
        String::from_utf8(buf).unwrap().to_ascii_lowercase()
    }

    #[tokio::test]
    async fn a_declared_rest_within_the_bound_is_drained_and_the_connection_kept() {
        let addr = refusing_server(WITHIN_64_KIB).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            let body = vec![b'x'; 60 * 1024];
            let head = format!(
                "POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&body).await.unwrap();
            let head = read_head(&mut s).await;
            assert!(head.starts_with("http/1.1 401"), "{head}");
            assert!(!head.contains("connection: close"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let mut rest = vec![0u8; len];
            s.read_exact(&mut rest).await.unwrap();
        }
    }

    #[tokio::test]
    async fn past_the_bound_or_of_unknown_length_the_answer_says_close() {
        let addr = refusing_server(WITHIN_64_KIB).await;
        for head in [
            "POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n",
            "POST /x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n",
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let answer = read_head(&mut s).await;
            assert!(answer.starts_with("http/1.1 401"), "{answer}");
            assert!(answer.contains("connection: close"), "{head}: {answer}");
        }
    }

    #[test]
    fn content_length_is_read_only_when_it_is_a_number() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("8388608"));
        assert_eq!(content_length(&h), Some(8_388_608));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("lots"));
        assert_eq!(content_length(&h), None);
    }
}
