//! The ledger in Redis 7 (or Valkey), standalone or Redis Cluster, shared by any
//! number of collectors: each call on a shard is one optimistic step
//! (`overlay.rs`) over that shard's keys (`shard.rs`), run again when another
//! collector committed to the same shard in between.

pub mod overlay;
pub mod shard;

use headcount_core::ledger::LedgerError;
use headcount_core::AppName;
pub use overlay::StoreError;
use overlay::{Commit, Overlay};
use redis::{ConnectionLike, RedisResult, Value};
use shard::RedisShard;
use std::sync::Mutex;

/// Steps on one shard that lose the race this many times in a row give up (the
/// node's batch is answered 503 and sent again later).
pub const MAX_ATTEMPTS: u32 = 64;

/// How long a step that lost a race waits before its next attempt: a random
/// time up to 100 µs times the attempt, at most 5 ms (full jitter).
fn backoff(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let cap_us = (100 * u64::from(attempt)).min(5_000);
    std::time::Duration::from_micros(h.finish() % (cap_us + 1))
}

/// The apps nodes have sent to, with their shard counts: the sweeps' work list.
pub const APPS_KEY: &str = "hc:{apps}";

/// Where the ledger lives: `redis://HOST:PORT[/DB]` (standalone, also
/// `rediss://`, `redis+unix://`), or `redis+cluster://HOST:PORT[,HOST:PORT...]`
/// (a Redis Cluster, any of its nodes; the rest are discovered).
#[derive(Clone)]
pub enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        if let Some(nodes) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = nodes
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}"))
                .collect();
            if nodes.is_empty() {
                return Err(format!("{url:?}: no cluster nodes"));
            }
            let client =
                redis::cluster::ClusterClient::new(nodes).map_err(|e| format!("{url:?}: {e}"))?;
            return Ok(Target::Cluster(client));
        }
        redis::Client::open(url)
            .map(Target::Single)
            .map_err(|e| format!("{url:?}: {e}"))
    }

    pub fn connect(&self) -> RedisResult<Conn> {
        Ok(match self {
            Target::Single(c) => Conn::Single(c.get_connection()?),
            Target::Cluster(c) => Conn::Cluster(Box::new(c.get_connection()?)),
        })
    }
}

/// A connection to either kind of deployment.
pub enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => c.req_command(cmd),
            Conn::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Conn::Single(c) => c.check_connection(),
            Conn::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Conn::Single(c) => c.is_open(),
            Conn::Cluster(c) => c.is_open(),
        }
    }
}

/// Why a step gave nothing: the ledger refused the request (answered 400, never
/// retried), or the store failed (answered 503; the node sends it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    Refused(String),
    Store(StoreError),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Store(e)
    }
}

impl From<LedgerError<StoreError>> for StepError {
    fn from(e: LedgerError<StoreError>) -> Self {
        match e {
            LedgerError::Refused(why) => StepError::Refused(why),
            LedgerError::Store(e) => StepError::Store(e),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Refused(why) => write!(f, "refused: {why}"),
            StepError::Store(e) => write!(f, "store: {e}"),
        }
    }
}

/// What a step needs besides the store: the attempt may be run again, so it
/// returns its result and the shard's rows stay untouched until the commit.
pub struct Stepped<T> {
    pub value: T,
    /// Redis round trips of the attempt that committed.
    pub trips: u64,
    /// Attempts it took (1: no conflict).
    pub attempts: u32,
}

/// The Redis ledger: a target and a few idle connections (a step holds one for
/// its duration; a broken one is dropped, and the next step connects again).
pub struct RedisLedger {
    target: Target,
    idle: Mutex<Vec<Conn>>,
}

impl RedisLedger {
    pub fn new(target: Target) -> RedisLedger {
        RedisLedger {
            target,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection, or a new one; whether it was idle (it may have died
    /// with its server since: a restart, a failover).
    fn take(&self) -> Result<(Conn, bool), StoreError> {
        match self.idle.lock().ok().and_then(|mut v| v.pop()) {
            Some(c) => Ok((c, true)),
            None => Ok((self.target.connect()?, false)),
        }
    }

    fn give_back(&self, con: Conn) {
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < 64 {
                v.push(con);
            }
        }
    }

    fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let (mut con, pooled) = self.take()?;
        let mut out = cmd.query(&mut con);
        if pooled
            && out
                .as_ref()
                .is_err_and(|e| e.is_io_error() || !con.is_open())
        {
            // A pooled connection that died: these commands write nothing twice
            // (reads, and a sweep claim that failed to arrive), so ask again.
            con = self.target.connect()?;
            out = cmd.query(&mut con);
        }
        if con.is_open() {
            self.give_back(con);
        }
        Ok(out?)
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        self.command::<String>(&redis::cmd("PING")).map(|_| ())
    }

    /// The apps nodes have sent to, with their shard counts (`hc:{apps}`).
    pub fn register(&self, app: &AppName, shards: u32) -> Result<(), StoreError> {
        self.command::<i64>(
            redis::cmd("HSET")
                .arg(APPS_KEY)
                .arg(app.as_str())
                .arg(shards),
        )
        .map(|_| ())
    }

    pub fn apps(&self) -> Result<Vec<(AppName, u32)>, StoreError> {
        let all: std::collections::HashMap<String, u32> =
            self.command(redis::cmd("HGETALL").arg(APPS_KEY))?;
        Ok(all
            .into_iter()
            .filter_map(|(a, n)| Some((AppName::parse("app", &a).ok()?, n)))
            .collect())
    }

    /// Whether this collector won the sweep of this shard for `every`.
    pub fn claim_sweep(
        &self,
        app: &AppName,
        shard: u32,
        every: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let key = format!("{}sweep", shard::prefix(app, shard));
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        let won: Option<String> = self.command(
            redis::cmd("SET")
                .arg(key)
                .arg("1")
                .arg("NX")
                .arg("PX")
                .arg(ms),
        )?;
        Ok(won.is_some())
    }

    /// Runs `f` on shard `shard` of `app` as one atomic step: again, from a fresh
    /// view, if another collector committed to the shard meanwhile. `f` only
    /// reads and writes through the shard it is given; an error of `f` (or of
    /// Redis) abandons the step with nothing written.
    pub fn step<T, E: From<StoreError>>(
        &self,
        app: &AppName,
        shard: u32,
        mut f: impl FnMut(&mut RedisShard<'_, '_, Conn>) -> Result<T, E>,
    ) -> Result<Stepped<T>, E> {
        let prefix = shard::prefix(app, shard);
        let (con, pooled) = self.take()?;
        let (mut con, mut gen) = self.begin(con, pooled, &prefix)?;
        for attempt in 1..=MAX_ATTEMPTS {
            let result = self.attempt(&mut con, &prefix, gen.take(), &mut f);
            match result {
                Ok(Some((value, trips))) => {
                    self.give_back(con);
                    return Ok(Stepped {
                        value,
                        trips,
                        attempts: attempt,
                    });
                }
                Ok(None) => {
                    // Lost a race: wait a little, at random, before the next
                    // attempt, so racing collectors spread out instead of
                    // colliding again and again.
                    std::thread::sleep(backoff(attempt));
                    continue;
                }
                Err(e) => {
                    if con.is_open() {
                        self.give_back(con);
                    }
                    return Err(e);
                }
            }
        }
        self.give_back(con);
        Err(StoreError(format!(
            "shard {prefix} stayed contended for {MAX_ATTEMPTS} attempts"
        ))
        .into())
    }

    /// Reads the shard's generation, the first command of a step, which writes
    /// nothing: a pooled connection that died with its server (a restart, a
    /// failover) shows it there and is replaced, so a restarted Redis does not
    /// fail the step. The generation read is the first attempt's own.
    fn begin(
        &self,
        mut con: Conn,
        pooled: bool,
        prefix: &str,
    ) -> Result<(Conn, Option<String>), StoreError> {
        let gen_key = format!("{prefix}g");
        match Overlay::read_generation(&mut con, &gen_key) {
            Ok(gen) => Ok((con, Some(gen))),
            Err(_) if pooled => {
                let mut con = self.target.connect()?;
                let gen = Overlay::read_generation(&mut con, &gen_key)?;
                Ok((con, Some(gen)))
            }
            Err(e) => Err(e),
        }
    }

    /// One attempt: `None` if it lost the race.
    fn attempt<T, E: From<StoreError>>(
        &self,
        con: &mut Conn,
        prefix: &str,
        gen: Option<String>,
        f: &mut impl FnMut(&mut RedisShard<'_, '_, Conn>) -> Result<T, E>,
    ) -> Result<Option<(T, u64)>, E> {
        let gen_key = format!("{prefix}g");
        let mut step = match gen {
            Some(gen) => Overlay::with_generation(con, gen_key, gen),
            None => Overlay::begin(con, gen_key)?,
        };
        let value = f(&mut RedisShard::new(&mut step, prefix))?;
        let trips = step.trips + 1;
        Ok(match step.commit()? {
            Commit::Done => Some((value, trips)),
            Commit::Conflict => None,
        })
    }
}
