//! How statements reach Postgres: the one place that decides, so no call site can get it wrong.
//!
//! Every statement declares its parameters' types through the Rust values it passes
//! ([`Param`]: `String` is `text`, `i64` is `int8`, `Option<T>` is `T`'s type…), and a
//! connection ([`Conn`], or a transaction on it, [`Tx`]) runs it one of two ways:
//!
//! - [`Pooler::None`] (a direct connection or a session pooler): prepared once per connection
//!   and kept in deadpool's statement cache; every later call is one Bind/Execute round trip with
//!   no parse or plan.
//! - [`Pooler::Transaction`] (PgBouncer or Supavisor in transaction mode, where a named statement
//!   prepared on one server may be executed on another): an unnamed statement sent with its types
//!   in the same round trip as its execution (`query_typed`), never prepare-then-execute.
//!
//! Both modes send the same typed statements, so a test that runs in both proves both.

use deadpool_postgres::{Object, Transaction};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::{
    types::{ToSql, Type},
    Row, RowStream,
};

use crate::Result;

/// How the process reaches Postgres (`JEWELSHOT_DATABASE__POOLER`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooler {
    /// Directly, or through a session pooler: statements are prepared once per connection.
    #[default]
    None,
    /// Through a transaction pooler (PgBouncer `pool_mode = transaction`, Supavisor):
    /// one-round-trip unnamed statements, no session state.
    Transaction,
}

impl std::str::FromStr for Pooler {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" | "" => Ok(Self::None),
            "transaction" => Ok(Self::Transaction),
            other => Err(format!("pooler must be `none` or `transaction`, not `{other}`")),
        }
    }
}

/// A statement parameter: a value and the Postgres type it is sent as.
pub trait Param: ToSql + Sync {
    fn pg_type(&self) -> Type;
    fn as_sql(&self) -> &(dyn ToSql + Sync);
}

/// The Postgres type a Rust type is sent as.
pub trait PgType {
    const TYPE: Type;
}

impl<T: PgType + ToSql + Sync> Param for T {
    fn pg_type(&self) -> Type {
        T::TYPE
    }
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        self
    }
}

macro_rules! pg_types {
    ($($t:ty => $pg:ident),* $(,)?) => {
        $(impl PgType for $t { const TYPE: Type = Type::$pg; })*
    };
}

pg_types! {
    String => TEXT,
    str => TEXT,
    i64 => INT8,
    i32 => INT4,
    f64 => FLOAT8,
    bool => BOOL,
    Vec<u8> => BYTEA,
    Vec<String> => TEXT_ARRAY,
    Vec<Option<String>> => TEXT_ARRAY,
    Vec<i32> => INT4_ARRAY,
    Vec<Option<chrono::DateTime<chrono::Utc>>> => TIMESTAMPTZ_ARRAY,
    serde_json::Value => JSONB,
    chrono::DateTime<chrono::Utc> => TIMESTAMPTZ,
}

impl<T: PgType + ?Sized> PgType for &T {
    const TYPE: Type = T::TYPE;
}

impl<T: PgType> PgType for Option<T> {
    const TYPE: Type = T::TYPE;
}

/// A pooled connection that runs statements as its [`Pooler`] says.
pub(crate) struct Conn {
    client: Object,
    pooler: Pooler,
}

/// A transaction on a [`Conn`]: the same statements, the same way.
pub(crate) struct Tx<'a> {
    tx: Transaction<'a>,
    pooler: Pooler,
}

/// A prepared statement cached for a schema that changed since (a migration added a column
/// to a `SELECT *`), or one the server no longer holds: the cache is dropped and the statement
/// prepared afresh.
fn stale_statement(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| *c == SqlState::FEATURE_NOT_SUPPORTED || *c == SqlState::INVALID_SQL_STATEMENT_NAME)
        && e.as_db_error()
            .is_some_and(|d| d.message().contains("cached plan") || d.message().contains("prepared statement"))
}

fn types(params: &[&dyn Param]) -> Vec<Type> {
    params.iter().map(|p| p.pg_type()).collect()
}

fn values<'p>(params: &'p [&'p dyn Param]) -> impl ExactSizeIterator<Item = &'p (dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_sql())
}

fn typed<'p>(params: &'p [&'p dyn Param]) -> impl ExactSizeIterator<Item = (&'p (dyn ToSql + Sync), Type)> {
    params.iter().map(|p| (p.as_sql(), p.pg_type()))
}

async fn drain(stream: RowStream) -> Result<(Vec<Row>, u64)> {
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await? {
        rows.push(row);
    }
    let n = stream.rows_affected().unwrap_or(rows.len() as u64);
    Ok((rows, n))
}

/// What [`Conn`] and [`Tx`] share: `query`, `query_one`, `query_opt`, `execute`, each one
/// statement sent the [`Pooler`]'s way.
pub(crate) trait Sql {
    /// Run one statement; its rows and how many rows it affected.
    fn run(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> impl std::future::Future<Output = Result<(Vec<Row>, u64)>> + Send;

    async fn query(&self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>> {
        Ok(self.run(sql, params).await?.0)
    }

    async fn query_opt(&self, sql: &str, params: &[&dyn Param]) -> Result<Option<Row>> {
        let mut rows = self.run(sql, params).await?.0;
        match rows.len() {
            0 | 1 => Ok(rows.pop()),
            n => Err(crate::DbError::Corrupt(format!("one row expected, {n} returned"))),
        }
    }

    async fn query_one(&self, sql: &str, params: &[&dyn Param]) -> Result<Row> {
        self.query_opt(sql, params)
            .await?
            .ok_or_else(|| crate::DbError::Corrupt("one row expected, none returned".into()))
    }

    async fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<u64> {
        Ok(self.run(sql, params).await?.1)
    }
}

impl Conn {
    pub(crate) fn new(client: Object, pooler: Pooler) -> Self {
        Self { client, pooler }
    }

    /// Open a transaction (`BEGIN` is one round trip; statements in it run as [`Sql`] says).
    pub(crate) async fn transaction(&mut self) -> Result<Tx<'_>> {
        let pooler = self.pooler;
        Ok(Tx { tx: self.client.transaction().await?, pooler })
    }

    /// Several statements in one simple-query round trip, no parameters (`SELECT 1`, locks).
    pub(crate) async fn batch_execute(&self, sql: &str) -> Result<()> {
        Ok(self.client.batch_execute(sql).await?)
    }

    /// The first column of a simple query's rows (no statement is prepared to run it).
    pub(crate) async fn simple_column(&self, sql: &str) -> Result<Vec<Option<String>>> {
        let messages = self.client.simple_query(sql).await?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
                _ => None,
            })
            .collect())
    }

    /// The raw client, for what speaks to Postgres itself (refinery's migrations).
    pub(crate) fn client_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }

    async fn prepared(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> std::result::Result<RowStream, tokio_postgres::Error> {
        let stmt = self.client.prepare_typed_cached(sql, &types(params)).await?;
        self.client.query_raw(&stmt, values(params)).await
    }
}

impl Sql for Conn {
    async fn run(&self, sql: &str, params: &[&dyn Param]) -> Result<(Vec<Row>, u64)> {
        let stream = match self.pooler {
            Pooler::Transaction => self.client.query_typed_raw(sql, typed(params)).await?,
            Pooler::None => match self.prepared(sql, params).await {
                Err(e) if stale_statement(&e) => {
                    tracing::info!(error = %e, "a cached statement went stale; preparing afresh");
                    self.client.statement_cache.clear();
                    self.prepared(sql, params).await?
                }
                other => other?,
            },
        };
        drain(stream).await
    }
}

impl Tx<'_> {
    pub(crate) async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

impl Sql for Tx<'_> {
    async fn run(&self, sql: &str, params: &[&dyn Param]) -> Result<(Vec<Row>, u64)> {
        let stream = match self.pooler {
            Pooler::Transaction => self.tx.query_typed_raw(sql, typed(params)).await?,
            Pooler::None => {
                // A cached statement meets the server only at Bind: staleness shows up there.
                let sent = match self.tx.prepare_typed_cached(sql, &types(params)).await {
                    Ok(stmt) => self.tx.query_raw(&stmt, values(params)).await,
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(stream) => stream,
                    Err(e) => {
                        if stale_statement(&e) {
                            // This transaction is lost; the next one prepares afresh.
                            tracing::info!(error = %e, "a cached statement went stale; the next transaction prepares afresh");
                            self.tx.statement_cache.clear();
                        }
                        return Err(e.into());
                    }
                }
            }
        };
        drain(stream).await
    }
}
