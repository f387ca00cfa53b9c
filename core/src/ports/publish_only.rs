//! A queue for tests that only publish (ingest's, the coalescer's): [`PublishOnly`] makes an
//! [`EventQueue`] of anything that takes a publish, with nothing to receive, so each such
//! test writes its publish and not the three methods ingest never calls. Built for tests
//! only (the `test-support` feature a dev-dependency turns on).

use std::ops::Deref;
use std::time::Duration;

use async_trait::async_trait;

use super::{Delivery, EventQueue, PublishReport, QueueError};
use crate::event::Event;

/// What a publish-only test queue does with a publish.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// As [`EventQueue::publish`].
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError>;
}

/// An [`EventQueue`] that hands every publish to its [`Publisher`] and never has anything
/// to hand out: `receive` finds nothing, `ack` acknowledges nothing, `depth` is 0. It
/// dereferences to the publisher, so a test reads what its publisher kept.
#[derive(Debug, Default)]
pub struct PublishOnly<P> {
    publisher: P,
}

impl<P> PublishOnly<P> {
    /// The queue publishing through `publisher`.
    pub fn new(publisher: P) -> Self {
        PublishOnly { publisher }
    }
}

impl<P> Deref for PublishOnly<P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.publisher
    }
}

#[async_trait]
impl<P: Publisher> EventQueue for PublishOnly<P> {
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
        self.publisher.publish(events).await
    }
    async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        Ok(Vec::new())
    }
    async fn ack(&self, _: &[String]) -> Result<(), QueueError> {
        Ok(())
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        Ok(0)
    }
}
