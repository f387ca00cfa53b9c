//! The receive loop of the queues that poll (the local queue, Kinesis): look for messages,
//! hand them out as soon as a look takes any, else nap and look again until the caller's
//! wait is over. SQS waits on the server side instead (long polling).

use std::time::Duration;

use tally_core::ports::{Delivery, QueueError};
use tokio::time::Instant;

/// Receives as [`EventQueue::receive`](tally_core::ports::EventQueue::receive) promises,
/// for a queue that polls: asks for at least one event, calls `look(max_events)` until a
/// look takes something or `wait` is over (then the last look's deliveries, maybe none, are
/// the answer), and between looks awaits the nap the look handed back, given the instant
/// the look ended and the deadline.
pub(crate) async fn poll_receive<F, Fut, N, NapFut>(
    max_events: usize,
    wait: Duration,
    mut look: F,
) -> Result<Vec<Delivery>, QueueError>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(Vec<Delivery>, N), QueueError>>,
    N: FnOnce(Instant, Instant) -> NapFut,
    NapFut: Future<Output = ()>,
{
    let max_events = max_events.max(1);
    let deadline = Instant::now() + wait;
    loop {
        let (got, nap) = look(max_events).await?;
        let now = Instant::now();
        if !got.is_empty() || now >= deadline {
            return Ok(got);
        }
        nap(now, deadline).await;
    }
}
