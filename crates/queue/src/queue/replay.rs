//! Applying the journal's commits to the database: at open after an unclean stop, and when
//! the open transaction was lost to an error (see `journal.rs`).

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
    journal: &mut Journal,
    found: Found,
) -> Result<Replayed, QueueError> {
    let db = |source| QueueError::Database {
        path: journal.path().to_owned(),
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
