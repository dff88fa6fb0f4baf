//! The SQLite index: one row per call, holding its parties, streams, DTMF events and hold periods,
//! and an append-only audit table (triggers refuse UPDATE and DELETE).
//!
//! Since schema version 3 a call is one row: the parties are columns (`from_number`, `to_name`, …,
//! NULL where unknown or empty, indexed for equality searches), and streams, DTMF events and hold
//! periods are compact JSON arrays in the row (`streams_json`, `dtmf_json`, `holds_json`). Nothing
//! searches inside them, and one row per call is a third of the B-tree writes of the child tables
//! it replaced. Views named like those tables (`parties`, `streams`, `dtmf`, `holds`) give scripts
//! and `show` the same rows and columns as before. Since version 4 the Call-ID, number and name
//! indexes lead with a time bucket of the call's start ([`BUCKET_SHIFT`]), so that ingest does not
//! slow down as the index grows; searches on them list the buckets ([`BUCKETS_CTE`]).
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
    // 3: one row per call (see the module doc). Also gone: the UNIQUE index on file_id (16 random
    // bytes, never searched), and the index on end_reason (searches compare it without case, which
    // that index could not serve).
    r#"
    CREATE TABLE calls_v3 (
        id INTEGER PRIMARY KEY,
        file_id TEXT NOT NULL,
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
        sip_messages INTEGER,
        from_number TEXT, from_name TEXT, from_uri TEXT,
        to_number TEXT, to_name TEXT, to_uri TEXT,
        -- [[idx, side, ssrc, codec, payload_type, clock, src, dst, packets, lost, duplicates,
        --   out_of_order, jitter_ms, mos, first_ns, last_ns, rtcp_fraction_lost, rtcp_jitter_ms,
        --   decodable], ...]
        streams_json TEXT,
        -- [[seq, at_ns, digit, source, side, duration_ms], ...]
        dtmf_json TEXT,
        -- [[start_ns, end_ns, by_side], ...]
        holds_json TEXT
    );
    INSERT INTO calls_v3
    SELECT c.id, c.file_id, c.call_id, c.start_ns, c.answer_ns, c.end_ns, c.duration_ms, c.end_reason, c.sip_code,
           c.codecs, c.dtmf, c.status, c.file, c.md5, c.bytes, c.sip_messages,
           nullif(a.number, ''), nullif(a.name, ''), nullif(a.uri, ''),
           nullif(b.number, ''), nullif(b.name, ''), nullif(b.uri, ''),
           (SELECT CASE WHEN count(*) THEN json_group_array(json_array(idx, side, ssrc, codec, payload_type, clock,
                   src, dst, packets, lost, duplicates, out_of_order, jitter_ms, mos, first_ns, last_ns,
                   rtcp_fraction_lost, rtcp_jitter_ms, decodable)) END
              FROM (SELECT * FROM streams s WHERE s.call = c.id ORDER BY idx)),
           (SELECT CASE WHEN count(*) THEN json_group_array(json_array(seq, at_ns, digit, source, side, duration_ms)) END
              FROM (SELECT * FROM dtmf d WHERE d.call = c.id ORDER BY seq)),
           (SELECT CASE WHEN count(*) THEN json_group_array(json_array(start_ns, end_ns, by_side)) END
              FROM (SELECT * FROM holds h WHERE h.call = c.id ORDER BY start_ns))
      FROM calls c
      LEFT JOIN parties a ON a.call = c.id AND a.role = 'caller'
      LEFT JOIN parties b ON b.call = c.id AND b.role = 'callee';
    DROP TABLE holds;
    DROP TABLE dtmf;
    DROP TABLE streams;
    DROP TABLE parties;
    DROP TABLE calls;
    ALTER TABLE calls_v3 RENAME TO calls;
    CREATE INDEX calls_call_id ON calls(call_id);
    CREATE INDEX calls_start ON calls(start_ns);
    CREATE INDEX calls_from ON calls(from_number) WHERE from_number IS NOT NULL;
    CREATE INDEX calls_to ON calls(to_number) WHERE to_number IS NOT NULL;
    CREATE INDEX calls_from_name ON calls(from_name COLLATE NOCASE) WHERE from_name IS NOT NULL;
    CREATE INDEX calls_to_name ON calls(to_name COLLATE NOCASE) WHERE to_name IS NOT NULL;
    CREATE VIEW parties(call, role, number, name, uri) AS
      SELECT id, 'caller', coalesce(from_number, ''), coalesce(from_name, ''), coalesce(from_uri, '')
        FROM calls WHERE status != 'recording'
      UNION ALL
      SELECT id, 'callee', coalesce(to_number, ''), coalesce(to_name, ''), coalesce(to_uri, '')
        FROM calls WHERE status != 'recording';
    CREATE VIEW streams(call, idx, side, ssrc, codec, payload_type, clock, src, dst, packets, lost, duplicates,
                        out_of_order, jitter_ms, mos, first_ns, last_ns, rtcp_fraction_lost, rtcp_jitter_ms,
                        decodable) AS
      SELECT c.id, j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5, j.value->>6,
             j.value->>7, j.value->>8, j.value->>9, j.value->>10, j.value->>11, j.value->>12, j.value->>13,
             j.value->>14, j.value->>15, j.value->>16, j.value->>17, j.value->>18
        FROM calls c, json_each(c.streams_json) j;
    CREATE VIEW dtmf(call, seq, at_ns, digit, source, side, duration_ms) AS
      SELECT c.id, j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5
        FROM calls c, json_each(c.dtmf_json) j;
    CREATE VIEW holds(call, start_ns, end_ns, by_side) AS
      SELECT c.id, j.value->>0, j.value->>1, j.value->>2
        FROM calls c, json_each(c.holds_json) j;
    "#,
    // 4: the Call-ID, number and name indexes lead with the call's start time bucket
    // (`start_ns >> 51`, see [`BUCKET_SHIFT`]), so that new rows go into the small subtree of the
    // current bucket instead of anywhere in an index of millions of random keys.
    r#"
    DROP INDEX calls_call_id;
    DROP INDEX calls_from;
    DROP INDEX calls_to;
    DROP INDEX calls_from_name;
    DROP INDEX calls_to_name;
    CREATE INDEX calls_call_id ON calls(start_ns >> 51, call_id);
    CREATE INDEX calls_from ON calls(start_ns >> 51, from_number) WHERE from_number IS NOT NULL;
    CREATE INDEX calls_to ON calls(start_ns >> 51, to_number) WHERE to_number IS NOT NULL;
    CREATE INDEX calls_from_name ON calls(start_ns >> 51, from_name COLLATE NOCASE) WHERE from_name IS NOT NULL;
    CREATE INDEX calls_to_name ON calls(start_ns >> 51, to_name COLLATE NOCASE) WHERE to_name IS NOT NULL;
    "#,
];

/// Width of the time buckets that lead the Call-ID, number and name indexes (migration 4): a
/// bucket is `start_ns >> 51`, 2^51 ns = 26 days.
///
/// Why: those keys arrive in random order. In one B-tree over all calls, every new row dirties a
/// random leaf page of each of those indexes, and once the indexes outgrow the page cache (a few
/// million calls) every commit rewrites thousands of scattered pages through the WAL and its
/// checkpoint (index bench, 10 M calls over five years: 24,115 calls/s). With the bucket in front,
/// new rows go into the current bucket's subtree, which stays small and cached however large the
/// index grows (70,677 calls/s). A search by Call-ID, number or name then seeks once per bucket
/// that has calls (about 70 over five years, found by [`BUCKETS_CTE`]): p99 4.5 ms instead of
/// 0.08 ms for a Call-ID at 10 M calls. 2^49 ns (6.5 days) ingested as fast but made that 16 ms.
pub const BUCKET_SHIFT: u32 = 51;

/// A CTE `buckets(b)` listing the buckets (see [`BUCKET_SHIFT`]) that hold calls, one seek per
/// bucket in the start-time index (a loose index scan), for searches on the bucketed indexes:
/// `WITH RECURSIVE {BUCKETS_CTE} SELECT … WHERE {IN_BUCKETS} AND c.call_id = ?`. It stops at the
/// last bucket, so `(b + 1) << 51` never overflows; on an empty index it yields one NULL.
pub const BUCKETS_CTE: &str = "buckets(b) AS (SELECT (SELECT min(start_ns) FROM calls) >> 51 \
     UNION ALL SELECT (SELECT min(start_ns) FROM calls WHERE start_ns >= ((b + 1) << 51)) >> 51 \
     FROM buckets WHERE b < ((SELECT max(start_ns) FROM calls) >> 51))";

/// The condition that lets SQLite seek a bucketed index once per bucket (with [`BUCKETS_CTE`]).
pub const IN_BUCKETS: &str = "(c.start_ns >> 51) IN (SELECT b FROM buckets)";

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

    /// Pages of WAL after which a commit on this connection checkpoints (0: never; someone else
    /// does, see [`crate::store::syncer`]).
    pub fn set_autocheckpoint(&self, pages: u32) -> Result<(), IndexError> {
        self.conn.execute_batch(&format!("PRAGMA wal_autocheckpoint={pages};")).map_err(|e| self.err(e))
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
        let some = |t: &str| (!t.is_empty()).then(|| t.to_string());
        let streams = json_rows(s.streams.iter().map(|x| {
            serde_json::json!([
                x.index,
                x.side.as_str(),
                x.ssrc,
                x.codec,
                x.payload_type,
                x.clock,
                x.src.map(|a| a.to_string()),
                x.dst.map(|a| a.to_string()),
                x.packets,
                x.lost,
                x.duplicates,
                x.out_of_order,
                x.jitter_ms,
                x.mos,
                x.first_ns,
                x.last_ns,
                x.rtcp_fraction_lost,
                x.rtcp_jitter_ms,
                x.decodable as u8
            ])
        }));
        let dtmf = json_rows(s.dtmf.iter().enumerate().map(|(i, x)| {
            let source = match x.source {
                crate::model::DtmfSource::Rfc4733 => "rfc4733",
                crate::model::DtmfSource::SipInfo => "sip-info",
            };
            serde_json::json!([i, x.at_ns, x.digit.to_string(), source, x.side.as_str(), x.duration_ms])
        }));
        let holds = json_rows(s.holds.iter().map(|x| serde_json::json!([x.start_ns, x.end_ns, x.by.as_str()])));
        self.conn
            .prepare_cached(
                "UPDATE calls SET answer_ns=?2, end_ns=?3, duration_ms=?4, end_reason=?5, sip_code=?6, codecs=?7,
                 dtmf=?8, status='complete', md5=?9, bytes=?10, sip_messages=?11, from_number=?12, from_name=?13,
                 from_uri=?14, to_number=?15, to_name=?16, to_uri=?17, streams_json=?18, dtmf_json=?19,
                 holds_json=?20 WHERE id=?1",
            )
            .and_then(|mut st| {
                st.execute(params![
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
                    s.sip_messages,
                    some(&s.caller.number),
                    some(&s.caller.name),
                    some(&s.caller.uri),
                    some(&s.callee.number),
                    some(&s.callee.name),
                    some(&s.callee.uri),
                    streams,
                    dtmf,
                    holds
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
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

/// A JSON array of rows, or None (NULL in the index) when there are none.
fn json_rows(rows: impl Iterator<Item = serde_json::Value>) -> Option<String> {
    let rows: Vec<_> = rows.collect();
    (!rows.is_empty()).then(|| serde_json::Value::Array(rows).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dtmf, DtmfSource, EndReason, Hold, Party, Side, StreamSummary};
    use crate::store::query::{CallView, Filter, load_call};

    const T: i64 = 1_700_000_000_000_000_000;

    fn stream(index: u8, side: Side, rtcp: bool) -> StreamSummary {
        StreamSummary {
            index,
            side,
            ssrc: 0xdead_beef - index as u32,
            codec: "PCMA".into(),
            payload_type: 8,
            clock: 8000,
            src: (index == 0).then(|| "10.0.0.1:4000".parse().unwrap()),
            dst: Some("10.0.0.2:5000".parse().unwrap()),
            packets: 1500 + index as u64,
            lost: 3,
            duplicates: 1,
            out_of_order: 2,
            jitter_ms: 0.25,
            mos: 4.1,
            first_ns: T + 1,
            last_ns: T + 30_000_000_000,
            rtcp_fraction_lost: rtcp.then_some(0.5),
            rtcp_jitter_ms: rtcp.then_some(1.5),
            decodable: index == 0,
        }
    }

    fn summary() -> CallSummary {
        CallSummary {
            call_id: "abc@host".into(),
            caller: Party { number: "4420123".into(), name: "Ann Lee".into(), uri: "sip:4420123@a".into() },
            callee: Party { number: "555".into(), name: String::new(), uri: "sip:555@b".into() },
            start_ns: T,
            answer_ns: Some(T + 2_000_000_000),
            end_ns: T + 31_000_000_000,
            end_reason: EndReason::CalleeBye,
            sip_code: None,
            codecs: vec!["PCMA".into()],
            dtmf: vec![
                Dtmf {
                    at_ns: T + 5_000_000_000,
                    digit: '4',
                    source: DtmfSource::Rfc4733,
                    side: Side::Caller,
                    duration_ms: 120,
                },
                Dtmf {
                    at_ns: T + 6_000_000_000,
                    digit: '#',
                    source: DtmfSource::SipInfo,
                    side: Side::Callee,
                    duration_ms: 0,
                },
            ],
            holds: vec![
                Hold { start_ns: T + 10_000_000_000, end_ns: Some(T + 12_000_000_000), by: Side::Callee },
                Hold { start_ns: T + 20_000_000_000, end_ns: None, by: Side::Caller },
            ],
            streams: vec![stream(0, Side::Caller, true), stream(1, Side::Callee, false)],
            payload_types: vec![],
            sip_messages: 7,
        }
    }

    fn view(index: &Index, id: i64) -> serde_json::Value {
        let v: CallView = load_call(index, id).unwrap().expect("the call is in the index");
        serde_json::to_value(v).unwrap()
    }

    fn search(index: &Index, expr: &[&str]) -> Vec<i64> {
        let mut f = Filter::default();
        for e in expr {
            f.add_where(e).unwrap();
        }
        f.ids(index, None).unwrap()
    }

    fn check_call(v: &serde_json::Value) {
        assert_eq!(v["from"], "4420123");
        assert_eq!(v["from_name"], "Ann Lee");
        assert_eq!(v["to"], "555");
        assert_eq!(v["to_name"], "");
        assert_eq!(v["to_uri"], "sip:555@b");
        assert_eq!(v["status"], "complete");
        assert_eq!(v["dtmf"], "4#");
        let s = &v["streams"];
        assert_eq!(s.as_array().unwrap().len(), 2, "{s}");
        assert_eq!(s[0]["direction"], "caller");
        assert_eq!(s[0]["ssrc"], 0xdead_beef_u32);
        assert_eq!(s[0]["packets"], 1500);
        assert_eq!(s[0]["src"], "10.0.0.1:4000");
        assert_eq!(s[1]["src"], serde_json::Value::Null);
        assert_eq!(s[0]["jitter_ms"], 0.25);
        assert_eq!(s[0]["rtcp_fraction_lost"], 0.5);
        assert_eq!(s[1]["rtcp_jitter_ms"], serde_json::Value::Null);
        assert_eq!(s[0]["decodable"], true);
        assert_eq!(s[1]["decodable"], false);
        let d = &v["dtmf_events"];
        assert_eq!(
            (d[0]["digit"].as_str(), d[0]["source"].as_str(), d[0]["offset_ms"].as_i64()),
            (Some("4"), Some("rfc4733"), Some(5000))
        );
        assert_eq!(
            (d[1]["digit"].as_str(), d[1]["source"].as_str(), d[1]["direction"].as_str()),
            (Some("#"), Some("sip-info"), Some("callee"))
        );
        let h = &v["holds"];
        assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
        assert_eq!(h[0]["by"], "callee");
        assert!(h[0]["end"].is_string() && h[1]["end"].is_null(), "{h}");
    }

    /// Searches on the party columns, and that the number and Call-ID searches use an index.
    fn check_search(index: &Index, id: i64, recording: i64) {
        assert_eq!(search(index, &["from = 4420123"]), vec![id]);
        assert_eq!(search(index, &["to = 555"]), vec![id]);
        assert_eq!(search(index, &[r#"from-name = "ann lee""#]), vec![id]);
        assert_eq!(search(index, &["to-name empty", "status = complete"]), vec![id]);
        // The callee has no name (NULL in the index): it still differs from "Zed".
        assert_eq!(search(index, &["to-name != Zed", "status = complete"]), vec![id]);
        assert_eq!(search(index, &["call-id = abc@host"]), vec![id]);
        assert_eq!(search(index, &["status = recording"]), vec![recording]);
        let mut f = Filter::default();
        f.add_text("0123");
        assert_eq!(f.ids(index, None).unwrap(), vec![id]);
        for (cond, idx) in [
            ("c.from_number = ?1", "calls_from"),
            ("c.to_number = ?1", "calls_to"),
            ("c.call_id = ?1", "calls_call_id"),
            ("c.from_name = ?1 COLLATE NOCASE", "calls_from_name"),
            ("c.to_name = ?1 COLLATE NOCASE", "calls_to_name"),
        ] {
            let plan: Vec<String> = index
                .conn
                .prepare(&format!(
                    "EXPLAIN QUERY PLAN WITH RECURSIVE {BUCKETS_CTE} SELECT id FROM calls c WHERE {IN_BUCKETS} AND {cond}"
                ))
                .unwrap()
                .query_map(["x"], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // One seek per bucket: the bucket and the column both constrain the index.
            assert!(plan.iter().any(|p| p.contains(&format!("INDEX {idx} (<expr>=? AND "))), "{cond}: {plan:?}");
        }
    }

    /// Searches on the bucketed indexes find calls in every bucket that has them, from before 1970
    /// to the last representable bucket, and the bucket list ends (no overflow past the last one).
    #[test]
    fn bucketed_searches_find_calls_in_every_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("index.sqlite")).unwrap();
        // An empty index: the bucket list is one NULL and nothing matches.
        assert!(search(&index, &["call-id = nobody"]).is_empty());
        let bucket = 1i64 << BUCKET_SHIFT;
        let starts = [-3 * bucket - 5, -1, 0, T, T + bucket, T + 40 * bucket + 17, i64::MAX - 1];
        let mut ids = Vec::new();
        for (k, &start) in starts.iter().enumerate() {
            let id = index.insert_started(&format!("{k:02x}"), &format!("c{k}@h"), start, "r/x.crec").unwrap();
            let mut s = summary();
            s.call_id = format!("c{k}@h");
            s.start_ns = start;
            s.caller.number = format!("+44{k}");
            s.caller.name = format!("Name {k}");
            index.complete(id, &s, "0123456789abcdef0123456789abcdef", 1).unwrap();
            ids.push(id);
        }
        index.commit().unwrap();
        for (k, id) in ids.iter().enumerate() {
            assert_eq!(search(&index, &[&format!("call-id = c{k}@h")]), vec![*id], "call {k}");
            assert_eq!(search(&index, &[&format!("from = +44{k}")]), vec![*id], "call {k}");
            assert_eq!(search(&index, &[&format!(r#"from-name = "NAME {k}""#)]), vec![*id], "call {k}");
        }
        // Every callee is 555, newest first; a prefix search spans every bucket too.
        let mut newest_first = ids.clone();
        newest_first.reverse();
        assert_eq!(search(&index, &["to = 555"]), newest_first);
        assert_eq!(search(&index, &["from starts-with +44"]), newest_first);
        let buckets: i64 = index
            .conn
            .query_row(&format!("WITH RECURSIVE {BUCKETS_CTE} SELECT count(*) FROM buckets"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(buckets, 7, "one row per bucket holding calls");
        // The SQL spells the shift out; it must be BUCKET_SHIFT everywhere.
        let shift = format!(">> {BUCKET_SHIFT}");
        assert_eq!(MIGRATIONS[3].matches(&shift).count(), 5, "migration 4's indexes");
        assert_eq!(BUCKETS_CTE.matches(&shift).count() + BUCKETS_CTE.matches(&format!("<< {BUCKET_SHIFT}")).count(), 4);
        assert!(IN_BUCKETS.contains(&shift));
    }

    #[test]
    fn a_call_round_trips_through_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("index.sqlite")).unwrap();
        let id = index.insert_started("00ff", "abc@host", T, "recordings/a.crec").unwrap();
        let recording = index.insert_started("01ff", "other@host", T + 1, "recordings/b.crec").unwrap();
        index.complete(id, &summary(), "0123456789abcdef0123456789abcdef", 1234).unwrap();
        index.commit().unwrap();
        check_call(&view(&index, id));
        check_search(&index, id, recording);
        // A call still recording has no parties yet, and the parties view shows none for it.
        let n: i64 =
            index.conn.query_row("SELECT count(*) FROM parties WHERE call = ?1", [recording], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
        // Erasure leaves nothing of the call in the views.
        index.delete_call(id).unwrap();
        for t in ["parties", "streams", "dtmf", "holds"] {
            let n: i64 = index.conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0)).unwrap();
            assert_eq!(n, 0, "{t}");
        }
    }

    /// An index written by a callrec with schema version 2 (child tables) opens as version 3 with
    /// every call, party, stream, DTMF event and hold period intact.
    #[test]
    fn a_version_2_index_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!("{} {} PRAGMA user_version = 2;", MIGRATIONS[0], MIGRATIONS[1])).unwrap();
            let s = summary();
            c.execute_batch(&format!(
                "INSERT INTO calls (id, file_id, call_id, start_ns, answer_ns, end_ns, duration_ms, end_reason, codecs, dtmf,
                                    status, file, md5, bytes, sip_messages)
                 VALUES (7, '00ff', 'abc@host', {T}, {}, {}, 31000, 'callee-bye', 'PCMA', '4#', 'complete', 'recordings/a.crec',
                         '0123456789abcdef0123456789abcdef', 1234, 7);
                 INSERT INTO calls (id, file_id, call_id, start_ns, status, file) VALUES (8, '01ff', 'other@host', {}, 'recording', 'recordings/b.crec');
                 INSERT INTO parties VALUES (7, 'caller', '4420123', 'Ann Lee', 'sip:4420123@a'), (7, 'callee', '555', '', 'sip:555@b');
                 INSERT INTO dtmf VALUES (7, 1, {}, '#', 'sip-info', 'callee', 0), (7, 0, {}, '4', 'rfc4733', 'caller', 120);
                 INSERT INTO holds VALUES (7, {}, NULL, 'caller'), (7, {}, {}, 'callee');",
                T + 2_000_000_000,
                T + 31_000_000_000,
                T + 1,
                T + 6_000_000_000,
                T + 5_000_000_000,
                T + 20_000_000_000,
                T + 10_000_000_000,
                T + 12_000_000_000,
            ))
            .unwrap();
            for x in s.streams.iter().rev() {
                c.execute(
                    "INSERT INTO streams VALUES (7,?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19)",
                    params![
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
                    ],
                )
                .unwrap();
            }
        }
        let index = Index::open(&path).unwrap();
        let version: i64 = index.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let v = view(&index, 7);
        check_call(&v);
        assert_eq!(v["md5"], "0123456789abcdef0123456789abcdef");
        assert_eq!(v["file"], "recordings/a.crec");
        check_search(&index, 7, 8);
        assert_eq!(view(&index, 8)["from"], "");
    }
}
