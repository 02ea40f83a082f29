-- A clean close leaves the queue's depth here; the next open takes it and deletes it at once.
-- Its presence proves that nothing has touched the file since a clean close (no power cut, no
-- kill): the start then trusts the saved depth instead of scanning every row, and skips the
-- full integrity check, so that starting takes the same time whatever the backlog. Without it
-- (the first start, or after an unclean stop) the start scans and checks as before.
-- Additive: a release that predates it refuses the file on the unknown migration (sqlx), and
-- so can never leave a stale depth behind.
CREATE TABLE clean_close (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    closed_ms INTEGER NOT NULL
);
CREATE TABLE clean_close_depth (
    stream   TEXT    PRIMARY KEY,
    messages INTEGER NOT NULL,
    bytes    INTEGER NOT NULL
);
