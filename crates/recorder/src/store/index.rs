//! The SQLite index: one row per call, with its parties, streams, DTMF, hold periods and payload
//! types in child tables, and an append-only audit table (triggers refuse UPDATE and DELETE).
//!
//! WAL mode, `synchronous=NORMAL` and batched transactions make ingest fast; `secure_delete` and a
//! WAL checkpoint after erasure make sure deleted parties do not linger in free pages. Schema
//! changes are numbered migrations keyed on `PRAGMA user_version`.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;

use crate::model::CallSummary;

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("index {path}: {source}")]
    Sql { path: String, source: rusqlite::Error },
    #[error("index {path} has schema version {found}, newer than this callrec understands ({known}); upgrade callrec")]
    TooNew { path: String, found: i64, known: i64 },
}

const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        file_id TEXT NOT NULL UNIQUE,
        call_id TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        answer_ns INTEGER,
        end_ns INTEGER,
        duration_ms INTEGER,
        end_reason TEXT,
        sip_code INTEGER,
        codecs TEXT NOT NULL DEFAULT '',
        dtmf TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,            -- recording | complete
        file TEXT NOT NULL,              -- relative to the store
        md5 TEXT,
        bytes INTEGER,
        sip_messages INTEGER
    );
    CREATE INDEX calls_call_id ON calls(call_id);
    CREATE INDEX calls_start ON calls(start_ns);
    CREATE INDEX calls_end_reason ON calls(end_reason);
    CREATE TABLE parties (
        call INTEGER NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        role TEXT NOT NULL,              -- caller | callee
        number TEXT NOT NULL,
        name TEXT NOT NULL,
        uri TEXT NOT NULL,
        PRIMARY KEY (call, role)
    ) WITHOUT ROWID;
    CREATE INDEX parties_number ON parties(number, role);
    CREATE INDEX parties_name ON parties(name COLLATE NOCASE, role);
    CREATE TABLE streams (
        call INTEGER NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        side TEXT NOT NULL,
        ssrc INTEGER NOT NULL,
        codec TEXT NOT NULL,
        payload_type INTEGER NOT NULL,
        clock INTEGER NOT NULL,
        src TEXT, dst TEXT,
        packets INTEGER NOT NULL, lost INTEGER NOT NULL, duplicates INTEGER NOT NULL,
        out_of_order INTEGER NOT NULL, jitter_ms REAL NOT NULL, mos REAL NOT NULL,
        first_ns INTEGER, last_ns INTEGER,
        rtcp_fraction_lost REAL, rtcp_jitter_ms REAL,
        decodable INTEGER NOT NULL,
        PRIMARY KEY (call, idx)
    ) WITHOUT ROWID;
    CREATE TABLE dtmf (
        call INTEGER NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at_ns INTEGER NOT NULL,
        digit TEXT NOT NULL,
        source TEXT NOT NULL,
        side TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        PRIMARY KEY (call, seq)
    ) WITHOUT ROWID;
    CREATE TABLE holds (
        call INTEGER NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER,
        by_side TEXT NOT NULL
    );
    CREATE INDEX holds_call ON holds(call);
    CREATE TABLE payload_types (
        call INTEGER NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        side TEXT NOT NULL,
        pt INTEGER NOT NULL,
        codec TEXT NOT NULL,
        clock INTEGER NOT NULL
    );
    CREATE INDEX payload_types_call ON payload_types(call);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        user TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END;
    "#,
    // 2: payload-type maps leave the index. Nothing searched them (`codec` searches calls.codecs),
    // the recording keeps them for export, and four rows per call cost a fifth of ingest.
    r#"
    DROP TABLE payload_types;
    "#,
];

/// One audit entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub user: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

pub struct Index {
    pub(crate) conn: Connection,
    path: String,
    in_tx: usize,
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let p = path.display().to_string();
        let sql = |source| IndexError::Sql { path: p.clone(), source };
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(sql)?;
        conn.execute_batch(
            // 64 MiB of page cache: the Call-ID, file-id and number indexes take keys in random
            // order, and with SQLite's default 2 MiB each insert into a large index misses.
            // Checkpoint the WAL every 20,000 pages (~80 MB) instead of 1,000: the same hot index
            // pages are then copied back to the database once per checkpoint, not over and over
            // (ingest at 1 M rows: 19,400-20,300 -> 25,200-25,500 calls/s, two pairs of runs;
            // 50,000 pages gave no more).
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON;
             PRAGMA cache_size=-65536; PRAGMA wal_autocheckpoint=20000;",
        )
        .map_err(sql)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(IndexError::TooNew { path: p, found: version, known });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = format!("BEGIN IMMEDIATE; {m}; PRAGMA user_version = {}; COMMIT;", i + 1);
            conn.execute_batch(&tx).map_err(sql)?;
        }
        crate::store::query::register_functions(&conn).map_err(sql)?;
        Ok(Index { conn, path: p, in_tx: 0 })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn err(&self, source: rusqlite::Error) -> IndexError {
        IndexError::Sql { path: self.path.clone(), source }
    }

    /// Starts a write batch if none is open; [`Index::commit`] ends it. Batching makes ingest fast.
    pub fn begin(&mut self) -> Result<(), IndexError> {
        if self.in_tx == 0 {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.err(e))?;
        }
        self.in_tx += 1;
        Ok(())
    }

    pub fn commit(&mut self) -> Result<(), IndexError> {
        if self.in_tx > 0 {
            self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))?;
            self.in_tx = 0;
        }
        Ok(())
    }

    pub fn pending_writes(&self) -> usize {
        self.in_tx
    }

    /// A row for a call that has started recording.
    pub fn insert_started(
        &mut self,
        file_id: &str,
        call_id: &str,
        start_ns: i64,
        file: &str,
    ) -> Result<i64, IndexError> {
        self.begin()?;
        self.conn
            .prepare_cached(
                "INSERT INTO calls (file_id, call_id, start_ns, status, file) VALUES (?1, ?2, ?3, 'recording', ?4)",
            )
            .and_then(|mut st| st.execute(params![file_id, call_id, start_ns, file]))
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Fills in a finished call.
    pub fn complete(&mut self, id: i64, s: &CallSummary, md5: &str, bytes: u64) -> Result<(), IndexError> {
        self.begin()?;
        let c = &self.conn;
        let r = (|| -> rusqlite::Result<()> {
            c.prepare_cached(
                "UPDATE calls SET answer_ns=?2, end_ns=?3, duration_ms=?4, end_reason=?5, sip_code=?6, codecs=?7,
                 dtmf=?8, status='complete', md5=?9, bytes=?10, sip_messages=?11 WHERE id=?1",
            )?
            .execute(params![
                id,
                s.answer_ns,
                s.end_ns,
                s.duration_ms(),
                s.end_reason.as_str(),
                s.sip_code,
                s.codecs.join(","),
                s.dtmf_string(),
                md5,
                bytes as i64,
                s.sip_messages
            ])?;
            let mut party = c.prepare_cached("INSERT OR REPLACE INTO parties VALUES (?1, ?2, ?3, ?4, ?5)")?;
            party.execute(params![id, "caller", s.caller.number, s.caller.name, s.caller.uri])?;
            party.execute(params![id, "callee", s.callee.number, s.callee.name, s.callee.uri])?;
            let mut st = c.prepare_cached(
                "INSERT OR REPLACE INTO streams VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)",
            )?;
            for x in &s.streams {
                st.execute(params![
                    id,
                    x.index,
                    x.side.as_str(),
                    x.ssrc,
                    x.codec,
                    x.payload_type,
                    x.clock,
                    x.src.map(|a| a.to_string()),
                    x.dst.map(|a| a.to_string()),
                    x.packets as i64,
                    x.lost as i64,
                    x.duplicates as i64,
                    x.out_of_order as i64,
                    x.jitter_ms,
                    x.mos,
                    x.first_ns,
                    x.last_ns,
                    x.rtcp_fraction_lost,
                    x.rtcp_jitter_ms,
                    x.decodable
                ])?;
            }
            let mut d = c.prepare_cached("INSERT OR REPLACE INTO dtmf VALUES (?1,?2,?3,?4,?5,?6,?7)")?;
            for (i, x) in s.dtmf.iter().enumerate() {
                let source = match x.source {
                    crate::model::DtmfSource::Rfc4733 => "rfc4733",
                    crate::model::DtmfSource::SipInfo => "sip-info",
                };
                d.execute(params![id, i as i64, x.at_ns, x.digit.to_string(), source, x.side.as_str(), x.duration_ms])?;
            }
            let mut h = c.prepare_cached("INSERT INTO holds VALUES (?1,?2,?3,?4)")?;
            for x in &s.holds {
                h.execute(params![id, x.start_ns, x.end_ns, x.by.as_str()])?;
            }
            Ok(())
        })();
        r.map_err(|e| self.err(e))
    }

    /// Appends an audit entry (its own statement; inside the current batch if one is open).
    pub fn audit(&mut self, user: &str, action: &str, target: &str, detail: &str) -> Result<(), IndexError> {
        let at = crate::timefmt::rfc3339_ns(crate::timefmt::now_ns());
        self.conn
            .execute(
                "INSERT INTO audit (at, user, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![at, user, action, target, detail],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// File path (relative), md5 and status of a call.
    pub fn file_of(&self, id: i64) -> Result<Option<(String, Option<String>, String)>, IndexError> {
        self.conn
            .query_row("SELECT file, md5, status FROM calls WHERE id=?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Deletes a call's rows (children cascade).
    pub fn delete_call(&mut self, id: i64) -> Result<(), IndexError> {
        self.conn.execute("DELETE FROM calls WHERE id=?1", [id]).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// After erasure: push the WAL into the database and truncate it, so no old page survives there.
    pub fn checkpoint(&self) -> Result<(), IndexError> {
        self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").map_err(|e| self.err(e))
    }

    pub fn all_ids(&self) -> Result<Vec<i64>, IndexError> {
        let mut st = self.conn.prepare("SELECT id FROM calls ORDER BY id").map_err(|e| self.err(e))?;
        let rows = st.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    pub fn set_md5(&mut self, id: i64, md5: &str) -> Result<(), IndexError> {
        self.conn.execute("UPDATE calls SET md5=?2 WHERE id=?1", params![id, md5]).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Audit rows, newest last.
    pub fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>, IndexError> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM (SELECT id, at, user, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([limit], |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    user: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}
