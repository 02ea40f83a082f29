//! Ingress: messages published on the local broker that a route takes go to the outbox.
//!
//! Each message goes to the first route whose filter matches (routes are tried in file order),
//! into that route's stream and priority lane. Whatever is waiting is appended as one batch,
//! so one fsync covers many messages.

use std::sync::Arc;

use fieldlink_core::config::Route;
use fieldlink_core::message::Message;
use fieldlink_core::ports::{Outbox, OutboxEntry};
use tokio::sync::mpsc;

/// Most messages appended in one batch.
const BATCH: usize = 512;

/// Routes what `messages` yields into `outbox` until the channel closes.
pub(crate) async fn run(
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
