-- One row per message bound for the cloud. AUTOINCREMENT: ids are never reused, even after the
-- newest row is deleted, so an id is a stable, monotonic dedupe key for the cloud side.
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL,
    properties  BLOB,
    enqueued_ms INTEGER NOT NULL
);
-- Lease order: high priority first, then oldest first.
CREATE INDEX messages_by_priority ON messages (priority DESC, id);
-- Drop-oldest within one stream.
CREATE INDEX messages_by_stream ON messages (stream, id);
