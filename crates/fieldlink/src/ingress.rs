//! Ingress: the one place where messages produced at the site meet the routes.
//!
//! Each message goes to the first route whose filter matches (routes are tried in file order),
//! into that route's stream and priority lane; what no route takes stays local.
//!
//! Two ways in: [`RoutedIngress`] (core's [`Ingress`] port) for producers inside the gateway,
//! which stores first and then publishes locally; and [`run_tap`] for what network clients
//! publish on the broker, read back from it.

use std::sync::Arc;

use fieldlink_core::config::Route;
use fieldlink_core::message::Message;
use fieldlink_core::ports::{BoxFuture, Ingress, IngressError, LocalBus, Outbox, OutboxEntry};
use tokio::sync::mpsc;

/// Most messages appended in one batch.
const BATCH: usize = 512;

/// Core's [`Ingress`] port: routed messages into the outbox, then everything onto the bus.
pub(crate) struct RoutedIngress {
    pub(crate) routes: Arc<[Route]>,
    pub(crate) outbox: Arc<dyn Outbox>,
    pub(crate) bus: Arc<dyn LocalBus>,
}

impl std::fmt::Debug for RoutedIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedIngress")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

impl Ingress for RoutedIngress {
    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), IngressError>> {
        Box::pin(async move {
            let mut routed = Vec::new();
            for message in &messages {
                // The copy is the price of two destinations; in-process producers are slow
                // (field devices), the network path below moves its messages instead.
                push(&mut routed, &self.routes, message.clone());
            }
            if !routed.is_empty() {
                self.outbox.append(routed).await?;
            }
            for message in messages {
                self.bus.publish(message).await?;
            }
            Ok(())
        })
    }
}

/// Routes what network clients publish (`messages`, from the broker tap) into `outbox` until
/// the channel closes. Whatever is waiting is appended as one batch, so one fsync covers many.
pub(crate) async fn run_tap(
    mut messages: mpsc::Receiver<Message>,
    routes: Arc<[Route]>,
    outbox: Arc<dyn Outbox>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = messages.recv().await {
        push(&mut batch, &routes, first);
        while batch.len() < BATCH {
            match messages.try_recv() {
                Ok(message) => push(&mut batch, &routes, message),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let count = batch.len();
        if let Err(e) = outbox
            .append(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
            .await
        {
            // These were already acknowledged to their publishers by rumqttd: they are lost.
            tracing::error!(count, error = %e, "Routed messages could not be stored and are lost");
        }
    }
}

fn push(batch: &mut Vec<OutboxEntry>, routes: &[Route], message: Message) {
    if let Some(route) = routes.iter().find(|r| r.filter.matches(&message.topic)) {
        batch.push(OutboxEntry {
            stream: route.name.clone(),
            priority: route.priority,
            message,
            properties: None,
        });
    }
}
