//! A model test: random sequences of append, lease, ack, nack and restart, checked step by step
//! against a plain in-memory model of what the queue must hold and hand out.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

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

/// What the queue must hold: ids in order with their stream and payload, and which are leased.
#[derive(Default)]
struct Model {
    stored: Vec<(i64, u8, Vec<u8>)>,
    leased: Vec<i64>,
    next_payload: u64,
}

impl Model {
    fn leasable(&self, n: usize) -> Vec<i64> {
        let leased: BTreeSet<i64> = self.leased.iter().copied().collect();
        Self::turns(
            self.stored.iter().filter(|(id, ..)| !leased.contains(id)),
            n,
        )
    }

    /// Everything, in delivery order (what a peek shows).
    fn order(&self) -> Vec<i64> {
        Self::turns(self.stored.iter(), usize::MAX)
    }

    /// Lease order: streams (all of one priority here) take turns, one message each, the
    /// oldest head first; each stream in id order.
    fn turns<'a>(rows: impl Iterator<Item = &'a (i64, u8, Vec<u8>)>, n: usize) -> Vec<i64> {
        let mut streams: BTreeMap<u8, VecDeque<i64>> = BTreeMap::new();
        for (id, stream, _) in rows {
            streams.entry(*stream).or_default().push_back(*id);
        }
        let mut out = Vec::new();
        while out.len() < n {
            let mut turn: Vec<(i64, u8)> = streams
                .iter()
                .filter_map(|(s, q)| q.front().map(|id| (*id, *s)))
                .collect();
            if turn.is_empty() {
                break;
            }
            turn.sort_unstable();
            for (_, s) in turn {
                out.extend(streams.get_mut(&s).and_then(VecDeque::pop_front));
                if out.len() == n {
                    break;
                }
            }
        }
        out
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
                        let last = model.stored.last().map_or(0, |(id, ..)| *id);
                        assert!(ids[0] > last && ids.windows(2).all(|w| w[0] < w[1]), "{ids:?} after {last}");
                        model.stored.extend(ids.into_iter().zip(payloads).map(|(id, p)| (id, stream, p)));
                    }
                    Step::Lease(n) => {
                        let expected = model.leasable(usize::from(n));
                        let got = queue.lease(usize::from(n)).await.unwrap();
                        let ids: Vec<i64> = got.iter().map(|l| l.id).collect();
                        assert_eq!(ids, expected);
                        for leased in &got {
                            let (_, _, payload) = model.stored.iter().find(|(id, ..)| *id == leased.id).unwrap();
                            assert_eq!(&leased.message.payload, payload);
                        }
                        model.leased.extend(ids);
                    }
                    Step::Ack(i) if !model.leased.is_empty() => {
                        let id = model.leased.remove(usize::from(i) % model.leased.len());
                        queue.ack(vec![id]).await.unwrap();
                        model.stored.retain(|(s, ..)| *s != id);
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
            let expected = model.order();
            assert_eq!(all, expected);
        });
    }
}
