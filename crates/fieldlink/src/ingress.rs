//! Ingress: the one place where messages produced at the site meet the routes.
//!
//! Each message goes to the first route whose filter matches (routes are tried in file order),
//! into that route's stream and priority lane; what no route takes stays local.
//!
//! [`RoutedIngress`] is core's [`Ingress`] port: producers inside the gateway (the field
//! bridge) have their messages stored and then published locally; the broker's edge has its
//! clients' publishes stored before it hands them to the local broker itself.

use std::sync::Arc;

use fieldlink_core::message::Message;
use fieldlink_core::ports::{BoxFuture, Ingress, IngressError, LocalBus, Outbox, OutboxEntry};
use fieldlink_core::topic::TopicName;
use fieldlink_queue::config::Route;

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

    fn takes(&self, topic: &TopicName) -> bool {
        self.routes.iter().any(|r| r.filter.matches(topic))
    }

    fn store(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), IngressError>> {
        Box::pin(async move {
            let mut routed = Vec::with_capacity(messages.len());
            for message in messages {
                push(&mut routed, &self.routes, message);
            }
            if !routed.is_empty() {
                self.outbox.append(routed).await?;
            }
            Ok(())
        })
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
