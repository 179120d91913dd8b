//! The bench's PostgreSQL: a database of its own (`fs_bench_live_<pid>`, dropped at the end and
//! on error), the reset between phases, counts, the tag ids of a birth, and the raw binary COPY.

use std::pin::pin;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::Res;

/// The server: `$FLOWSQUARE_PG` or the local one.
pub fn server() -> String {
    std::env::var("FLOWSQUARE_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

pub async fn connect(db: &str) -> Res<Client> {
    let (c, conn) = tokio_postgres::connect(&format!("{} dbname={db}", server()), NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// The bench database, dropped (`WITH (FORCE)`) when this is dropped.
pub struct BenchDb {
    pub name: String,
}

impl BenchDb {
    /// Drop the databases of earlier runs whose process is gone, then create this run's.
    pub async fn create() -> Res<BenchDb> {
        let admin = connect("postgres").await?;
        let rows = admin
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'fs\\_bench\\_live\\_%'",
                &[],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            let pid = name.rsplit('_').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
            }
        }
        let name = format!("fs_bench_live_{}", std::process::id());
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(BenchDb { name })
    }

    pub fn url(&self) -> String {
        format!("{} dbname={}", server(), self.name)
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own on a thread of its own: Drop may run inside the bench's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(c) = connect("postgres").await {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Empty the readings and the rollup tables (partitions and indexes stay), then VACUUM ANALYZE
/// and CHECKPOINT: every phase and every COPY starts from the same state.
pub async fn reset(c: &Client) -> Res<()> {
    let tables: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'flowsquare' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND (c.relname = 'readings' OR c.relname LIKE 'rollup%')",
            &[],
        )
        .await?
        .iter()
        .map(|r| format!("flowsquare.{}", r.get::<_, String>(0)))
        .collect();
    // One statement per call: VACUUM cannot run inside a multi-statement query's transaction.
    c.batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
        .await?;
    c.batch_execute("VACUUM ANALYZE flowsquare.readings")
        .await?;
    c.batch_execute("CHECKPOINT").await?;
    Ok(())
}

pub async fn count_readings(c: &Client) -> Res<i64> {
    Ok(c.query_one("SELECT count(*) FROM flowsquare.readings", &[])
        .await?
        .get(0))
}

/// Rows written (inserted or updated) into the rollup tables so far, from the server's
/// statistics (flushed by the backends about once a second): its growth per reading stored is
/// the rollup work on the commit path.
pub async fn rollup_rows(c: &Client) -> Res<i64> {
    Ok(c.query_one(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0)::bigint FROM pg_stat_user_tables
         WHERE schemaname = 'flowsquare' AND relname LIKE 'rollup%'",
        &[],
    )
    .await?
    .get(0))
}

/// The server's processes that work for the bench database: its backends and the background
/// processes (checkpointer, WAL writer, …; no database), for the "this database" CPU figure.
pub async fn my_pids(c: &Client, db: &str) -> Res<Vec<u32>> {
    Ok(c.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR datname IS NULL",
        &[&db],
    )
    .await?
    .iter()
    .map(|r| r.get::<_, i32>(0) as u32)
    .collect())
}

/// Wait until the catalogs of `sites` (agent `gw`) hold `tags` entries each, then their tag ids
/// by wire index, per site in the order given.
pub async fn tag_ids(c: &Client, sites: &[String], tags: usize) -> Res<Vec<Vec<i64>>> {
    let want = (sites.len() * tags) as i64;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM flowsquare.catalog WHERE agent = 'gw' AND site = ANY($1)",
                &[&sites],
            )
            .await?
            .get(0);
        if n == want {
            break;
        }
        if Instant::now() > deadline {
            return Err(
                format!("births not stored in 300 s: {n} of {want} catalog entries").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut out = vec![vec![0i64; tags]; sites.len()];
    for row in c
        .query(
            "SELECT site, idx, tag_id FROM flowsquare.catalog WHERE agent = 'gw' AND site = ANY($1)",
            &[&sites],
        )
        .await?
    {
        let site: String = row.get(0);
        let idx = row.get::<_, i32>(1) as usize;
        let a = sites.iter().position(|s| *s == site).ok_or("site")?;
        *out[a].get_mut(idx).ok_or("catalog index out of range")? = row.get(2);
    }
    Ok(out)
}

/// Raw binary COPY of `rows` (tag id, ts ms, value; good quality) into `flowsquare.readings`,
/// one transaction per `chunk` rows. Returns the rows written.
pub async fn raw_copy(
    c: &mut Client,
    rows: impl Iterator<Item = (i64, i64, f64)>,
    chunk: usize,
    good: i16,
) -> Res<u64> {
    let types = [
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::FLOAT8,
        Type::TEXT,
        Type::INT2,
        Type::INT8,
        Type::TEXT,
        Type::INT2,
        Type::FLOAT8,
    ];
    let (none_s, none_i, none_q, none_f): (Option<&str>, Option<i64>, Option<i16>, Option<f64>) =
        (None, None, None, None);
    let mut rows = rows.peekable();
    let mut n = 0u64;
    while rows.peek().is_some() {
        let tx = c.transaction().await?;
        let sink = tx
            .copy_in(
                "COPY flowsquare.readings (tag_id, ts, value, text, quality, status, error, counter_kind, counter_value)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut w = pin!(BinaryCopyInWriter::new(sink, &types));
        for (tag, ts, v) in rows.by_ref().take(chunk) {
            let ts = UNIX_EPOCH + Duration::from_millis(ts.max(0) as u64);
            let vals: [&(dyn ToSql + Sync); 9] = [
                &tag, &ts, &v, &none_s, &good, &none_i, &none_s, &none_q, &none_f,
            ];
            w.as_mut().write(&vals).await?;
            n += 1;
        }
        w.as_mut().finish().await?;
        tx.commit().await?;
    }
    Ok(n)
}
