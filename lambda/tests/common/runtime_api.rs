//! A local Lambda Runtime API, and a function binary run against it as Lambda runs it.
//!
//! Lambda starts a `provided.al2023` function's `bootstrap` with `AWS_LAMBDA_RUNTIME_API`
//! (`host:port`) and the `AWS_LAMBDA_FUNCTION_*` variables in its environment; the binary
//! (`lambda_runtime`) then loops: `GET /2018-06-01/runtime/invocation/next` blocks until an
//! event arrives (its body, with the request id, deadline, function ARN and trace id in
//! `Lambda-Runtime-*` headers), and the answer is `POST`ed to
//! `/2018-06-01/runtime/invocation/{id}/response` (or `/error`); a failed start is
//! `POST /2018-06-01/runtime/init/error`. [`RuntimeApi`] serves those four routes on a
//! loopback port, and [`Function`] is one process of a test-build binary served by it, so a
//! test drives the real `main` of each function: its environment reading, its clients, its
//! runtime loop, its answer's encoding.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// What an invocation ended with: the function's answer, or the error it posted.
pub type Outcome = Result<Value, Value>;

/// One event waiting for `next`.
struct Invocation {
    id: String,
    event: Value,
    deadline_ms: u64,
    function_arn: String,
    answer: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Answers {
    waiting: HashMap<String, oneshot::Sender<Outcome>>,
    init_error: Option<Value>,
}

#[derive(Clone)]
struct ApiState {
    next: Arc<tokio::sync::Mutex<mpsc::Receiver<Invocation>>>,
    answers: Arc<Mutex<Answers>>,
}

/// The Runtime API of one execution environment: [`Function::invoke`] queues an event, the
/// function takes it with `next` and posts its outcome back.
pub struct RuntimeApi {
    /// `host:port`, as `AWS_LAMBDA_RUNTIME_API` holds it.
    pub address: String,
    events: mpsc::Sender<Invocation>,
    answers: Arc<Mutex<Answers>>,
}

async fn next(State(state): State<ApiState>) -> axum::response::Response {
    // Held across the wait: one execution environment takes one event at a time.
    let mut queue = state.next.lock().await;
    let Some(inv) = queue.recv().await else {
        return StatusCode::GONE.into_response();
    };
    state
        .answers
        .lock()
        .unwrap()
        .waiting
        .insert(inv.id.clone(), inv.answer);
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    };
    set("lambda-runtime-aws-request-id", inv.id.clone());
    set("lambda-runtime-deadline-ms", inv.deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", inv.function_arn);
    set(
        "lambda-runtime-trace-id",
        format!(
            "Root=1-00000000-{};Parent=0000000000000001;Sampled=0",
            &inv.id[..24]
        ),
    );
    set("content-type", "application/json".into());
    (StatusCode::OK, headers, inv.event.to_string()).into_response()
}

fn answer(state: &ApiState, id: &str, outcome: Outcome) -> axum::response::Response {
    match state.answers.lock().unwrap().waiting.remove(id) {
        Some(tx) => {
            let _ = tx.send(outcome);
            (StatusCode::ACCEPTED, Json(json!({"status": "OK"}))).into_response()
        }
        // What Lambda answers for an id that is not the current invocation's.
        None => (
            StatusCode::BAD_REQUEST,
            Json(json!({"errorType": "InvalidRequestID", "errorMessage": id})),
        )
            .into_response(),
    }
}

fn body_json(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// `POST …/invocation/{id}/response` and `…/{id}/error`: the function's result or its error.
async fn outcome(
    State(state): State<ApiState>,
    Path((id, kind)): Path<(String, String)>,
    body: Bytes,
) -> axum::response::Response {
    match kind.as_str() {
        "response" => answer(&state, &id, Ok(body_json(&body))),
        "error" => answer(&state, &id, Err(body_json(&body))),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn init_error(State(state): State<ApiState>, body: Bytes) -> axum::response::Response {
    state.answers.lock().unwrap().init_error = Some(body_json(&body));
    (StatusCode::ACCEPTED, Json(json!({"status": "OK"}))).into_response()
}

impl RuntimeApi {
    /// Serves the Runtime API on a loopback port until the test's runtime ends.
    pub async fn start() -> RuntimeApi {
        let (events, rx) = mpsc::channel(1);
        let answers = Arc::new(Mutex::new(Answers::default()));
        let state = ApiState {
            next: Arc::new(tokio::sync::Mutex::new(rx)),
            answers: answers.clone(),
        };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(outcome))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(state);
        let addr = tally_tests::serve_local(app).await.unwrap();
        RuntimeApi {
            address: addr.to_string(),
            events,
            answers,
        }
    }

    /// Queues `event` for the function; its request id, and the receiver of its outcome.
    async fn send(
        &self,
        event: Value,
        deadline_ms: u64,
        function_arn: String,
    ) -> (String, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let id = tally_tests::conformance::fixtures::random_hex();
        self.events
            .send(Invocation {
                id: id.clone(),
                event,
                deadline_ms,
                function_arn,
                answer: tx,
            })
            .await
            .unwrap();
        (id, rx)
    }

    fn init_error(&self) -> Option<Value> {
        self.answers.lock().unwrap().init_error.clone()
    }
}

/// One execution environment of a function: its binary running against its own
/// [`RuntimeApi`], its output (JSON log lines, EMF metrics) kept in a file for failures.
pub struct Function {
    /// The function's name (`AWS_LAMBDA_FUNCTION_NAME`).
    pub name: String,
    arn: String,
    timeout: Duration,
    api: RuntimeApi,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
    /// The request id of the latest invocation.
    pub last_request_id: String,
}

impl Function {
    /// Starts `binary` as Lambda starts a function named `name` with `memory_mb` and
    /// `timeout`: an empty environment but for `environment` (the function's variables, and
    /// the credentials and endpoint of the role it runs as) and the variables Lambda itself
    /// sets, `AWS_LAMBDA_RUNTIME_API` pointing at a fresh [`RuntimeApi`].
    pub async fn start(
        binary: &str,
        name: &str,
        memory_mb: u64,
        timeout: Duration,
        region: &str,
        account: &str,
        environment: &BTreeMap<String, String>,
    ) -> Function {
        let api = RuntimeApi::start().await;
        let log = tempfile::NamedTempFile::new().unwrap();
        let group = format!("/aws/lambda/{name}");
        let lambda_vars = [
            ("AWS_LAMBDA_RUNTIME_API", api.address.clone()),
            ("AWS_LAMBDA_FUNCTION_NAME", name.to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", group),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/12/05/[$LATEST]0123456789abcdef".to_owned(),
            ),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
            ("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023".to_owned()),
            ("AWS_REGION", region.to_owned()),
            ("AWS_DEFAULT_REGION", region.to_owned()),
            ("_HANDLER", "bootstrap".to_owned()),
            ("LAMBDA_TASK_ROOT", "/var/task".to_owned()),
            ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_owned()),
            ("TZ", ":UTC".to_owned()),
            ("LANG", "en_US.UTF-8".to_owned()),
            ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin".to_owned()),
        ];
        let child = Command::new(binary)
            .env_clear()
            .envs(lambda_vars)
            .envs(environment)
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Function {
            name: name.to_owned(),
            arn: format!("arn:aws:lambda:{region}:{account}:function:{name}"),
            timeout,
            api,
            child: Some(child),
            log,
            last_request_id: String::new(),
        }
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        let mut s = String::new();
        let _ = self.log.reopen().and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Invokes the function with `event`, as an event source or API Gateway does, and
    /// waits for its outcome. Panics, with the process's output, if it exits, reports an
    /// init error, or overruns its timeout (as Lambda would stop it) first.
    pub async fn invoke(&mut self, event: Value) -> Outcome {
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap();
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap();
        let (id, mut rx) = self
            .api
            .send(event, now_ms + timeout_ms, self.arn.clone())
            .await;
        self.last_request_id = id;
        let limit = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout(Duration::from_millis(50), &mut rx).await {
                Ok(Ok(outcome)) => return outcome,
                Ok(Err(_)) => panic!("{}: the Runtime API dropped the invocation", self.name),
                Err(_) => {}
            }
            if let Some(e) = self.api.init_error() {
                panic!("{}: init error {e}\n{}", self.name, self.output());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{}: exited ({status}) before answering\n{}",
                    self.name,
                    self.output()
                );
            }
            self.assert_before(limit, "no answer within its timeout of");
        }
    }

    /// Panics once `limit` has passed, saying `what` happened within the timeout, with the
    /// function's output so far.
    fn assert_before(&self, limit: tokio::time::Instant, what: &str) {
        assert!(
            tokio::time::Instant::now() < limit,
            "{}: {what} {:?}\n{}",
            self.name,
            self.timeout,
            self.output()
        );
    }

    /// Waits for the process to exit by itself (a function that cannot start); its status
    /// and output. Panics if it is still running after its timeout.
    pub async fn exit(&mut self) -> (std::process::ExitStatus, String) {
        let limit = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return (status, self.output());
            }
            self.assert_before(limit, "still running after");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process (Lambda's freeze, then shutdown); its output.
    pub fn stop(mut self) -> String {
        self.kill();
        self.output()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        self.kill();
    }
}
