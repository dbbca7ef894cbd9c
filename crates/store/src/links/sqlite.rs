//! The link map in SQLite: `links.db` in the data directory, this process's alone.

use super::{Link, LinkState};
use std::path::Path;
use storage::{Database, Durability, StorageError};

const MIGRATIONS: &[&str] = &["
    CREATE TABLE links (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        target TEXT NOT NULL,
        last_event TEXT NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    ) WITHOUT ROWID;
"];

#[derive(Clone)]
pub(super) struct SqliteLinks {
    db: Database,
}

impl SqliteLinks {
    pub(super) fn open(path: &Path) -> Result<Self, StorageError> {
        Ok(SqliteLinks {
            db: Database::open(path, MIGRATIONS, Durability::Full, None)?,
        })
    }

    pub(super) async fn get(&self, scope: &str, key: &str) -> Result<Option<Link>, StorageError> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.db
            .read(move |c| {
                let mut select = c.prepare_cached(
                    "SELECT state, target, last_event FROM links WHERE scope = ?1 AND key = ?2",
                )?;
                let mut rows = select.query((scope, key))?;
                rows.next()?
                    .map(|row| {
                        Ok(Link {
                            state: LinkState::parse(&row.get::<_, String>(0)?),
                            target: row.get(1)?,
                            last_event: row.get(2)?,
                        })
                    })
                    .transpose()
            })
            .await
    }

    pub(super) async fn put(
        &self,
        scope: &str,
        key: &str,
        link: &Link,
    ) -> Result<(), StorageError> {
        let row = (
            scope.to_owned(),
            key.to_owned(),
            link.state.as_str(),
            link.target.clone(),
            link.last_event.clone(),
            clock::now_epoch_seconds(),
        );
        self.db
            .execute(
                "INSERT INTO links (scope, key, state, target, last_event, updated) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (scope, key) DO UPDATE SET \
                 state = excluded.state, target = excluded.target, \
                 last_event = excluded.last_event, updated = excluded.updated",
                row,
            )
            .await
            .map(drop)
    }
}
