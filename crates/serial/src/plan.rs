//! The read planner (sans-IO): the points of one poll group, coalesced into as few Modbus reads
//! as the protocol limits allow.
//!
//! Points of the same table whose registers are contiguous, or separated by at most `max_gap`
//! unused registers, share one request, as long as it stays within 125 registers (2000 bits
//! for coils and discrete inputs). Reading a few unused registers is cheaper than another
//! round trip on a 9600-baud line.

use crate::config::{MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ, Table};

/// What one point needs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The table.
    pub table: Table,
    /// First register or bit.
    pub address: u16,
    /// Registers or bits.
    pub count: u16,
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The table.
    pub table: Table,
    /// First register or bit.
    pub start: u16,
    /// Registers or bits.
    pub count: u16,
    /// Indices (into the caller's list) of the points it serves.
    pub points: Vec<usize>,
}

/// Plans the reads for `spans` (indexed as given).
pub fn plan(spans: &[Span], max_gap: u16) -> Vec<Read> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].table, spans[i].address, spans[i].count));
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let span = spans[i];
        let end = u32::from(span.address) + u32::from(span.count);
        let limit = u32::from(limit(span.table));
        if let Some(last) = reads.last_mut()
            && last.table == span.table
        {
            let last_end = u32::from(last.start) + u32::from(last.count);
            let joined_end = last_end.max(end);
            if u32::from(span.address) <= last_end + u32::from(max_gap)
                && joined_end - u32::from(last.start) <= limit
            {
                // Fits: joined_end - start <= 2000.
                last.count =
                    u16::try_from(joined_end - u32::from(last.start)).unwrap_or(last.count);
                last.points.push(i);
                continue;
            }
        }
        reads.push(Read {
            table: span.table,
            start: span.address,
            count: span.count,
            points: vec![i],
        });
    }
    reads
}

/// The most registers or bits one read may ask for.
pub fn limit(table: Table) -> u16 {
    if table.is_bits() {
        MAX_BITS_PER_READ
    } else {
        MAX_REGISTERS_PER_READ
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hr(address: u16, count: u16) -> Span {
        Span {
            table: Table::Holding,
            address,
            count,
        }
    }

    #[test]
    fn contiguous_and_near_ranges_are_joined_far_ones_are_not() {
        let spans = [hr(0, 2), hr(2, 1), hr(5, 2), hr(40, 1)];
        let reads = plan(&spans, 4);
        assert_eq!(reads.len(), 2);
        assert_eq!(
            (reads[0].start, reads[0].count, reads[0].points.clone()),
            (0, 7, vec![0, 1, 2])
        );
        assert_eq!((reads[1].start, reads[1].count), (40, 1));
        assert_eq!(plan(&spans, 0).len(), 3, "no gap allowed: 0-3, 5-7 and 40");
    }

    #[test]
    fn tables_are_never_mixed_and_limits_are_kept() {
        let spans = [
            hr(0, 1),
            Span {
                table: Table::Input,
                address: 1,
                count: 1,
            },
            hr(124, 2),
            Span {
                table: Table::Coil,
                address: 0,
                count: 1,
            },
            Span {
                table: Table::Coil,
                address: 1999,
                count: 1,
            },
            Span {
                table: Table::Coil,
                address: 2000,
                count: 1,
            },
        ];
        let reads = plan(&spans, 2000);
        let shape: Vec<_> = reads.iter().map(|r| (r.table, r.start, r.count)).collect();
        assert_eq!(
            shape,
            [
                (Table::Coil, 0, 2000),
                (Table::Coil, 2000, 1),
                (Table::Holding, 0, 1),
                (Table::Holding, 124, 2),
                (Table::Input, 1, 1),
            ]
        );
    }

    proptest! {
        /// Every point is served by exactly one read that covers it, of one table, within the
        /// protocol limit.
        #[test]
        fn every_point_is_covered_once_within_limits(
            raw in proptest::collection::vec((0u8..4, 0u16..1000, 1u16..=8), 0..60),
            max_gap in 0u16..20,
        ) {
            let tables = [Table::Coil, Table::Discrete, Table::Holding, Table::Input];
            let spans: Vec<Span> = raw.iter().map(|&(t, a, c)| Span { table: tables[usize::from(t)], address: a, count: c }).collect();
            let reads = plan(&spans, max_gap);
            let mut seen = vec![0; spans.len()];
            for r in &reads {
                prop_assert!(r.count <= limit(r.table));
                for &i in &r.points {
                    seen[i] += 1;
                    let s = spans[i];
                    prop_assert_eq!(s.table, r.table);
                    prop_assert!(s.address >= r.start);
                    prop_assert!(u32::from(s.address) + u32::from(s.count) <= u32::from(r.start) + u32::from(r.count));
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
        }
    }
}
