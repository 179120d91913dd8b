//! The `cloud-ingest` command line: `serve`, `migrate`, `check-config`, `import`, `calc`, `reconcile`.

pub mod calc;
mod import;
pub mod reconcile;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::IngestConfig;
use crate::store::Store;

/// Errors of the command line layer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration cannot be used.
    #[error("{0}")]
    Config(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// FlowSquare cloud ingest: consumes edge agents' batches from MQTT, commits them to
/// PostgreSQL/TimescaleDB (or the embedded SQLite database when no database URL is configured),
/// and acknowledges each batch to its agent only after the commit.
#[derive(Debug, Parser)]
#[command(name = "cloud-ingest", version, about, long_about)]
pub struct Cli {
    /// Configuration file (TOML; see config/cloud-ingest.example.toml). Without one: embedded
    /// defaults (SQLite file flowsquare-ingest.db, broker mqtt://127.0.0.1:1883).
    #[arg(long, short, global = true, env = "CLOUD_INGEST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log level filter.
    #[arg(long, global = true, env = "CLOUD_INGEST_LOG", default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: migrate, then consume until SIGINT/SIGTERM.
    Serve,
    /// Create or upgrade the database schema, print what is in use, and exit.
    Migrate,
    /// Validate the configuration file and exit (non-zero on errors).
    CheckConfig,
    /// Print the SHA-256 of a bearer token read from standard input, for `[[api.tokens]] sha256`.
    HashToken,
    /// Import a file made by `edge-agent buffer export` (importing twice stores once).
    Import {
        /// The export file.
        file: PathBuf,
    },
    /// Volume correction factors (API MPMS 11.1-2004): JSON lines on stdin → JSON lines on
    /// stdout, for checking tickets.
    #[command(after_long_help = calc::HELP)]
    Calc,
    /// Reconcile days on demand with the [reconcile] site model: chain per product (ship → tanks
    /// → gantry → stations), tank balances, parcels, trips, meter checks and trends. Results
    /// replace the days' earlier ones; alerts are opened and closed. Progress on stderr, summary
    /// on stdout. Exit status 0: no exception; 1: exceptions found; 2: error.
    Reconcile {
        /// Day (UTC) to reconcile, YYYY-MM-DD.
        #[arg(long)]
        date: String,
        /// Last day of a range (inclusive; days are reconciled in order). Default: --date.
        #[arg(long)]
        to: Option<String>,
    },
}

/// Load the configuration (defaults when no file is given).
pub fn load_config(path: Option<&Path>) -> Result<IngestConfig, CliError> {
    load_config_text(path).map(|(cfg, _)| cfg)
}

/// The configuration and the text it was parsed from (empty without a file). A file that is
/// not UTF-8 is refused at its first bad byte's line and column.
fn load_config_text(path: Option<&Path>) -> Result<(IngestConfig, String), CliError> {
    match path {
        None => Ok((IngestConfig::default(), String::new())),
        Some(p) => {
            let text = flowsquare_service::text::read(p)
                .map_err(|e| CliError::Config(format!("{}: {e}", p.display())))?;
            let cfg = IngestConfig::parse(&text)
                .map_err(|e| CliError::Config(format!("{}: {e}", p.display())))?;
            Ok((cfg, text))
        }
    }
}

/// `check-config`'s warnings, `file:line:column: warning: key: message`, on standard output.
fn print_secret_warnings(cfg: &IngestConfig, path: Option<&Path>, text: &str) {
    let file = path.map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
    for w in cfg.secret_warnings(text) {
        println!(
            "{file}:{}:{}: warning: {}: {}",
            w.line, w.column, w.key, w.message
        );
    }
}

/// How acks are signed, for `check-config` (the keys are read at `serve`: a systemd
/// credential exists only inside the service).
fn ack_signing(cfg: &IngestConfig) -> String {
    let k = &cfg.mqtt.ack_keys;
    if k.is_empty() {
        return "unsigned (no [mqtt] ack_keys)".into();
    }
    let sites = k.keys().filter(|s| *s != "*").count();
    match (sites, k.contains_key("*")) {
        (n, true) => format!("signed ({n} site key(s) and a key for every other site)"),
        (n, false) => format!("signed for {n} site(s), unsigned for the others"),
    }
}

/// The PostgreSQL options of the configuration.
fn pg_options(cfg: &IngestConfig) -> Result<crate::store::postgres::PgOptions, CliError> {
    use crate::store::postgres::{PgOptions, TimescaleMode};
    let timescale = match cfg.database.timescale.as_str() {
        "auto" => TimescaleMode::Auto,
        "off" => TimescaleMode::Off,
        "require" => TimescaleMode::Require,
        other => {
            return Err(CliError::Config(format!(
                "[database] timescale {other:?}: use \"auto\", \"off\" or \"require\""
            )))
        }
    };
    Ok(PgOptions {
        timescale,
        retention_days: cfg.database.retention_days,
        partitions_ahead_days: cfg.database.partitions_ahead_days,
        password: cfg.database_password().map_err(CliError::Config)?,
        limits: cfg.ingest.limits(),
        ..PgOptions::default()
    })
}

/// `check-config`: the layout `migrate` would choose on the configured PostgreSQL server
/// (TimescaleDB, or native partitions and why), printed; a `timescale = "require"` the server
/// cannot meet is an error with the fix. An unreachable server is only noted.
async fn check_layout(cfg: &IngestConfig) -> Result<(), CliError> {
    let Some(url) = &cfg.database.url else {
        return Ok(());
    };
    let opts = pg_options(cfg)?;
    let store = crate::store::postgres::PgStore::connect_lazy(url.expose(), opts)?;
    let planned = store.planned_layout().await;
    store.close();
    match planned {
        Ok(layout) => println!("ok: database layout: {layout}"),
        Err(e) if e.is_transient() => {
            println!("note: database layout not checked (database unreachable: {e})")
        }
        Err(crate::store::StoreError::Invalid(e)) => {
            return Err(CliError::Config(format!("[database] timescale: {e}")))
        }
        Err(e) => println!("note: database layout not checked ({e})"),
    }
    Ok(())
}

/// Open the configured store, holding every agent to `[ingest]`'s bounds, and migrate it.
pub async fn open_store(cfg: &IngestConfig) -> Result<Arc<dyn Store>, CliError> {
    open_store_with(cfg, cfg.ingest.limits()).await
}

/// Open the configured store with these bounds and migrate it.
async fn open_store_with(
    cfg: &IngestConfig,
    limits: crate::store::Limits,
) -> Result<Arc<dyn Store>, CliError> {
    let store: Arc<dyn Store> = match &cfg.database.url {
        Some(url) => {
            let opts = crate::store::postgres::PgOptions {
                limits: limits.clone(),
                ..pg_options(cfg)?
            };
            Arc::new(crate::store::postgres::PgStore::connect(url.expose(), opts).await?)
        }
        None => {
            let path = cfg
                .database
                .sqlite_path
                .clone()
                .unwrap_or_else(|| PathBuf::from("flowsquare-ingest.db"));
            Arc::new(crate::store::sqlite::SqliteStore::open(&path)?.with_limits(limits))
        }
    };
    let what = store.migrate().await?;
    tracing::info!(store = %what, "database ready");
    Ok(store)
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    if let Command::Calc = cli.command {
        // Pure computation: no configuration, no database.
        return Ok(calc::run());
    }
    let (cfg, text) = load_config_text(cli.config.as_deref())?;
    match cli.command {
        Command::HashToken => {
            let mut token = String::new();
            std::io::stdin().read_line(&mut token)?;
            let token = token.trim_end_matches(['\n', '\r']);
            if token.is_empty() {
                return Err(CliError::Config("no token on standard input".into()));
            }
            println!("{}", crate::api::hash_token(token));
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            cfg.broker_addr().map_err(CliError::Config)?;
            cfg.broker
                .validate()
                .map_err(|e| CliError::Config(e.to_string()))?;
            if cfg.broker.embedded {
                println!("{}", cfg.broker.login_summary());
            }
            print_secret_warnings(&cfg, cli.config.as_deref(), &text);
            cfg.api
                .validate()
                .map_err(|e| CliError::Config(format!("[api]: {e}")))?;
            for line in crate::api::check_tokens(&cfg.api)
                .map_err(|e| CliError::Config(format!("[api]: {e}")))?
            {
                println!("{line}");
            }
            if let Some(j) = &cfg.api.jwt {
                let line = crate::api::check_jwt(j)
                    .map_err(|e| CliError::Config(format!("[api.jwt]: {e}")))?;
                println!("{line}");
            }
            let model = reconcile::reconciler(&cfg, cli.config.as_deref())?;
            if let Some(r) = &model {
                println!(
                    "ok: [reconcile] {} tank(s) with strapping tables, {} meter(s), {} station(s), {} truck(s); daily run at {} UTC",
                    r.tanks.len(),
                    r.cfg.meters.len(),
                    r.cfg.stations.len(),
                    r.cfg.trucks.len(),
                    r.cfg.run_at
                );
            }
            println!(
                "ok: broker {}, topic root {}, group {:?}, database {}, acks {}",
                cfg.mqtt.broker,
                cfg.mqtt.topic_root,
                cfg.mqtt.group,
                if cfg.database.url.is_some() {
                    "postgresql"
                } else {
                    "sqlite (embedded)"
                },
                ack_signing(&cfg)
            );
            check_layout(&cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = open_store(&cfg).await?;
            println!("{}", store.migrate().await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { file } => {
            // An export is an operator's deliberate backfill (a gateway carried back after
            // months offline): the time window does not apply, the other bounds do.
            let limits = crate::store::Limits {
                accept_past_ms: None,
                accept_future_ms: None,
                ..cfg.ingest.limits()
            };
            let store = open_store_with(&cfg, limits).await?;
            import::run(&file, &*store).await
        }
        Command::Reconcile { date, to } => {
            let store = open_store(&cfg).await?;
            reconcile::run(&cfg, cli.config.as_deref(), &*store, &date, to.as_deref()).await
        }
        Command::Serve => serve(cfg, cli.config.as_deref()).await,
        Command::Calc => Ok(calc::run()),
    }
}

/// Watchdog window: the broker event loop turns at least every keep-alive (30 s) or every
/// reconnect attempt; a database operation retries at least every 5 s while the database is down.
const WATCHDOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// Talk to systemd (`Type=notify`) until `until` completes: `READY=1` once the broker has
/// confirmed the subscriptions (the database was migrated before), `WATCHDOG=1` while the
/// consumer loop turns and the commit task is idle or making database attempts, `STATUS=` with
/// the counters, `STOPPING=1` at the end. Without `$NOTIFY_SOCKET` this only waits.
async fn supervise(
    stats: &crate::consume::ConsumerStats,
    ready: &std::sync::atomic::AtomicBool,
    cfg: &IngestConfig,
    until: impl std::future::Future<Output = ()>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};
    let notifier = flowsquare_service::Notifier::from_env();
    let period = notifier.watchdog_period();
    let started = Instant::now();
    let mut progress = flowsquare_service::Progress::new();
    let consumer = progress.add("the broker consumer loop", WATCHDOG_WINDOW, started);
    let database = progress.add("the database commit", WATCHDOG_WINDOW, started);
    let mut tick = tokio::time::interval(
        period.map_or(Duration::from_secs(1), |p| p.min(Duration::from_secs(1))),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut is_ready, mut last_ping, mut last_status, mut stalled) =
        (false, None::<Instant>, started, false);
    let status = || {
        format!(
            "broker {} ({}); {} batches stored, {} readings, {} dead letters, {} commit errors",
            cfg.mqtt.broker,
            if ready.load(Relaxed) {
                "subscribed"
            } else {
                "not connected"
            },
            stats.stored_batches.load(Relaxed),
            stats.stored_readings.load(Relaxed),
            stats.dead_letters.load(Relaxed),
            stats.commit_errors.load(Relaxed),
        )
    };
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => break,
            _ = tick.tick() => {
                let now = Instant::now();
                if !is_ready && ready.load(Relaxed) {
                    is_ready = true;
                    notifier.ready(&status());
                }
                progress.observe(consumer, stats.loop_events.load(Relaxed), false, now);
                progress.observe(database, stats.db_attempts.load(Relaxed), !stats.committing.load(Relaxed), now);
                match progress.stalled(now) {
                    Some(s) => {
                        if !stalled {
                            tracing::error!(stall = %s, "watchdog: not pinging systemd (it restarts the service when WatchdogSec passes)");
                            notifier.status(&format!("stalled: {s}"));
                            stalled = true;
                        }
                    }
                    None => {
                        stalled = false;
                        if let Some(p) = period {
                            if last_ping.is_none_or(|t| now.duration_since(t) >= p) {
                                notifier.watchdog();
                                last_ping = Some(now);
                            }
                        }
                        if is_ready && now.duration_since(last_status) >= Duration::from_secs(10) {
                            notifier.status(&status());
                            last_status = now;
                        }
                    }
                }
            }
        }
    }
    notifier.stopping("stopping: finishing the current commit");
}

/// Start the embedded broker if configured; the ingest's own client then uses the broker's
/// internal listener and login instead of `[mqtt] broker`.
async fn start_embedded(
    cfg: &mut IngestConfig,
    stats: &Arc<crate::consume::ConsumerStats>,
) -> Result<(), CliError> {
    if !cfg.broker.embedded {
        return Ok(());
    }
    let b = crate::broker::start(&cfg.broker, &cfg.mqtt.topic_root, stats.clone())
        .await
        .map_err(|e| CliError::Config(e.to_string()))?;
    tracing::info!(listen = %cfg.broker.listen, authenticated = b.gated, "embedded MQTT broker started");
    cfg.mqtt.broker = b.ingest_url.into();
    cfg.mqtt.credentials = None;
    Ok(())
}

/// The roller: every `rollup_interval_ms`, build the rollups that are due
/// ([`Store::roll_due`]), publishing the pending minutes and the lag for `/metrics`. A pass in
/// progress ends before the task stops (each pass is one bounded transaction).
pub(crate) async fn roll_up(
    store: Arc<dyn Store>,
    db: crate::config::DatabaseConfig,
    stats: Arc<crate::consume::ConsumerStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let every = std::time::Duration::from_millis(db.rollup_interval_ms.max(100));
    let settle = i64::try_from(db.rollup_settle_ms).unwrap_or(i64::MAX / 4);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match store
            .roll_due(flowsquare_service::clock::now_ms(), settle)
            .await
        {
            Ok(r) => {
                if failing {
                    tracing::info!("rollups built again");
                    failing = false;
                }
                if r.minutes + r.hours > 0 {
                    tracing::debug!(
                        minutes = r.minutes,
                        hours = r.hours,
                        pending = r.pending_minutes,
                        "rollups built"
                    );
                }
                stats
                    .rollup_pending_minutes
                    .store(r.pending_minutes, Relaxed);
                stats
                    .rollup_lag_seconds
                    .store(u64::try_from(r.lag_ms / 1000).unwrap_or(0), Relaxed);
            }
            // Reads stay exact meanwhile (pending minutes are read from raw readings).
            Err(e) if !failing => {
                tracing::warn!(error = %e, "building rollups failed; retried at the next interval");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn serve(mut cfg: IngestConfig, config_path: Option<&Path>) -> Result<ExitCode, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let stats = Arc::new(crate::consume::ConsumerStats::default());
    start_embedded(&mut cfg, &stats).await?;
    let reconciler = reconcile::reconciler(&cfg, config_path)?;
    // Unreadable ack keys stop the start here (the consumer reads them again).
    cfg.ack_keys().map_err(CliError::Config)?;
    let store = open_store(&cfg).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    cfg.api
        .validate()
        .map_err(|e| CliError::Config(format!("[api]: {e}")))?;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A consumer that fails (e.g. the start-up delivery probe) stops the service.
    let (failed_tx, mut failed_rx) = tokio::sync::oneshot::channel::<()>();
    let consumer = {
        let run = crate::consume::run(
            cfg.clone(),
            store.clone(),
            stats.clone(),
            ready.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            let r = run.await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "the broker consumer cannot run");
                let _ = failed_tx.send(());
            }
            r
        })
    };
    let listener = crate::api::bind(&cfg.api.listen).await?;
    tracing::info!(address = %listener.local_addr()?, "HTTP API at http://{}/api/v1 (OpenAPI: /api/v1/openapi.json)", listener.local_addr()?);
    let state = crate::api::ApiState {
        store: store.clone(),
        stats: stats.clone(),
        config: Arc::new(cfg.api.clone()),
        ready: ready.clone(),
        reconciler: reconciler.clone(),
        api_stats: Default::default(),
    };
    // The daily reconciliation and the 5-minute stale-tag check.
    let scheduler = match &reconciler {
        Some(r) if cfg.reconcile.enabled => {
            tracing::info!(run_at = %cfg.reconcile.run_at, tanks = r.tanks.len(), "daily reconciliation scheduled (UTC)");
            Some(tokio::spawn(
                r.clone().schedule(store.clone(), stop_rx.clone()),
            ))
        }
        _ => None,
    };
    let mut api_stop = stop_rx.clone();
    let api = tokio::spawn(crate::api::serve(listener, state, async move {
        let _ = api_stop.changed().await;
    }));
    // Hourly upkeep: partitions ahead, retention, compression, aggregates; the dead-letter
    // retention ([ingest] dead_letter_retention_days, dead_letter_max_total_mib).
    let upkeep = {
        let (store, mut stop) = (store.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        match store.maintain().await {
                            Ok(summary) => tracing::info!(%summary, "database upkeep"),
                            Err(e) => tracing::error!(error = %e, "database upkeep failed; retried next hour"),
                        }
                        match store.prune_dead_letters(flowsquare_service::clock::now_ms()).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(dropped = n, "dead-letter retention"),
                            Err(e) => tracing::error!(error = %e, "dead-letter retention failed; retried next hour"),
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        })
    };
    let roller = tokio::spawn(roll_up(
        store.clone(),
        cfg.database.clone(),
        stats.clone(),
        stop_rx.clone(),
    ));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    supervise(&stats, &ready, &cfg, async {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
            Ok(()) = &mut failed_rx => tracing::error!("the broker consumer failed: stopping"),
        }
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = api.await;
    let _ = upkeep.await;
    let _ = roller.await;
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    match consumer.await {
        Ok(Err(e)) => return Err(CliError::Config(e)),
        Err(e) => tracing::error!(error = %e, "consumer task failed"),
        Ok(Ok(())) => {}
    }
    use std::sync::atomic::Ordering::Relaxed;
    tracing::info!(
        received = stats.received.load(Relaxed),
        stored_batches = stats.stored_batches.load(Relaxed),
        stored_readings = stats.stored_readings.load(Relaxed),
        duplicates = stats.duplicates.load(Relaxed),
        dead_letters = stats.dead_letters.load(Relaxed),
        "cloud-ingest stopped"
    );
    Ok(ExitCode::SUCCESS)
}
