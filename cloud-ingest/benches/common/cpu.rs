//! CPU time of processes from `/proc/<pid>/stat` (utime + stime, and for the PostgreSQL
//! postmaster its reaped children's cutime + cstime, so backends that exit inside a window still
//! count), as % of one core over a window.

use std::collections::HashMap;
use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a constant of the system; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// One process's stat line: (comm, ppid, utime + stime, cutime + cstime), in ticks.
pub fn stat(pid: u32) -> Option<(String, u32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields after the comm: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    let f: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ppid = num(1)? as u32;
    Some((comm, ppid, num(11)? + num(12)?, num(13)? + num(14)?))
}

/// Every process whose comm starts with `prefix`: pid → (ppid, own ticks, reaped children's ticks).
pub fn by_comm(prefix: &str) -> HashMap<u32, (u32, u64, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((comm, ppid, own, children)) = stat(pid) {
            if comm.starts_with(prefix) {
                out.insert(pid, (ppid, own, children));
            }
        }
    }
    out
}

/// CPU ticks at one moment: the ingest, this process (the simulated agents), Mosquitto, all
/// PostgreSQL processes (own + the postmaster's reaped children), and per PostgreSQL pid (for
/// the bench database's own backends and the server's background processes).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub ingest: u64,
    pub agents: u64,
    pub broker: u64,
    pub pg_all: u64,
    pub pg: HashMap<u32, u64>,
}

impl Sample {
    pub fn take(ingest: u32, broker: Option<u32>) -> Sample {
        let pg = by_comm("postgres");
        // The postmaster: a postgres process whose parent is not one.
        let reaped: u64 = pg
            .values()
            .filter(|(ppid, _, _)| !pg.contains_key(ppid))
            .map(|(_, _, c)| c)
            .sum();
        let own = |pid: Option<u32>| pid.and_then(stat).map(|s| s.2).unwrap_or(0);
        Sample {
            at: Instant::now(),
            ingest: own(Some(ingest)),
            agents: own(Some(std::process::id())),
            broker: own(broker),
            pg_all: pg.values().map(|(_, o, _)| o).sum::<u64>() + reaped,
            pg: pg.into_iter().map(|(pid, (_, o, _))| (pid, o)).collect(),
        }
    }
}

/// % of one core between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub ingest: f64,
    pub agents: f64,
    pub broker: f64,
    /// Every PostgreSQL process of the machine (other sessions' databases included).
    pub pg_all: f64,
    /// The bench database's backends and the server's background processes (pids in `mine`).
    pub pg_mine: f64,
}

impl Cpu {
    pub fn between(a: &Sample, b: &Sample, mine: &[u32]) -> Cpu {
        let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let pct = |d: u64| d as f64 / ticks_per_s() / secs * 100.0;
        let mine_ticks: u64 = mine
            .iter()
            .filter_map(|p| {
                let end = b.pg.get(p)?;
                Some(end.saturating_sub(a.pg.get(p).copied().unwrap_or(0)))
            })
            .sum();
        Cpu {
            ingest: pct(b.ingest.saturating_sub(a.ingest)),
            agents: pct(b.agents.saturating_sub(a.agents)),
            broker: pct(b.broker.saturating_sub(a.broker)),
            pg_all: pct(b.pg_all.saturating_sub(a.pg_all)),
            pg_mine: pct(mine_ticks),
        }
    }
}
