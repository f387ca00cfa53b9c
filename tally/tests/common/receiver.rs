//! A loopback webhook receiver for alert tests: records each request (its
//! `tally-signature`, body and the status answered) and answers with a status the test sets.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// What the receiver got, and what it answers next.
#[derive(Default)]
pub struct Receiver {
    /// The status the next request is answered with.
    pub answer: AtomicU16,
    /// (signature, body, status answered) per request, in order.
    pub got: Mutex<Vec<(String, Vec<u8>, u16)>>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = r.answer.load(Ordering::SeqCst);
    let sig = headers
        .get("tally-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    r.got.lock().unwrap().push((sig, body.to_vec(), status));
    StatusCode::from_u16(status).unwrap()
}

/// Starts a receiver answering `answer`: its URL (`http://…/hook`) and its record.
pub async fn start_receiver(answer: u16) -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver::default());
    r.answer.store(answer, Ordering::SeqCst);
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(Arc::clone(&r));
    let addr = tally_tests::serve_local(app).await.unwrap();
    (format!("http://{addr}/hook"), r)
}
