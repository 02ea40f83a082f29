//! Lease order: streams take turns. Within a stream, messages go in id order; across streams,
//! the streams whose next message has the highest priority each give one message per turn
//! (the oldest head first). A live message on one route therefore goes out within one window
//! of a backlog of millions on another, while each stream keeps its own order.
//!
//! Each stream is read through its (stream, id) index from a cursor: the last row of that
//! stream known to be leased or delivered with every row before it, so that a large set of
//! leased rows costs nothing per lease. A nack or a purge forgets the cursors (the rows given
//! back lie before them); a lease then reads its streams from their start, skipping what is
//! leased or delivered, page by page, and sets them again.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use sqlx::SqliteConnection;

use super::Leased;
use crate::store;

/// Rows read per page and stream at least: a stream that runs out of its share is read again
/// from where it stopped.
const MIN_PAGE: usize = 16;

/// One stream's rows read so far and not handed out, and how far it has been read.
struct Head {
    stream: String,
    rows: VecDeque<Leased>,
    /// The last id read (handed out, skipped, or waiting in `rows`).
    read_to: i64,
    /// The last id up to which every row is leased or delivered (handed out or skipped, with
    /// nothing left waiting before it).
    covered: Option<i64>,
    /// Whether the last page came back short: nothing more to read.
    exhausted: bool,
}

/// What a lease (or a peek, `lease` false) needs from the writer.
pub(crate) struct Lessor<'a> {
    pub(crate) conn: &'a mut SqliteConnection,
    pub(crate) leased: &'a mut HashSet<i64>,
    pub(crate) delivered: &'a BTreeSet<i64>,
    pub(crate) cursors: &'a mut HashMap<String, i64>,
}

impl Lessor<'_> {
    /// Up to `max` messages in lease order; with `lease`, they are marked leased and the
    /// cursors move.
    pub(crate) async fn next<'s>(
        &mut self,
        streams: impl Iterator<Item = &'s String>,
        max: usize,
        lease: bool,
    ) -> Result<Vec<Leased>, sqlx::Error> {
        let mut heads: Vec<Head> = streams
            .map(|stream| Head {
                read_to: if lease {
                    self.cursors.get(stream).copied().unwrap_or(0)
                } else {
                    0
                },
                stream: stream.clone(),
                rows: VecDeque::new(),
                covered: None,
                exhausted: false,
            })
            .collect();
        let page = max.div_ceil(heads.len().max(1)).max(MIN_PAGE);
        let mut out = Vec::with_capacity(max.min(4096));
        'turns: while out.len() < max {
            for head in &mut heads {
                while head.rows.is_empty() && !head.exhausted {
                    self.read_page(head, page, lease).await?;
                }
            }
            // This turn: the streams whose next row has the highest priority, oldest first.
            let Some(top) = heads
                .iter()
                .filter_map(|h| h.rows.front().map(|r| r.priority))
                .max()
            else {
                break;
            };
            let mut turn: Vec<&mut Head> = heads
                .iter_mut()
                .filter(|h| h.rows.front().is_some_and(|r| r.priority == top))
                .collect();
            turn.sort_by_key(|h| h.rows.front().map_or(i64::MAX, |r| r.id));
            for head in turn {
                let Some(row) = head.rows.pop_front() else {
                    continue;
                };
                if lease {
                    self.leased.insert(row.id);
                    head.covered = Some(row.id);
                }
                out.push(row);
                if out.len() == max {
                    break 'turns;
                }
            }
        }
        if lease {
            for head in heads {
                // Read to its end and all handed out: everything read is covered.
                let covered = if head.rows.is_empty() {
                    Some(head.read_to)
                } else {
                    head.covered
                };
                if let Some(id) = covered.filter(|id| *id > 0) {
                    self.cursors.insert(head.stream, id);
                }
            }
        }
        Ok(out)
    }

    /// Reads the next page of `head`'s stream, keeping what is neither leased (for a lease)
    /// nor delivered.
    async fn read_page(
        &mut self,
        head: &mut Head,
        page: usize,
        lease: bool,
    ) -> Result<(), sqlx::Error> {
        let limit = i64::try_from(page).unwrap_or(i64::MAX);
        let read = store::select_stream_after(self.conn, &head.stream, head.read_to, limit).await?;
        head.exhausted = read.read < page;
        for row in read.rows {
            let skip = self.delivered.contains(&row.id) || (lease && self.leased.contains(&row.id));
            if !skip {
                head.rows.push_back(row);
            } else if head.rows.is_empty() {
                // Leased or delivered, right after what is covered: covered too.
                head.covered = Some(row.id);
            }
        }
        if let Some(last) = read.last_id {
            head.read_to = last;
        }
        Ok(())
    }
}
