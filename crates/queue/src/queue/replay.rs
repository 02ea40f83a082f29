//! Applying the journal's commits to the database: at open after an unclean stop, and when
//! the open transaction was lost to an error (see `journal.rs`).

use std::path::Path;

use sqlx::SqliteConnection;

use crate::QueueError;
use crate::journal::{Found, Journal};
use crate::store;

/// What a replay put back.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Replayed {
    /// Messages applied from the journal.
    pub(crate) messages: u64,
    /// Of them, given new ids (a release without the journal used theirs meanwhile).
    pub(crate) renumbered: u64,
}

/// Applies `found` (the journal's commits since its last reset) in one transaction, records
/// the journal's generation as folded in it, commits, and starts the journal over. Commits
/// the database already holds (a crash came between a fold's commit and the journal's reset)
/// are not applied twice.
pub(crate) async fn apply(
    conn: &mut SqliteConnection,
    db_path: &Path,
    journal: &mut Journal,
    found: Found,
) -> Result<Replayed, QueueError> {
    let db = |source| QueueError::Database {
        path: db_path.to_owned(),
        source,
    };
    let mut replayed = Replayed::default();
    let folded = store::folded_generation(conn).await.map_err(db)?;
    if !found.commits.is_empty() && folded != Some(found.generation) {
        store::control(conn, "BEGIN IMMEDIATE").await.map_err(db)?;
        let result = async {
            let given = store::last_id_given(conn).await?;
            for commit in &found.commits {
                replayed.renumbered += store::insert_replayed(conn, commit, given).await?;
                replayed.messages += commit.messages.len() as u64;
            }
            // Deletions name ids; once ids were given anew they might name other messages,
            // so then none is applied (those messages are sent again: at least once).
            if replayed.renumbered == 0 {
                for commit in &found.commits {
                    store::delete_ranges(conn, &commit.removed).await?;
                }
            }
            store::set_folded_generation(conn, found.generation).await?;
            store::control(conn, "COMMIT").await
        }
        .await;
        if let Err(e) = result {
            let _ = store::control(conn, "ROLLBACK").await;
            return Err(db(e));
        }
    }
    // Always a new generation: a commit after a damaged one, still in the file, is then never
    // read as one of the next commits.
    journal.reset().await.map_err(|source| QueueError::Io {
        path: journal.path().to_owned(),
        source,
    })?;
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use fieldlink_core::message::{Message, Priority, QoS};
    use fieldlink_core::ports::OutboxEntry;
    use fieldlink_core::topic::TopicName;

    use super::*;
    use crate::config::Durability;
    use crate::journal::Commit;

    fn entry(payload: &str) -> OutboxEntry {
        OutboxEntry {
            stream: "s".into(),
            priority: Priority::Normal,
            message: Message {
                topic: TopicName::new("site/s".to_owned()).unwrap(),
                payload: payload.as_bytes().to_vec(),
                qos: QoS::AtLeastOnce,
                retain: false,
            },
            properties: None,
        }
    }

    async fn rows(conn: &mut SqliteConnection) -> Vec<(i64, Vec<u8>)> {
        sqlx::query_as("SELECT id, payload FROM messages ORDER BY id")
            .fetch_all(conn)
            .await
            .unwrap()
    }

    fn found(
        generation: u64,
        messages: Vec<(i64, OutboxEntry)>,
        removed: Vec<(i64, i64)>,
    ) -> Found {
        Found {
            generation,
            commits: vec![Commit {
                messages,
                removed,
                ..Commit::default()
            }],
        }
    }

    /// A new database and journal in `dir`.
    async fn fresh(dir: &Path) -> (SqliteConnection, Journal) {
        let conn = store::open(&dir.join("q.db"), Durability::PowerSafe)
            .await
            .unwrap()
            .conn;
        let path = dir.join(crate::JOURNAL_FILE);
        let file = crate::journal::lock(&path).unwrap().unwrap();
        let (journal, _) = Journal::open(file, &path, true, false).unwrap();
        (conn, journal)
    }

    #[tokio::test]
    async fn commits_of_a_generation_the_database_holds_are_not_applied_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, mut journal) = fresh(dir.path()).await;
        // A fold committed generation 7, then the process died before the journal's reset.
        store::set_folded_generation(&mut conn, 7).await.unwrap();
        let done = apply(
            &mut conn,
            Path::new("q.db"),
            &mut journal,
            found(7, vec![(1, entry("a"))], vec![]),
        )
        .await
        .unwrap();
        assert_eq!(done.messages, 0);
        assert!(rows(&mut conn).await.is_empty());
        // The next generation's commits are applied, deletions included.
        let messages = vec![(1, entry("a")), (2, entry("b")), (3, entry("c"))];
        let done = apply(
            &mut conn,
            Path::new("q.db"),
            &mut journal,
            found(8, messages, vec![(2, 2)]),
        )
        .await
        .unwrap();
        assert_eq!((done.messages, done.renumbered), (3, 0));
        assert_eq!(
            rows(&mut conn).await,
            [(1, b"a".to_vec()), (3, b"c".to_vec())]
        );
        assert_eq!(store::folded_generation(&mut conn).await.unwrap(), Some(8));
    }

    #[tokio::test]
    async fn ids_an_older_release_gave_meanwhile_are_not_taken_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, mut journal) = fresh(dir.path()).await;
        // A release without the journal appended after the crash and took ids 1 and 2.
        store::insert(&mut conn, &[entry("old1"), entry("old2")], 0, 0)
            .await
            .unwrap();
        let messages = vec![(2, entry("j2")), (3, entry("j3"))];
        let done = apply(
            &mut conn,
            Path::new("q.db"),
            &mut journal,
            found(1, messages, vec![(1, 1)]),
        )
        .await
        .unwrap();
        assert_eq!((done.messages, done.renumbered), (2, 1));
        // Nothing of the older release's is deleted or overwritten; the journal's id 2 got a
        // new one, after every id given.
        let payloads: Vec<Vec<u8>> = rows(&mut conn).await.into_iter().map(|r| r.1).collect();
        assert_eq!(
            payloads,
            [
                b"old1".to_vec(),
                b"old2".to_vec(),
                b"j3".to_vec(),
                b"j2".to_vec()
            ]
        );
    }
}
