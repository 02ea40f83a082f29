-- The queue file's format, for updates and rollbacks (see src/format.rs): the format of the
-- newest release that wrote the file, and the oldest format that can still read it. A release
-- refuses, untouched, a file whose `readable_from` is above its own format, with that message;
-- an additive change keeps `readable_from`, so the release before it reads the file.
-- Additive.
CREATE TABLE format (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    version       INTEGER NOT NULL,
    readable_from INTEGER NOT NULL
);
