//! A [`LocalBus`] that records what is published, for tests of components that talk to the
//! local broker without starting one (the real one is tested in `crates/fieldlink`).

use fieldlink_core::message::Message;
use fieldlink_core::ports::{BoxFuture, BusError, LocalBus};
use fieldlink_core::topic::TopicFilter;
use tokio::sync::mpsc;

/// Publishes go to the receiver returned by [`RecordingBus::new`]; subscriptions see nothing.
#[derive(Debug)]
pub struct RecordingBus {
    published: mpsc::UnboundedSender<Message>,
}

impl RecordingBus {
    /// The bus, and what is published on it.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Message>) {
        let (published, rx) = mpsc::unbounded_channel();
        (Self { published }, rx)
    }
}

impl LocalBus for RecordingBus {
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>> {
        let sent = self.published.send(message).map_err(|_| BusError::Closed);
        Box::pin(async move { sent })
    }

    fn subscribe(
        &self,
        _filter: &TopicFilter,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Message>, BusError> {
        // Nothing is ever published to subscribers; the sender is dropped at once.
        Ok(mpsc::channel(capacity).1)
    }
}
