-- Queue time (see src/clock.rs): ages are measured on a clock that wall-clock steps do not
-- move. Additive: a release that predates it ignores the column and the table.
--
-- The queue time at which each message was appended. NULL for rows written by a release that
-- predates this column (before the upgrade, or after a rollback): at open they are given the
-- queue time of that moment, found through the partial index without a scan.
ALTER TABLE messages ADD COLUMN queue_ms INTEGER;
CREATE INDEX messages_unclocked ON messages (id) WHERE queue_ms IS NULL;

-- One row: the queue time reached, and the last moment the wall clock was synchronized
-- (its wall time and the queue time then), from which time spent switched off is proven.
CREATE TABLE queue_clock (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    queue_ms        INTEGER NOT NULL,
    anchor_wall_ms  INTEGER,
    anchor_queue_ms INTEGER
);
