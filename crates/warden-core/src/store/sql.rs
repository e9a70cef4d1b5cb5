//! The SQL both backends speak: values, rows and a `Sql` handle a store's queries are
//! written against once, run by SQLite (the embedded default) or PostgreSQL (`[store]
//! url`). Queries use `?N` placeholders; PostgreSQL gets them as `$N`.
//!
//! Owns converting values and rows between the two drivers and the common dialect's
//! rules: integers are 64-bit (booleans are 0/1 integers), text is UTF-8, reals are
//! doubles, and a query uses no function one backend lacks. It must never build SQL
//! from a value: every value is a bound parameter.

use std::fmt;

/// A bound parameter or a column's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Val {
        Val::Int(i64::from(v))
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::Int(i64::from(v))
    }
}
impl From<f64> for Val {
    fn from(v: f64) -> Val {
        Val::Real(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Val {
        Val::Text(v.clone())
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// Parameters for a query: `vals![a, b, c]`.
macro_rules! vals {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Val::from($v)),*][..] };
}
pub(crate) use vals;

/// A failed query, as its driver told it (never with a parameter's value).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SqlError(pub String);

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> SqlError {
        SqlError(e.to_string())
    }
}

/// One row of a result.
#[derive(Debug, Clone, Default)]
pub struct Row(pub Vec<Val>);

impl Row {
    fn at(&self, i: usize) -> Result<&Val, SqlError> {
        self.0
            .get(i)
            .ok_or_else(|| SqlError(format!("no column {i} in the row")))
    }
    fn wrong(&self, i: usize, want: &str) -> SqlError {
        SqlError(format!(
            "column {i} holds {:?}, not {want}",
            self.0.get(i).map(kind)
        ))
    }
    pub fn text(&self, i: usize) -> Result<String, SqlError> {
        self.str(i).map(str::to_string)
    }
    /// Text, borrowed from the row.
    pub fn str(&self, i: usize) -> Result<&str, SqlError> {
        match self.at(i)? {
            Val::Text(s) => Ok(s),
            _ => Err(self.wrong(i, "text")),
        }
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, SqlError> {
        match self.at(i)? {
            Val::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
    pub fn int(&self, i: usize) -> Result<i64, SqlError> {
        match self.at(i)? {
            Val::Int(v) => Ok(*v),
            _ => Err(self.wrong(i, "an integer")),
        }
    }
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, SqlError> {
        match self.at(i)? {
            Val::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }
    /// A number (integer or real; null and text as 0).
    pub fn number(&self, i: usize) -> f64 {
        match self.0.get(i) {
            Some(Val::Real(v)) => *v,
            Some(Val::Int(v)) => *v as f64,
            _ => 0.0,
        }
    }
    pub fn bool(&self, i: usize) -> Result<bool, SqlError> {
        self.int(i).map(|v| v != 0)
    }
    pub fn u32(&self, i: usize) -> Result<u32, SqlError> {
        let v = self.int(i)?;
        u32::try_from(v).map_err(|_| SqlError(format!("column {i}: {v} is out of range")))
    }
}

fn kind(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Int(_) => "an integer",
        Val::Real(_) => "a real",
        Val::Text(_) => "text",
    }
}

/// A connection (inside a transaction, when writing) a store's queries run on.
pub trait Sql {
    /// Run a statement; how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError>;
    /// Run a query; its rows.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, SqlError>;
    /// Which backend this is (its queries differ only where the dialects do).
    fn postgres(&self) -> bool;

    /// Call `each` with every row of a query, in order. SQLite streams them through one
    /// reused row (a day of runs is 100k rows: no string is copied per row).
    fn each(
        &mut self,
        sql: &str,
        params: &[Val],
        each: &mut dyn FnMut(&Row) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        for row in self.query(sql, params)? {
            each(&row)?;
        }
        Ok(())
    }

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[Val]) -> Result<Option<Row>, SqlError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
    /// The one row an aggregate returns.
    fn query_one(&mut self, sql: &str, params: &[Val]) -> Result<Row, SqlError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| SqlError("the query returned no row".into()))
    }
}

/// A SQLite connection (or transaction: it derefs to one) as `Sql`.
pub struct Lite<'a>(pub &'a rusqlite::Connection);

impl Sql for Lite<'_> {
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let n = stmt.execute(rusqlite::params_from_iter(params.iter().map(lite_param)))?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, SqlError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let width = stmt.column_count();
        let rows = stmt.query_map(
            rusqlite::params_from_iter(params.iter().map(lite_param)),
            |r| {
                let mut row = Row(vec![Val::Null; width]);
                lite_row(r, &mut row)?;
                Ok(row)
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn each(
        &mut self,
        sql: &str,
        params: &[Val],
        each: &mut dyn FnMut(&Row) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut row = Row(vec![Val::Null; stmt.column_count()]);
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter().map(lite_param)))?;
        while let Some(r) = rows.next()? {
            lite_row(r, &mut row)?;
            each(&row)?;
        }
        Ok(())
    }

    fn postgres(&self) -> bool {
        false
    }
}

/// An owned connection a store's writer or reader thread keeps.
pub trait Db: Send {
    /// Run `body` in one transaction and commit it. `durable`: the commit is on disk
    /// when this returns (SQLite `synchronous = FULL`, PostgreSQL's synchronous commit);
    /// otherwise it may be lost in a power cut, never half-applied.
    fn transaction(
        &mut self,
        durable: bool,
        body: &mut dyn FnMut(&mut dyn Sql) -> Result<(), SqlError>,
    ) -> Result<(), SqlError>;
    /// Run `body`'s reads (each statement sees committed data).
    fn read(
        &mut self,
        body: &mut dyn FnMut(&mut dyn Sql) -> Result<(), SqlError>,
    ) -> Result<(), SqlError>;
    /// Run `body` outside a transaction: each statement commits on its own. For a write
    /// that is one statement, it saves PostgreSQL's BEGIN and COMMIT round trips.
    fn autocommit(
        &mut self,
        body: &mut dyn FnMut(&mut dyn Sql) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        self.read(body)
    }
}

/// An embedded store's connection as `Db`.
pub struct LiteDb(pub rusqlite::Connection);

impl Db for LiteDb {
    fn transaction(
        &mut self,
        durable: bool,
        body: &mut dyn FnMut(&mut dyn Sql) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        self.0
            .pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        // Immediate: the write lock is taken now, so no reader-turned-writer deadlock.
        let tx = self
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        body(&mut Lite(&tx))?;
        Ok(tx.commit()?)
    }

    fn read(
        &mut self,
        body: &mut dyn FnMut(&mut dyn Sql) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        body(&mut Lite(&self.0))
    }
}

/// `r` into `row`, reusing the strings it already holds.
fn lite_row(r: &rusqlite::Row<'_>, row: &mut Row) -> rusqlite::Result<()> {
    use rusqlite::types::ValueRef;
    for (i, slot) in row.0.iter_mut().enumerate() {
        match r.get_ref(i)? {
            ValueRef::Null => *slot = Val::Null,
            ValueRef::Integer(v) => *slot = Val::Int(v),
            ValueRef::Real(v) => *slot = Val::Real(v),
            ValueRef::Text(t) | ValueRef::Blob(t) => {
                let t = String::from_utf8_lossy(t);
                match slot {
                    Val::Text(s) => {
                        s.clear();
                        s.push_str(&t);
                    }
                    _ => *slot = Val::Text(t.into_owned()),
                }
            }
        }
    }
    Ok(())
}

fn lite_param(v: &Val) -> rusqlite::types::Value {
    match v {
        Val::Null => rusqlite::types::Value::Null,
        Val::Int(i) => rusqlite::types::Value::Integer(*i),
        Val::Real(r) => rusqlite::types::Value::Real(*r),
        Val::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

/// `?N` placeholders as PostgreSQL's `$N` (a `?` inside a quoted literal is kept).
pub fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(kind(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_literals() {
        assert_eq!(
            dollar_placeholders("SELECT '?1', x FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT '?1', x FROM t WHERE a = $1 AND b = $12"
        );
    }

    #[test]
    fn both_backends_read_the_same_row_from_sqlite() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut sql = Lite(&conn);
        sql.execute("CREATE TABLE t (a INTEGER, b TEXT, c REAL)", &[])
            .unwrap();
        sql.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            vals![7i64, "x", None::<f64>],
        )
        .unwrap();
        let row = sql.query_one("SELECT a, b, c FROM t", &[]).unwrap();
        assert_eq!(row.int(0).unwrap(), 7);
        assert_eq!(row.text(1).unwrap(), "x");
        assert_eq!(row.opt_int(2).unwrap(), None);
        assert!(row.text(0).is_err(), "an integer is not text");
    }
}
