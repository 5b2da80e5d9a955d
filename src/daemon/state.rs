//! Persistent state under the state directory: an embedded database (redb) for what
//! must survive a restart (peer name, direct peers; later IPAM and DNS), and a lock
//! file so two daemons never share one directory.
//!
//! Every write is a committed transaction before the caller acknowledges anything.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Keyed records, each a postcard-encoded value.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub(crate) const DB_FILE: &str = "weave.db";
pub(crate) const LOCK_FILE: &str = "weave.lock";
pub(crate) const LOG_FILE: &str = "weave.log";

/// The files a daemon owns in its state directory (`weave reset` removes them).
pub(crate) fn owned_files(dir: &Path) -> Vec<PathBuf> {
    [DB_FILE, LOCK_FILE, LOG_FILE]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

pub(crate) struct State {
    db: Database,
    dir: PathBuf,
    /// Held (locked) for the daemon's lifetime.
    _lock: File,
}

impl State {
    /// Opens (creating if needed) the state in `dir`; fails if another daemon holds it.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                anyhow::bail!(
                    "weave is already running with state directory {}",
                    dir.display()
                )
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        let db_path = dir.join(DB_FILE);
        let db = Database::create(&db_path)
            .with_context(|| format!("cannot open database {}", db_path.display()))?;
        let state = Self {
            db,
            dir: dir.to_owned(),
            _lock: lock,
        };
        // Make sure the table exists so reads never fail on a fresh database.
        let txn = state.db.begin_write()?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(state)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        let Some(value) = table.get(key)? else {
            return Ok(None);
        };
        match postcard::from_bytes(value.value()) {
            Ok(decoded) => Ok(Some(decoded)),
            Err(err) => {
                tracing::warn!(key, %err, "ignoring unreadable persisted value");
                Ok(None)
            }
        }
    }

    /// Writes `value` under `key` durably.
    pub(crate) fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = postcard::to_stdvec(value)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(META)?;
            table.insert(key, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Runs `f` in one write transaction (tables of its own, several changes at once)
    /// and commits it durably before returning.
    pub(crate) fn write<R>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R>,
    ) -> Result<R> {
        let txn = self.db.begin_write()?;
        let result = f(&txn)?;
        txn.commit()?;
        Ok(result)
    }

    /// Runs `f` in a read transaction.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<R>) -> Result<R> {
        let txn = self.db.begin_read()?;
        f(&txn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_reopening_and_a_second_daemon_is_refused() {
        let dir = std::env::temp_dir().join(format!("weave-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let state = State::open(&dir).unwrap();
            state
                .put("targets", &vec!["192.0.2.1:6783".to_string()])
                .unwrap();
            let second = State::open(&dir);
            assert!(second.is_err_and(|e| e.to_string().contains("already running")));
        }
        let state = State::open(&dir).unwrap();
        assert_eq!(
            state.get::<Vec<String>>("targets").unwrap(),
            Some(vec!["192.0.2.1:6783".to_string()])
        );
        assert_eq!(state.get::<u64>("missing").unwrap(), None);
        drop(state);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
