//! Raw insert rates of candidate SQLite ledger layouts at a multi-million-entry ledger
//! (issue 21, item 1): which layout gets past the random-insert wall of today's ledger.
//!
//! Every contender gets the same rows: 1,000 orgs, 32-hex-character random event ids (the
//! worst case: clients' UUIDs arrive in no key order), a ~100-byte body, 1 % of each batch
//! resends of rows already in the ledger. Each contender's file is first filled to
//! `--prefill` entries (random order, 50,000 rows per commit with a 1 GiB page cache and no
//! journal, so the B-trees have the page fill random inserts leave), then reopened with the store's writer
//! settings (64 MiB page cache, WAL, `synchronous=NORMAL`, SQLite's automatic checkpoint,
//! as `ingest_load`'s raw ceiling) and timed inserting `--measure` more rows `--per` rows per
//! commit, each batch sorted by its layout's key as the store does. Rounds alternate the
//! contenders in one process, so a busy machine shifts them all alike: read the figures as
//! ratios to `keyed` within one run.
//!
//! Contenders (`--only` picks some by name):
//! - `keyed`: today's ledger (`store/src/sqlite/schema.rs`): a rowid table appended in
//!   arrival order plus `UNIQUE (org, event_id)`, `INSERT ... ON CONFLICT DO NOTHING`.
//! - `keyed-1k`: the same with 1 KiB pages (each randomly touched page costs a quarter of the
//!   WAL bytes; the tree is deeper).
//! - `without-rowid`: the table itself keyed by (org, event_id).
//! - `hash-index`: the rowid table plus a non-unique index on a 64-bit hash of (org, id);
//!   a hit reads the row to compare the key, so the check stays exact.
//! - `part-N`: tables of N entries each in arrival order (the hot one small), each with
//!   `UNIQUE (org, event_id)`, and an in-memory Bloom filter (12 bits per entry) over all of
//!   them: a miss goes straight to the hot table's insert, a hit probes the older tables by
//!   key, newest first, so the check is exact. The filter is rebuilt at open by scanning
//!   every table's key index; that scan is timed and printed.
//!
//! `cargo run --release -p tally-bench --bin ledger_layouts -- [--prefill N] [--measure N]
//!  [--per N] [--rounds N] [--only a,b] [--parts N,M]`

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};

/// Longest one timed insert run may take before the benchmark gives up.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// Rows per commit while filling a contender before it is timed.
const PREFILL_PER_COMMIT: usize = 50_000;
/// Orgs the rows are spread over, uniformly.
const ORGS: usize = 1_000;
/// Resends per 100 rows of a timed batch.
const RESEND_PERCENT: usize = 1;
/// Bloom filter bits per expected entry (~0.3 % false positives at 7 probes).
const BLOOM_BITS_PER_ENTRY: usize = 12;
const BLOOM_PROBES: u64 = 7;

/// One ledger row's key, its 64-bit hash and its body.
#[derive(Clone)]
struct Row {
    org: String,
    id: String,
    hash: i64,
    body: String,
}

fn key_hash(org: &str, id: &str) -> i64 {
    let mut h = DefaultHasher::new();
    org.hash(&mut h);
    id.hash(&mut h);
    h.finish() as i64
}

fn rows(rng: &mut StdRng, n: usize, orgs: &[String]) -> Vec<Row> {
    (0..n)
        .map(|_| {
            let org = orgs[rng.random_range(0..orgs.len())].clone();
            let id = format!("{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>());
            let body = format!(
                r#"{{"p":"prj_{:016x}","m":"api_calls","a":"sum","q":"{}","t":"2026-11-26T10:{:02}:{:02}.123456Z"}}"#,
                rng.random::<u32>(),
                rng.random_range(1..10_000),
                rng.random_range(0..60),
                rng.random_range(0..60)
            );
            Row {
                hash: key_hash(&org, &id),
                org,
                id,
                body,
            }
        })
        .collect()
}

/// A fixed-size Bloom filter over 64-bit key hashes (double hashing).
struct Bloom {
    bits: Vec<u64>,
    mask: u64,
}

impl Bloom {
    fn with_capacity(entries: usize) -> Bloom {
        let bits = (entries.max(1) * BLOOM_BITS_PER_ENTRY).next_power_of_two();
        Bloom {
            bits: vec![0; bits / 64],
            mask: bits as u64 - 1,
        }
    }

    fn positions(&self, h: i64) -> impl Iterator<Item = u64> + '_ {
        let h1 = h as u64;
        // A second, independent-enough hash from the first (splitmix64's finalizer).
        let mut z = h1.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let h2 = (z ^ (z >> 31)) | 1;
        (0..BLOOM_PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & self.mask)
    }

    fn add(&mut self, h: i64) {
        let ps: Vec<u64> = self.positions(h).collect();
        for p in ps {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    fn may_hold(&self, h: i64) -> bool {
        self.positions(h)
            .all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Keyed { page: u32 },
    WithoutRowid,
    HashIndex,
    Partitioned { rows: usize },
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Keyed { page: 4096 } => "keyed".into(),
            Kind::Keyed { page } => format!("keyed-{}k", page / 1024),
            Kind::WithoutRowid => "without-rowid".into(),
            Kind::HashIndex => "hash-index".into(),
            Kind::Partitioned { rows } => format!("part-{rows}"),
        }
    }
}

struct Contender {
    kind: Kind,
    conn: Connection,
    /// Partition tables, oldest first (`Partitioned` only).
    parts: Vec<String>,
    hot_rows: usize,
    bloom: Bloom,
    /// Older partitions probed because the filter said "maybe".
    probes: u64,
}

/// Opens a contender's file: `fill` for the untimed prefill (no journal, no fsync: only
/// the B-trees' shape matters there), otherwise with the store's writer pragmas.
fn open(path: &Path, cache_mib: i64, page: u32, fill: bool) -> anyhow::Result<Connection> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "page_size", page)?;
    c.execute_batch(if fill {
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=MEMORY;"
    } else {
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY;"
    })?;
    c.pragma_update(None, "cache_size", -cache_mib * 1024)?;
    // A partitioned ledger probes up to every partition's statement.
    c.set_prepared_statement_cache_capacity(4096);
    Ok(c)
}

const ROWID_TABLE: &str = "(seq INTEGER PRIMARY KEY, org TEXT NOT NULL, event_id TEXT NOT NULL,
     month INTEGER NOT NULL, body TEXT NOT NULL, written INTEGER)";

impl Contender {
    fn create(kind: Kind, path: &Path, capacity: usize) -> anyhow::Result<Contender> {
        let page = match kind {
            Kind::Keyed { page } => page,
            _ => 4096,
        };
        let conn = open(path, 1024, page, true)?;
        match kind {
            Kind::Keyed { .. } => conn.execute_batch(&format!(
                "CREATE TABLE ledger {ROWID_TABLE};
                 CREATE UNIQUE INDEX ledger_by_event ON ledger (org, event_id);"
            ))?,
            Kind::WithoutRowid => conn.execute_batch(
                "CREATE TABLE ledger (org TEXT NOT NULL, event_id TEXT NOT NULL,
                     month INTEGER NOT NULL, body TEXT NOT NULL, written INTEGER,
                     PRIMARY KEY (org, event_id)) WITHOUT ROWID;",
            )?,
            Kind::HashIndex => conn.execute_batch(
                "CREATE TABLE ledger (seq INTEGER PRIMARY KEY, h INTEGER NOT NULL,
                     org TEXT NOT NULL, event_id TEXT NOT NULL, month INTEGER NOT NULL,
                     body TEXT NOT NULL, written INTEGER);
                 CREATE INDEX ledger_by_hash ON ledger (h);",
            )?,
            Kind::Partitioned { .. } => {}
        }
        let mut c = Contender {
            kind,
            conn,
            parts: Vec::new(),
            hot_rows: 0,
            bloom: Bloom::with_capacity(capacity),
            probes: 0,
        };
        if let Kind::Partitioned { .. } = kind {
            c.rotate()?;
        }
        Ok(c)
    }

    /// Starts a new hot partition (`Partitioned` only).
    fn rotate(&mut self) -> anyhow::Result<()> {
        let name = format!("ledger_{:05}", self.parts.len());
        self.conn.execute_batch(&format!(
            "CREATE TABLE {name} {ROWID_TABLE};
             CREATE UNIQUE INDEX {name}_by_event ON {name} (org, event_id);"
        ))?;
        self.parts.push(name);
        self.hot_rows = 0;
        Ok(())
    }

    /// Reopens the file with the store's writer settings; a partitioned ledger rebuilds its
    /// filter from the tables. Returns how long that took.
    fn reopen(&mut self, path: &Path, capacity: usize) -> anyhow::Result<Duration> {
        let began = Instant::now();
        // Close the fill connection first: the journal mode changes only without others.
        self.conn = Connection::open_in_memory()?;
        self.conn = open(path, 64, 4096, false)?;
        let mode: String = self
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if mode != "wal" {
            bail!("{}: journal mode {mode}, not wal", self.kind.name());
        }
        if let Kind::Partitioned { .. } = self.kind {
            self.bloom = Bloom::with_capacity(capacity);
            for p in &self.parts {
                let mut s = self.conn.prepare(&format!(
                    "SELECT org, event_id FROM {p} INDEXED BY {p}_by_event"
                ))?;
                let mut q = s.query([])?;
                while let Some(r) = q.next()? {
                    let org: &str = r.get_ref(0)?.as_str()?;
                    let id: &str = r.get_ref(1)?.as_str()?;
                    self.bloom.add(key_hash(org, id));
                }
            }
        }
        Ok(began.elapsed())
    }

    /// One write transaction inserting `rows` (already in this layout's key order); returns
    /// how many were new.
    fn insert(&mut self, rows: &[&Row]) -> anyhow::Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut new = 0;
        match self.kind {
            Kind::Keyed { .. } | Kind::WithoutRowid => {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO ledger (org, event_id, month, body, written)
                     VALUES (?1, ?2, 202611, ?3, 1764150000) ON CONFLICT (org, event_id) DO NOTHING",
                )?;
                for r in rows {
                    new += ins.execute(params![r.org, r.id, r.body])?;
                }
            }
            Kind::HashIndex => {
                let mut find =
                    tx.prepare_cached("SELECT org, event_id FROM ledger WHERE h = ?1")?;
                let mut ins = tx.prepare_cached(
                    "INSERT INTO ledger (h, org, event_id, month, body, written)
                     VALUES (?1, ?2, ?3, 202611, ?4, 1764150000)",
                )?;
                for r in rows {
                    let mut seen = false;
                    let mut q = find.query(params![r.hash])?;
                    while let Some(hit) = q.next()? {
                        if hit.get_ref(0)?.as_str()? == r.org && hit.get_ref(1)?.as_str()? == r.id {
                            seen = true;
                            break;
                        }
                    }
                    if !seen {
                        new += ins.execute(params![r.hash, r.org, r.id, r.body])?;
                    }
                }
            }
            Kind::Partitioned { rows: per_part } => {
                for r in rows {
                    if self.hot_rows >= per_part {
                        let name = format!("ledger_{:05}", self.parts.len());
                        tx.execute_batch(&format!(
                            "CREATE TABLE {name} {ROWID_TABLE};
                             CREATE UNIQUE INDEX {name}_by_event ON {name} (org, event_id);"
                        ))?;
                        self.parts.push(name);
                        self.hot_rows = 0;
                    }
                    let (hot, older) = self.parts.split_last().context("no partition")?;
                    if self.bloom.may_hold(r.hash) {
                        let mut seen = false;
                        for p in older.iter().rev() {
                            self.probes += 1;
                            let mut s = tx.prepare_cached(&format!(
                                "SELECT 1 FROM {p} WHERE org = ?1 AND event_id = ?2"
                            ))?;
                            if s.exists(params![r.org, r.id])? {
                                seen = true;
                                break;
                            }
                        }
                        if seen {
                            continue;
                        }
                    }
                    let mut ins = tx.prepare_cached(&format!(
                        "INSERT INTO {hot} (org, event_id, month, body, written)
                         VALUES (?1, ?2, 202611, ?3, 1764150000) ON CONFLICT (org, event_id) DO NOTHING"
                    ))?;
                    let n = ins.execute(params![r.org, r.id, r.body])?;
                    if n == 1 {
                        // Bits set for a transaction that then fails only cost false positives.
                        self.bloom.add(r.hash);
                        self.hot_rows += 1;
                    }
                    new += n;
                }
            }
        }
        tx.commit()?;
        Ok(new)
    }

    /// Inserts `rows` `per` rows per commit, each batch sorted by this layout's key; returns
    /// (rows/s, new rows).
    fn run(&mut self, rows: &[Row], per: usize) -> anyhow::Result<(f64, usize)> {
        let began = Instant::now();
        let mut new = 0;
        for chunk in rows.chunks(per) {
            let mut batch: Vec<&Row> = chunk.iter().collect();
            match self.kind {
                Kind::HashIndex => batch.sort_unstable_by_key(|r| r.hash),
                _ => batch.sort_unstable_by(|a, b| (&a.org, &a.id).cmp(&(&b.org, &b.id))),
            }
            new += self.insert(&batch)?;
            if began.elapsed() > RUN_LIMIT {
                bail!("{} exceeded {RUN_LIMIT:?}", self.kind.name());
            }
        }
        Ok((rows.len() as f64 / began.elapsed().as_secs_f64(), new))
    }
}

fn file_mib(path: &Path) -> f64 {
    let wal = path.with_extension("db-wal");
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    (len(path) + len(&wal)) as f64 / (1024.0 * 1024.0)
}

struct Args {
    prefill: usize,
    measure: usize,
    per: usize,
    rounds: usize,
    only: Option<Vec<String>>,
    parts: Vec<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        prefill: 5_000_000,
        measure: 100_000,
        per: 1_000,
        rounds: 3,
        only: None,
        parts: vec![20_000, 100_000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        let count = |v: String, max: usize| -> anyhow::Result<usize> {
            let n: usize = v
                .parse()
                .with_context(|| format!("{flag}: not a count: {v}"))?;
            if n == 0 || n > max {
                bail!("{flag} must be 1..={max}, got {n}");
            }
            Ok(n)
        };
        match flag.as_str() {
            "--prefill" => a.prefill = count(value()?, 50_000_000)?,
            "--measure" => a.measure = count(value()?, 10_000_000)?,
            "--per" => a.per = count(value()?, 100_000)?,
            "--rounds" => a.rounds = count(value()?, 20)?,
            "--only" => a.only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--parts" => {
                a.parts = value()?
                    .split(',')
                    .map(|v| count(v.to_owned(), 10_000_000))
                    .collect::<anyhow::Result<_>>()?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut kinds = vec![
        Kind::Keyed { page: 4096 },
        Kind::Keyed { page: 1024 },
        Kind::WithoutRowid,
        Kind::HashIndex,
    ];
    if args.only.is_none() {
        // Both lost to `keyed` at 100,000 entries (0.63x, 0.53x; bench/RESULTS.md), and
        // filling the 1 KiB one to 5 M took over 300 s: ask for them by name.
        kinds.retain(|k| !matches!(k, Kind::Keyed { page: 1024 } | Kind::WithoutRowid));
    }
    kinds.extend(args.parts.iter().map(|&rows| Kind::Partitioned { rows }));
    if let Some(only) = &args.only {
        kinds.retain(|k| only.contains(&k.name()));
    }
    if kinds.is_empty() {
        bail!("--only matched no contender");
    }
    let mut rng = StdRng::seed_from_u64(21);
    let orgs: Vec<String> = (0..ORGS)
        .map(|_| format!("org_{:016x}", rng.random::<u64>()))
        .collect();
    let prefill = rows(&mut rng, args.prefill, &orgs);
    let capacity = args.prefill + args.measure * args.rounds;
    let dir = tempfile::tempdir()?;
    println!(
        "ledger_layouts: prefill {} entries, timed {} rows x {} rounds, {} rows per commit, \
         {RESEND_PERCENT}% resends",
        args.prefill, args.measure, args.rounds, args.per
    );
    let mut contenders = Vec::new();
    for kind in &kinds {
        let path = dir.path().join(format!("{}.db", kind.name()));
        let began = Instant::now();
        let mut c = Contender::create(*kind, &path, capacity)?;
        c.run(&prefill, PREFILL_PER_COMMIT)?;
        let filled = began.elapsed();
        let open = c.reopen(&path, capacity)?;
        println!(
            "{:<14} filled in {:>6.1}s  {:>7.0} MiB  reopen (filter rebuild) {:>6.2}s",
            kind.name(),
            filled.as_secs_f64(),
            file_mib(&path),
            open.as_secs_f64()
        );
        contenders.push((c, path, Vec::new()));
    }
    for round in 0..args.rounds {
        let mut batch = rows(&mut rng, args.measure, &orgs);
        // Resends of rows already in every contender's ledger, spread through the batch.
        for i in (0..batch.len()).step_by(100 / RESEND_PERCENT) {
            batch[i] = prefill[rng.random_range(0..prefill.len())].clone();
        }
        let expected_new = batch.len() - batch.len().div_ceil(100 / RESEND_PERCENT);
        for (c, _, rates) in contenders.iter_mut() {
            let probes = c.probes;
            let (rate, new) = c.run(&batch, args.per)?;
            if new != expected_new {
                bail!(
                    "{}: {new} rows new, expected {expected_new}: the duplicate check is not exact",
                    c.kind.name()
                );
            }
            println!(
                "round {round}  {:<14} {:>9.0} rows/s  ({} older-partition probes)",
                c.kind.name(),
                rate,
                c.probes - probes
            );
            rates.push(rate);
        }
    }
    let base = contenders
        .iter()
        .find(|(c, ..)| c.kind == Kind::Keyed { page: 4096 })
        .map(|(_, _, r)| r.clone());
    println!("\nsummary (rows/s per round; ratio to keyed in the same round)");
    for (c, path, rates) in &contenders {
        let ratios = base
            .as_ref()
            .map(|b| {
                rates
                    .iter()
                    .zip(b)
                    .map(|(r, b)| format!("{:.2}x", r / b))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .unwrap_or_default();
        let rates: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{:<14} {:>30}   {ratios}   {:.0} MiB",
            c.kind.name(),
            rates.join(" / "),
            file_mib(path)
        );
    }
    Ok(())
}
