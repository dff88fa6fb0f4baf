//! Search: `FIELD OP [VALUE]` expressions compiled to parameterised SQL over the index, and the
//! call view that `search --json` and `show` print.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use serde::Serialize;
use thiserror::Error;

use super::index::{BUCKETS_CTE, IN_BUCKETS, Index, IndexError};
use crate::timefmt::{now_ns, parse_instant, parse_span, rfc3339_ms};

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("--where {expr:?}: {why}")]
    Bad { expr: String, why: String },
    #[error(transparent)]
    Index(#[from] IndexError),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text { nocase: bool },
    Int,
    Duration,
    Time,
    List,
}

/// Searchable fields: name, SQL expression, kind, help.
const FIELDS: &[(&str, &str, Kind)] = &[
    ("id", "c.id", Kind::Int),
    ("call-id", "c.call_id", Kind::Text { nocase: false }),
    ("from", "c.from_number", Kind::Text { nocase: false }),
    ("to", "c.to_number", Kind::Text { nocase: false }),
    ("from-name", "c.from_name", Kind::Text { nocase: true }),
    ("to-name", "c.to_name", Kind::Text { nocase: true }),
    ("from-uri", "c.from_uri", Kind::Text { nocase: true }),
    ("to-uri", "c.to_uri", Kind::Text { nocase: true }),
    ("start", "c.start_ns", Kind::Time),
    ("answer", "c.answer_ns", Kind::Time),
    ("end", "c.end_ns", Kind::Time),
    ("duration", "c.duration_ms", Kind::Duration),
    ("codec", "c.codecs", Kind::List),
    ("end-reason", "c.end_reason", Kind::Text { nocase: true }),
    ("sip-code", "c.sip_code", Kind::Int),
    ("dtmf", "c.dtmf", Kind::Text { nocase: false }),
    ("md5", "c.md5", Kind::Text { nocase: true }),
    ("status", "c.status", Kind::Text { nocase: true }),
];

pub fn field_names() -> Vec<&'static str> {
    FIELDS.iter().map(|f| f.0).collect()
}

pub const OPERATORS: &[&str] = &[
    "=",
    "!=",
    "starts-with",
    "ends-with",
    "contains",
    "empty",
    "not-empty",
    "like",
    "matches",
    "<",
    "<=",
    ">",
    ">=",
    "before",
    "after",
    "between",
    "older-than",
    "newer-than",
];

/// Registers `regexp(pattern, text)` for the `matches` operator.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    // SQLite's lower() folds ASCII only; names are often Cyrillic, Greek, accented…
    conn.create_scalar_function(
        "ulower",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| Ok(ctx.get::<Option<String>>(0)?.map(|s| s.to_lowercase())),
    )?;
    conn.create_scalar_function("regexp", 2, FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC, |ctx| {
        let re: std::sync::Arc<regex::Regex> = ctx
            .get_or_create_aux(0, |vr| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                Ok(regex::Regex::new(vr.as_str()?)?)
            })?;
        let text: Option<String> = ctx.get(1)?;
        Ok(text.is_some_and(|t| re.is_match(&t)))
    })
}

/// Splits an expression into words; quotes group words (`from-name = "Ann Lee"`).
fn words(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut had = false;
    for c in expr.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                had = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if had || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    had = false;
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if had || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn glob_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '*' | '?' | '[' => {
                o.push('[');
                o.push(c);
                o.push(']');
            }
            _ => o.push(c),
        }
    }
    o
}

/// A compiled filter: SQL condition and its parameters.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    conds: Vec<String>,
    params: Vec<Value>,
    /// A condition can use one of the bucketed indexes (Call-ID, numbers, names; see
    /// [`crate::store::index::BUCKET_SHIFT`]), so the query lists the buckets for SQLite to seek.
    bucketed: bool,
}

/// Columns whose index leads with the start-time bucket.
const BUCKETED: &[&str] = &["c.call_id", "c.from_number", "c.to_number", "c.from_name", "c.to_name"];

impl Filter {
    /// Adds one `FIELD OP [VALUE]` expression.
    pub fn add_where(&mut self, expr: &str) -> Result<(), QueryError> {
        let bad = |why: String| QueryError::Bad { expr: expr.to_string(), why };
        let w = words(expr);
        // Accept `from=123` written without spaces.
        let w = if w.len() == 1 {
            match ["!=", "<=", ">=", "=", "<", ">"].iter().find_map(|op| w[0].split_once(op).map(|(a, b)| (a, *op, b)))
            {
                Some((f, op, v)) => vec![f.to_string(), op.to_string(), v.to_string()],
                None => w,
            }
        } else {
            w
        };
        let (field, op) = match (w.first(), w.get(1)) {
            (Some(f), Some(o)) => (f.to_ascii_lowercase(), o.to_ascii_lowercase()),
            _ => return Err(bad(format!("expected FIELD OP [VALUE]; operators: {}", OPERATORS.join(" ")))),
        };
        let Some(&(_, col, kind)) = FIELDS.iter().find(|f| f.0 == field) else {
            return Err(bad(format!("unknown field {field:?}; fields: {}", field_names().join(" "))));
        };
        let vals = &w[2..];
        let need = |n: usize| -> Result<(), QueryError> {
            if vals.len() == n {
                Ok(())
            } else {
                Err(bad(format!("operator {op} takes {n} value(s), got {}", vals.len())))
            }
        };
        let value = |s: &str| -> Result<Value, QueryError> {
            match kind {
                Kind::Int => {
                    s.parse::<i64>().map(Value::Integer).map_err(|_| bad(format!("{s:?} is not a whole number")))
                }
                Kind::Duration => parse_span(s)
                    .map(|ns| Value::Integer(ns / 1_000_000))
                    .ok_or_else(|| bad(format!("{s:?} is not a duration (e.g. 30, 30s, 1500ms, 2m, 1h)"))),
                Kind::Time => parse_instant(s)
                    .map(|(a, _)| Value::Integer(a))
                    .ok_or_else(|| bad(format!("{s:?} is not a time (e.g. 2024-05-01, 2024-05-01T12:00:00Z, now)"))),
                _ => Ok(Value::Text(s.to_string())),
            }
        };
        let coll = match kind {
            Kind::Text { nocase: true } | Kind::List => " COLLATE NOCASE",
            _ => "",
        };
        let cond: String = match op.as_str() {
            "empty" => {
                need(0)?;
                format!("({col} IS NULL OR {col} = '')")
            }
            "not-empty" => {
                need(0)?;
                format!("({col} IS NOT NULL AND {col} != '')")
            }
            "=" | "!=" => {
                need(1)?;
                let neg = if op == "!=" { "NOT " } else { "" };
                match kind {
                    Kind::Time => {
                        let (a, b) =
                            parse_instant(&vals[0]).ok_or_else(|| bad(format!("{:?} is not a time", vals[0])))?;
                        let (a, b) = (self.param(Value::Integer(a)), self.param(Value::Integer(b)));
                        format!("{neg}({col} >= {a} AND {col} < {b})")
                    }
                    Kind::List => {
                        let v = self.param(Value::Text(vals[0].clone()));
                        format!("{neg}(',' || {col} || ',' LIKE '%,' || {v} || ',%')")
                    }
                    Kind::Text { .. } if op == "!=" => {
                        // An empty party field is NULL in the index; it still differs from the value.
                        let v = self.param(value(&vals[0])?);
                        format!("NOT (coalesce({col}, '') = {v}{coll})")
                    }
                    _ => {
                        let v = self.param(value(&vals[0])?);
                        format!("{neg}({col} = {v}{coll})")
                    }
                }
            }
            "starts-with" | "ends-with" | "contains" | "like" | "matches" => {
                need(1)?;
                if matches!(kind, Kind::Int | Kind::Duration | Kind::Time) {
                    return Err(bad(format!("operator {op} works on text fields; {field} is not text")));
                }
                let v = vals[0].clone();
                match op.as_str() {
                    "starts-with" if kind == (Kind::Text { nocase: false }) => {
                        let v = self.param(Value::Text(format!("{}*", glob_escape(&v))));
                        format!("{col} GLOB {v}")
                    }
                    "starts-with" => {
                        let v = self.param(Value::Text(v.to_lowercase()));
                        format!("substr(ulower({col}), 1, length({v})) = {v}")
                    }
                    "ends-with" => {
                        let v = self.param(Value::Text(v.to_lowercase()));
                        format!("substr(ulower({col}), -length({v})) = {v}")
                    }
                    "contains" => {
                        let v = self.param(Value::Text(v.to_lowercase()));
                        format!("instr(ulower({col}), {v}) > 0")
                    }
                    "like" => {
                        let v = self.param(Value::Text(v));
                        if coll.is_empty() {
                            format!("{col} GLOB {v}")
                        } else {
                            format!("ulower({col}) GLOB ulower({v})")
                        }
                    }
                    _ => {
                        regex::Regex::new(&v).map_err(|e| bad(format!("bad regular expression: {e}")))?;
                        let v = self.param(Value::Text(v));
                        format!("regexp({v}, {col})")
                    }
                }
            }
            "<" | "<=" | ">" | ">=" | "before" | "after" => {
                need(1)?;
                let sqlop = match op.as_str() {
                    "before" => "<",
                    "after" => ">",
                    o => o,
                };
                if matches!(op.as_str(), "before" | "after") && kind != Kind::Time {
                    return Err(bad(format!("operator {op} works on time fields (start, answer, end)")));
                }
                let v = if kind == Kind::Time && matches!(op.as_str(), "after" | ">") {
                    // After a date means after that whole day.
                    let (a, b) = parse_instant(&vals[0]).ok_or_else(|| bad(format!("{:?} is not a time", vals[0])))?;
                    Value::Integer(if b - a > 1 { b - 1 } else { a })
                } else {
                    value(&vals[0])?
                };
                let v = self.param(v);
                format!("{col} {sqlop} {v}{coll}")
            }
            "between" => {
                if vals.len() != 3 || !vals[1].eq_ignore_ascii_case("and") {
                    return Err(bad("expected: FIELD between A and B".into()));
                }
                let lo = value(&vals[0])?;
                let hi = if kind == Kind::Time {
                    let (a, b) = parse_instant(&vals[2]).ok_or_else(|| bad(format!("{:?} is not a time", vals[2])))?;
                    Value::Integer(if b - a > 1 { b - 1 } else { a })
                } else {
                    value(&vals[2])?
                };
                let (lo, hi) = (self.param(lo), self.param(hi));
                format!("({col} BETWEEN {lo} AND {hi}{coll})")
            }
            "older-than" | "newer-than" => {
                need(1)?;
                if kind != Kind::Time {
                    return Err(bad(format!("operator {op} works on time fields (start, answer, end)")));
                }
                let age =
                    parse_span(&vals[0]).ok_or_else(|| bad(format!("{:?} is not an age (e.g. 30d, 12h)", vals[0])))?;
                let v = self.param(Value::Integer(now_ns() - age));
                if op == "older-than" { format!("{col} < {v}") } else { format!("{col} >= {v}") }
            }
            other => return Err(bad(format!("unknown operator {other:?}; operators: {}", OPERATORS.join(" ")))),
        };
        // Conditions an index on (bucket, column) can serve: equality, ranges and non-empty GLOB
        // prefixes. Not `like`: a pattern with no literal prefix would have SQLite walk the whole
        // index per bucket and fetch every row, far slower than the table scan it needs.
        let indexable = match op.as_str() {
            "=" | "<" | "<=" | ">" | ">=" | "between" => true,
            "starts-with" => coll.is_empty() && !vals[0].is_empty(),
            _ => false,
        };
        self.bucketed |= indexable && BUCKETED.contains(&col);
        self.conds.push(cond);
        Ok(())
    }

    /// `--text`: a number or name of either party contains the text.
    pub fn add_text(&mut self, text: &str) {
        let t = self.param(Value::Text(text.to_lowercase()));
        self.conds.push(format!(
            "(instr(ulower(c.from_number), {t}) > 0 OR instr(ulower(c.to_number), {t}) > 0 \
             OR instr(ulower(c.from_name), {t}) > 0 OR instr(ulower(c.to_name), {t}) > 0)"
        ));
    }

    fn sql(&self) -> String {
        if self.conds.is_empty() { "1".into() } else { self.conds.join(" AND ") }
    }

    /// Adds a parameter and returns its numbered placeholder (`?N`), usable several times.
    fn param(&mut self, v: Value) -> String {
        self.params.push(v);
        format!("?{}", self.params.len())
    }

    pub fn is_empty(&self) -> bool {
        self.conds.is_empty()
    }

    /// Matching call ids, newest first.
    pub fn ids(&self, index: &Index, limit: Option<i64>) -> Result<Vec<i64>, QueryError> {
        let (with, buckets) = if self.bucketed {
            (format!("WITH RECURSIVE {BUCKETS_CTE} "), format!("{IN_BUCKETS} AND "))
        } else {
            (String::new(), String::new())
        };
        let sql = format!(
            "{with}SELECT c.id FROM calls c WHERE {buckets}{} ORDER BY c.start_ns DESC, c.id DESC LIMIT {}",
            self.sql(),
            limit.unwrap_or(-1)
        );
        let mut st = index.conn.prepare(&sql).map_err(|e| index.err(e))?;
        let rows = st.query_map(params_from_iter(self.params.iter()), |r| r.get(0)).map_err(|e| index.err(e))?;
        Ok(rows.collect::<Result<_, _>>().map_err(|e| index.err(e))?)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    pub direction: String,
    pub ssrc: u32,
    pub codec: String,
    pub payload_type: u8,
    pub packets: i64,
    pub lost: i64,
    pub duplicates: i64,
    pub out_of_order: i64,
    pub jitter_ms: f64,
    pub mos: f64,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub decodable: bool,
    pub rtcp_fraction_lost: Option<f64>,
    pub rtcp_jitter_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DtmfView {
    pub digit: String,
    pub at: String,
    pub offset_ms: i64,
    pub source: String,
    pub direction: String,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HoldView {
    pub start: String,
    pub end: Option<String>,
    pub by: String,
}

/// One call as `search --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    pub id: i64,
    pub call_id: String,
    pub from: String,
    pub from_name: String,
    pub from_uri: String,
    pub to: String,
    pub to_name: String,
    pub to_uri: String,
    pub start: String,
    pub answer: Option<String>,
    pub end: Option<String>,
    pub duration_ms: Option<i64>,
    pub end_reason: Option<String>,
    pub sip_code: Option<i64>,
    pub codecs: Vec<String>,
    pub dtmf: String,
    pub md5: Option<String>,
    pub status: String,
    pub bytes: Option<i64>,
    pub file: String,
    pub streams: Vec<StreamView>,
    pub dtmf_events: Vec<DtmfView>,
    pub holds: Vec<HoldView>,
}

pub fn load_call(index: &Index, id: i64) -> Result<Option<CallView>, IndexError> {
    let c = &index.conn;
    let e = |x| index.err(x);
    let mut st = c
        .prepare_cached(
            "SELECT c.id, c.call_id, c.from_number, c.from_name, c.from_uri, c.to_number, c.to_name, c.to_uri, c.start_ns,
                    c.answer_ns, c.end_ns, c.duration_ms, c.end_reason, c.sip_code, c.codecs, c.dtmf, c.md5, c.status,
                    c.bytes, c.file
             FROM calls c WHERE c.id = ?1",
        )
        .map_err(e)?;
    let mut rows = st.query([id]).map_err(e)?;
    let Some(r) = rows.next().map_err(e)? else { return Ok(None) };
    let start_ns: i64 = r.get(8).map_err(e)?;
    let s =
        |i: usize| -> Result<String, IndexError> { Ok(r.get::<_, Option<String>>(i).map_err(e)?.unwrap_or_default()) };
    let mut v = CallView {
        id: r.get(0).map_err(e)?,
        call_id: s(1)?,
        from: s(2)?,
        from_name: s(3)?,
        from_uri: s(4)?,
        to: s(5)?,
        to_name: s(6)?,
        to_uri: s(7)?,
        start: rfc3339_ms(start_ns),
        answer: r.get::<_, Option<i64>>(9).map_err(e)?.map(rfc3339_ms),
        end: r.get::<_, Option<i64>>(10).map_err(e)?.map(rfc3339_ms),
        duration_ms: r.get(11).map_err(e)?,
        end_reason: r.get(12).map_err(e)?,
        sip_code: r.get(13).map_err(e)?,
        codecs: s(14)?.split(',').filter(|x| !x.is_empty()).map(String::from).collect(),
        dtmf: s(15)?,
        md5: r.get(16).map_err(e)?,
        status: s(17)?,
        bytes: r.get(18).map_err(e)?,
        file: s(19)?,
        streams: Vec::new(),
        dtmf_events: Vec::new(),
        holds: Vec::new(),
    };
    drop(rows);
    let mut st = c
        .prepare_cached(
            "SELECT side, ssrc, codec, payload_type, packets, lost, duplicates, out_of_order, jitter_ms, mos, src, dst,
                    decodable, rtcp_fraction_lost, rtcp_jitter_ms FROM streams WHERE call = ?1 ORDER BY idx",
        )
        .map_err(e)?;
    v.streams = st
        .query_map([id], |r| {
            Ok(StreamView {
                direction: r.get(0)?,
                ssrc: r.get(1)?,
                codec: r.get(2)?,
                payload_type: r.get(3)?,
                packets: r.get(4)?,
                lost: r.get(5)?,
                duplicates: r.get(6)?,
                out_of_order: r.get(7)?,
                jitter_ms: r.get(8)?,
                mos: r.get(9)?,
                src: r.get(10)?,
                dst: r.get(11)?,
                decodable: r.get(12)?,
                rtcp_fraction_lost: r.get(13)?,
                rtcp_jitter_ms: r.get(14)?,
            })
        })
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let mut st = c
        .prepare_cached("SELECT digit, at_ns, source, side, duration_ms FROM dtmf WHERE call = ?1 ORDER BY seq")
        .map_err(e)?;
    v.dtmf_events = st
        .query_map([id], |r| {
            let at: i64 = r.get(1)?;
            Ok(DtmfView {
                digit: r.get(0)?,
                at: rfc3339_ms(at),
                offset_ms: (at - start_ns) / 1_000_000,
                source: r.get(2)?,
                direction: r.get(3)?,
                duration_ms: r.get(4)?,
            })
        })
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let mut st =
        c.prepare_cached("SELECT start_ns, end_ns, by_side FROM holds WHERE call = ?1 ORDER BY start_ns").map_err(e)?;
    v.holds = st
        .query_map([id], |r| {
            Ok(HoldView {
                start: rfc3339_ms(r.get(0)?),
                end: r.get::<_, Option<i64>>(1)?.map(rfc3339_ms),
                by: r.get(2)?,
            })
        })
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)?;
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_errors() {
        assert_eq!(words(r#"from-name = "Ann Lee""#), vec!["from-name", "=", "Ann Lee"]);
        let mut f = Filter::default();
        assert!(f.add_where("nosuch = 1").is_err());
        assert!(f.add_where("from").is_err());
        assert!(f.add_where("duration > soon").is_err());
        assert!(f.add_where("start between 2024-01-01 2024-02-01").is_err());
        assert!(f.add_where("from matches ([").is_err());
        f.add_where("from = 123").unwrap();
        f.add_where("from-name starts-with ann").unwrap();
        f.add_where("start between 2024-01-01 and 2024-02-01").unwrap();
        f.add_where("to=555").unwrap();
        let sql = f.sql();
        assert!(sql.contains("?1") && sql.contains("?5"), "{sql}");
    }
}
