-- The commit journal (see src/journal.rs): the generation of the journal whose commits the
-- database holds, written in the transaction of every fold. After a crash between a fold's
-- commit and the journal's reset, the journal's commits are then known to be in the database
-- already and are not applied twice. Additive: a release that predates it ignores the table.
CREATE TABLE journal_folded (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
