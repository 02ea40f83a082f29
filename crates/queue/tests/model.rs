//! A model test: random sequences of append, lease, ack, nack and restart, checked step by step
//! against a plain in-memory model of what the queue must hold and hand out.

mod common;

use std::collections::BTreeSet;

use proptest::prelude::*;

use common::{entry, open, settings};

#[derive(Debug, Clone)]
enum Step {
    Append { stream: u8, count: u8 },
    Lease(u8),
    Ack(u8),
    Nack(u8),
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3, 1u8..6).prop_map(|(stream, count)| Step::Append { stream, count }),
        3 => (1u8..8).prop_map(Step::Lease),
        3 => any::<u8>().prop_map(Step::Ack),
        1 => any::<u8>().prop_map(Step::Nack),
        1 => Just(Step::Restart),
    ]
}

/// What the queue must hold: ids in order with their payloads, and which are leased.
#[derive(Default)]
struct Model {
    stored: Vec<(i64, Vec<u8>)>,
    leased: Vec<i64>,
    next_payload: u64,
}

impl Model {
    fn leasable(&self, n: usize) -> Vec<i64> {
        let leased: BTreeSet<i64> = self.leased.iter().copied().collect();
        self.stored
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !leased.contains(id))
            .take(n)
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_queue_behaves_like_the_model(steps in prop::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut queue = open(dir.path(), settings()).await;
            let mut model = Model::default();
            for step in steps {
                match step {
                    Step::Append { stream, count } => {
                        let entries: Vec<_> = (0..count)
                            .map(|_| { model.next_payload += 1; entry(&format!("s{stream}"), model.next_payload) })
                            .collect();
                        let payloads: Vec<Vec<u8>> = entries.iter().map(|e| e.message.payload.clone()).collect();
                        let ids = queue.append(entries).await.unwrap();
                        assert_eq!(ids.len(), usize::from(count));
                        let last = model.stored.last().map_or(0, |(id, _)| *id);
                        assert!(ids[0] > last && ids.windows(2).all(|w| w[0] < w[1]), "{ids:?} after {last}");
                        model.stored.extend(ids.into_iter().zip(payloads));
                    }
                    Step::Lease(n) => {
                        let expected = model.leasable(usize::from(n));
                        let got = queue.lease(usize::from(n)).await.unwrap();
                        let ids: Vec<i64> = got.iter().map(|l| l.id).collect();
                        assert_eq!(ids, expected);
                        for leased in &got {
                            let (_, payload) = model.stored.iter().find(|(id, _)| *id == leased.id).unwrap();
                            assert_eq!(&leased.message.payload, payload);
                        }
                        model.leased.extend(ids);
                    }
                    Step::Ack(i) if !model.leased.is_empty() => {
                        let id = model.leased.remove(usize::from(i) % model.leased.len());
                        queue.ack(vec![id]).await.unwrap();
                        model.stored.retain(|(s, _)| *s != id);
                    }
                    Step::Nack(i) if !model.leased.is_empty() => {
                        let id = model.leased.remove(usize::from(i) % model.leased.len());
                        queue.nack(vec![id]).await.unwrap();
                    }
                    Step::Ack(_) | Step::Nack(_) => {}
                    Step::Restart => {
                        // A clean stop: deletions of delivered messages are committed by then
                        // (after a crash they may be sent again: at least once).
                        queue.close().await;
                        drop(queue);
                        queue = open(dir.path(), settings()).await;
                        model.leased.clear();
                    }
                }
                let stats = queue.stats().await.unwrap();
                assert_eq!(stats.messages, model.stored.len() as u64);
                assert_eq!(stats.leased, model.leased.len() as u64);
            }
            let all: Vec<i64> = queue.peek(10_000).await.unwrap().iter().map(|l| l.id).collect();
            let expected: Vec<i64> = model.stored.iter().map(|(id, _)| *id).collect();
            assert_eq!(all, expected);
        });
    }
}
