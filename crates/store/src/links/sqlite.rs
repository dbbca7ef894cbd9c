//! The link map in SQLite: `links.db` in the data directory, this process's alone.

use super::{Link, LinkState, Scoped};
use std::path::Path;
use storage::{Database, Durability, StorageError};

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE links (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        target TEXT NOT NULL,
        last_event TEXT NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    ) WITHOUT ROWID;
",
    "
    CREATE INDEX links_by_key ON links (key);
",
    "
    ALTER TABLE links ADD COLUMN name TEXT NOT NULL DEFAULT '';
",
];

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
                    "SELECT state, target, last_event, name FROM links WHERE scope = ?1 AND key = ?2",
                )?;
                let mut rows = select.query((scope, key))?;
                rows.next()?.map(|row| link_at(row, 0)).transpose()
            })
            .await
    }

    pub(super) async fn of_keys(&self, keys: Vec<String>) -> Result<Vec<Scoped>, StorageError> {
        self.db
            .read(move |c| {
                let mut select = c.prepare_cached(
                    "SELECT scope, key, state, target, last_event, name FROM links WHERE key = ?1",
                )?;
                let mut found = Vec::new();
                for key in &keys {
                    let rows = select.query_map([key], |row| {
                        Ok(Scoped {
                            scope: row.get(0)?,
                            key: row.get(1)?,
                            link: link_at(row, 2)?,
                        })
                    })?;
                    for row in rows {
                        found.push(row?);
                    }
                }
                Ok(found)
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
            link.name.clone(),
        );
        self.db
            .execute(
                "INSERT INTO links (scope, key, state, target, last_event, updated, name) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (scope, key) DO UPDATE SET \
                 state = excluded.state, target = excluded.target, \
                 last_event = excluded.last_event, updated = excluded.updated, \
                 name = CASE WHEN excluded.name = '' AND excluded.target = links.target \
                 THEN links.name ELSE excluded.name END",
                row,
            )
            .await
            .map(drop)
    }
}

/// The link in `row`'s columns `at..at + 4` (state, target, last event, name).
fn link_at(row: &rusqlite::Row, at: usize) -> rusqlite::Result<Link> {
    Ok(Link {
        state: LinkState::parse(&row.get::<_, String>(at)?),
        target: row.get(at + 1)?,
        last_event: row.get(at + 2)?,
        name: row.get(at + 3)?,
    })
}
