//! A reader's cached view of the session table: the stats report, the metrics
//! route and the gauges in one pass over shared data that decodes almost nothing.
//!
//! Session details change only on login, logout, rotation and expiry, so each
//! session shard stays decoded here, keyed by its CAS token, and is decoded again
//! only when that token changed. Activity (the only thing that changes every
//! second) is read fresh from the 64 fixed-width activity shards every time. The
//! pass keeps, per active session, three integers; only the sessions listed in a
//! report are decoded into strings.

use crate::agent;
use crate::config::Config;
use crate::session;
use crate::stats::{rfc3339, Counts, SessionView, Stats, MAX_LISTED};
use crate::table::{
    generation, seen_key, session_key, RecordRef, Seen, SharedStore, TableError,
    GENERATIONS_KEY, SEEN_SHARDS, SHARDS,
};
use crate::traffic::TrafficFigures;
use std::collections::{BTreeMap, HashMap};

/// One session's details as the pass needs them.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The session id as a big-endian integer: the activity shard is sorted in
    /// this order, and comparing integers costs no `memcmp` call in Wasm.
    key: u128,
    /// Hash of the user id (distinct users are counted by it).
    user: u64,
    /// Index into `Snapshot::roles`.
    role: u32,
    /// Where the record starts in the shard's bytes.
    offset: u32,
}

#[derive(Default)]
struct Shard {
    /// The shard's generation when it was read (`None`: read without one).
    generation: Option<u64>,
    cas: Option<u32>,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

/// Decoded session shards, kept between passes (one per VM).
pub struct Snapshot {
    shards: Vec<Shard>,
    roles: Vec<String>,
    role_ids: HashMap<String, u32>,
    /// Shards decoded (again) by the last pass, for tests and benchmarks.
    pub decoded: usize,
    /// Shards copied out of shared data by the last pass.
    pub copied: usize,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

/// An active session found by a pass: (last activity, shard, entry).
type Candidate = (u64, u32, u32);

fn user_key(user_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    user_id.hash(&mut h);
    h.finish()
}

/// The records of an encoded session shard, with where each starts.
fn records(bytes: &[u8]) -> Option<Vec<(usize, RecordRef<'_>)>> {
    let (n, mut rest) = postcard::take_from_bytes::<u32>(bytes).ok()?;
    let mut out = Vec::with_capacity(usize::try_from(n).ok()?.min(4096));
    for _ in 0..n {
        let offset = bytes.len() - rest.len();
        let (r, after) = postcard::take_from_bytes::<RecordRef<'_>>(rest).ok()?;
        out.push((offset, r));
        rest = after;
    }
    Some(out)
}

fn record_at(bytes: &[u8], offset: u32) -> Option<RecordRef<'_>> {
    let from = bytes.get(usize::try_from(offset).ok()?..)?;
    postcard::take_from_bytes::<RecordRef<'_>>(from)
        .ok()
        .map(|(r, _)| r)
}

impl Snapshot {
    pub fn new() -> Self {
        Snapshot {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            roles: Vec::new(),
            role_ids: HashMap::new(),
            decoded: 0,
            copied: 0,
        }
    }

    fn role_id(&mut self, role: &str) -> u32 {
        if let Some(id) = self.role_ids.get(role) {
            return *id;
        }
        let id = u32::try_from(self.roles.len()).unwrap_or(u32::MAX);
        self.roles.push(role.to_string());
        self.role_ids.insert(role.to_string(), id);
        id
    }

    /// Makes shard `index` current: nothing if its generation did not move, else
    /// one read, and a decode only if its CAS value changed.
    fn refresh(
        &mut self,
        store: &impl SharedStore,
        index: usize,
        generation: Option<u64>,
    ) -> Result<(), TableError> {
        if generation.is_some()
            && self
                .shards
                .get(index)
                .is_some_and(|s| s.generation == generation)
        {
            return Ok(());
        }
        self.copied += 1;
        let (bytes, cas) = match store.get(&session_key(index))? {
            Some((b, cas)) => (b, Some(cas)),
            None => (Vec::new(), None),
        };
        if let Some(shard) = self.shards.get_mut(index).filter(|s| s.cas == cas) {
            shard.generation = generation;
            return Ok(());
        }
        self.decoded += 1;
        let found: Vec<(usize, [u8; 16], u64, String)> = records(&bytes)
            .unwrap_or_default()
            .into_iter()
            .map(|(offset, r)| (offset, r.id, user_key(r.user_id), r.role.to_string()))
            .collect();
        let mut entries = Vec::with_capacity(found.len());
        for (offset, id, user, role) in found {
            entries.push(Entry {
                key: u128::from_be_bytes(id),
                user,
                role: self.role_id(&role),
                offset: u32::try_from(offset).unwrap_or(u32::MAX),
            });
        }
        if let Some(shard) = self.shards.get_mut(index) {
            *shard = Shard {
                generation,
                cas,
                bytes,
                entries,
            };
        }
        Ok(())
    }

    /// One pass: counts every active session; with `list`, also returns them all.
    fn pass(
        &mut self,
        store: &impl SharedStore,
        now: u64,
        cfg: &Config,
        list: bool,
    ) -> Result<(Counts, Vec<Candidate>), TableError> {
        self.decoded = 0;
        self.copied = 0;
        // Read first: a details write lands before its generation moves, so a
        // shard read after this is at least as new as the generation seen here.
        let generations = store
            .get(GENERATIONS_KEY)?
            .map(|(b, _)| b)
            .unwrap_or_default();
        // (user, role) of every active session: one sort counts both distinct
        // users and distinct users per role.
        let mut users: Vec<(u64, u32)> = Vec::new();
        let mut candidates = Vec::new();
        let mut keys: Vec<u128> = Vec::new();
        for a in 0..SEEN_SHARDS {
            let seen_bytes = store.get(&seen_key(a))?.map(|(b, _)| b).unwrap_or_default();
            let seen = Seen::new(&seen_bytes);
            if seen.is_empty() {
                continue;
            }
            keys.clear();
            keys.extend(seen.records().map(|r| {
                let id: [u8; 16] = r.get(..16).and_then(|b| b.try_into().ok()).unwrap_or_default();
                u128::from_be_bytes(id)
            }));
            for index in (a..SHARDS).step_by(SEEN_SHARDS) {
                self.refresh(store, index, generation(&generations, index))?;
                let Some(shard) = self.shards.get(index) else {
                    continue;
                };
                for (i, e) in shard.entries.iter().enumerate() {
                    let Some(act) = keys.binary_search(&e.key).ok().and_then(|at| seen.at(at))
                    else {
                        continue;
                    };
                    if !session::active(act.login_ms, act.last_ms, now, cfg) {
                        continue;
                    }
                    users.push((e.user, e.role));
                    if list {
                        candidates.push((
                            act.last_ms,
                            u32::try_from(index).unwrap_or(u32::MAX),
                            u32::try_from(i).unwrap_or(u32::MAX),
                        ));
                    }
                }
            }
        }
        let active_sessions = users.len();
        users.sort_unstable();
        users.dedup();
        let mut per_role = vec![0usize; self.roles.len()];
        let mut active_users = 0;
        let mut last_user = None;
        for (user, role) in &users {
            if last_user != Some(*user) {
                active_users += 1;
                last_user = Some(*user);
            }
            if let Some(n) = per_role.get_mut(usize::try_from(*role).unwrap_or(usize::MAX)) {
                *n += 1;
            }
        }
        let mut roles: BTreeMap<String, usize> = cfg.roles.iter().map(|r| (r.clone(), 0)).collect();
        for (name, n) in self.roles.iter().zip(per_role) {
            if n > 0 {
                roles.insert(name.clone(), n);
            }
        }
        let counts = Counts {
            active_users,
            active_sessions,
            by_role: roles,
        };
        Ok((counts, candidates))
    }

    /// The gauges' and the metrics route's counts.
    pub fn counts(
        &mut self,
        store: &impl SharedStore,
        now: u64,
        cfg: &Config,
    ) -> Result<Counts, TableError> {
        Ok(self.pass(store, now, cfg, false)?.0)
    }

    /// The stats report, listing the `limit` most recently active sessions
    /// (newest first, then by username).
    pub fn report(
        &mut self,
        store: &impl SharedStore,
        now: u64,
        cfg: &Config,
        limit: usize,
        traffic: TrafficFigures,
    ) -> Result<Stats, TableError> {
        let limit = limit.min(MAX_LISTED);
        let (counts, mut candidates) = self.pass(store, now, cfg, limit > 0)?;
        let mut sessions = Vec::new();
        if let Some(k) = limit.min(candidates.len()).checked_sub(1) {
            // The k-th most recent activity; everything at least as recent is listed
            // or loses only a tie on the username.
            candidates.select_nth_unstable_by(k, |x, y| y.0.cmp(&x.0));
            let boundary = candidates.get(k).map_or(0, |c| c.0);
            let mut chosen: Vec<(u64, RecordRef<'_>)> = candidates
                .iter()
                .filter(|c| c.0 >= boundary)
                .filter_map(|&(last, shard, i)| {
                    let shard = self.shards.get(usize::try_from(shard).ok()?)?;
                    let e = shard.entries.get(usize::try_from(i).ok()?)?;
                    Some((last, record_at(&shard.bytes, e.offset)?))
                })
                .collect();
            chosen.sort_by(|(la, a), (lb, b)| lb.cmp(la).then(a.username.cmp(b.username)));
            chosen.truncate(k + 1);
            // Users share a few user agents: unpack and describe each one once.
            let mut agents: HashMap<&str, (String, String)> = HashMap::new();
            sessions = chosen
                .iter()
                .map(|(last, r)| {
                    let (user_agent, device) = agents
                        .entry(r.agent)
                        .or_insert_with(|| {
                            let ua = agent::unpack(r.agent);
                            let device = crate::device::describe(&ua);
                            (ua, device)
                        })
                        .clone();
                    view(r, user_agent, device, *last, now)
                })
                .collect();
        }
        Ok(Stats {
            active_users: counts.active_users,
            active_sessions: counts.active_sessions,
            window_seconds: cfg.active_window_ms / 1000,
            by_role: counts.by_role,
            sessions,
            traffic,
            generated_at: rfc3339(now),
        })
    }
}

fn view(
    r: &RecordRef<'_>,
    user_agent: String,
    device: String,
    last_ms: u64,
    now: u64,
) -> SessionView {
    SessionView {
        session_id: uuid::Uuid::from_bytes(r.id).hyphenated().to_string(),
        user_id: r.user_id.to_string(),
        username: r.username.to_string(),
        role: r.role.to_string(),
        ip: r.ip.to_string(),
        device,
        user_agent,
        login_time: rfc3339(r.login_ms),
        last_activity: rfc3339(last_ms),
        duration_seconds: now.saturating_sub(r.login_ms) / 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::stats;
    use crate::table::SessionTable;
    use crate::traffic::Traffic;
    use crate::Session;

    fn s(id: u8, user: &str, role: &str, last: u64) -> Session {
        Session {
            id: [id; 16],
            user_id: user.into(),
            username: user.into(),
            role: role.into(),
            ip: "10.0.0.1".into(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36".into(),
            login_ms: 1_000,
            last_ms: last,
            cookie: [id; 16],
            aliases: vec![],
        }
    }

    #[test]
    fn same_report_as_the_owned_sessions_and_cached_until_changed() {
        let (store, cfg) = (MemoryStore::default(), Config::default());
        let t = SessionTable::new(&store);
        let now = 400_000;
        let mut firefox = s(3, "student1", "student", now - 30);
        // Another user agent among repeated ones: each listed session gets its own
        // (the report unpacks and describes each distinct agent once).
        firefox.user_agent =
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
                .into();
        let all = vec![
            s(1, "admin_user", "admin", now - 10),
            s(2, "student1", "student", now - 20),
            firefox,
            s(4, "student2", "student", now - 300_001),
            s(5, "guest", "auditor", now),
            s(6, "tie_b", "student", now - 20),
            s(7, "tie_a", "student", now - 20),
        ];
        for x in &all {
            t.insert(x.clone(), &cfg).unwrap();
        }
        let mut snap = Snapshot::new();
        let traffic = Traffic::default().figures(now);
        for limit in [0, 1, 2, 3, 4, 100] {
            let want = {
                let mut c = stats::Collector::new(&cfg, now, limit);
                all.iter().for_each(|x| c.visit(&x.as_ref()));
                c.report(traffic.clone())
            };
            let got = snap
                .report(&store, now, &cfg, limit, traffic.clone())
                .unwrap();
            assert_eq!(got, want, "limit {limit}");
        }
        // Nothing changed: nothing copied or decoded again. A touch changes only
        // activity.
        snap.counts(&store, now, &cfg).unwrap();
        assert_eq!((snap.copied, snap.decoded), (0, 0));
        t.touch(&[([4; 16], now)], now).unwrap();
        let c = snap.counts(&store, now, &cfg).unwrap();
        assert_eq!((snap.decoded, c.active_sessions, c.active_users), (0, 7, 6));
        assert_eq!(snap.copied, 0);
        // A logout: fresh counts (its shard is not even read once its activity
        // shard is empty).
        t.end(&[5; 16], now, &cfg).unwrap();
        let c = snap.counts(&store, now, &cfg).unwrap();
        assert_eq!((snap.decoded, c.active_sessions), (0, 6));
        assert_eq!(c.by_role.get("auditor"), None);
        // A rotation changes one shard: one decode, and the report shows it.
        t.rotate(&[1; 16], &[99; 16], now + 5, &cfg).unwrap();
        let r = snap.report(&store, now + 5, &cfg, 1, traffic.clone()).unwrap();
        assert_eq!((snap.copied, snap.decoded), (1, 1));
        assert_eq!(r.sessions[0].username, "admin_user");
        assert_eq!(r.sessions[0].last_activity, rfc3339(now + 5));
        assert_eq!(r.sessions[0].device, "Chrome 126 on Linux");
        // A malformed generations key: every shard is checked by its CAS value
        // again. The next write rebuilds it under a new epoch, and the restarted
        // generations are not taken for the ones cached (every shard once more).
        let (_, cas) = store.get(GENERATIONS_KEY).unwrap().unwrap();
        store.set(GENERATIONS_KEY, b"junk", Some(cas)).unwrap();
        // (Every shard whose activity shard is not empty: 8 per session here.)
        let c = snap.counts(&store, now + 5, &cfg).unwrap();
        let every = snap.copied;
        assert_eq!((every, snap.decoded, c.active_sessions), (6 * 8, 0, 6));
        t.rotate(&[99; 16], &[98; 16], now + 6, &cfg).unwrap();
        let c = snap.counts(&store, now + 6, &cfg).unwrap();
        assert_eq!((snap.copied, snap.decoded, c.active_sessions), (every, 1, 6));
        let r = snap.report(&store, now + 6, &cfg, 1, traffic).unwrap();
        assert_eq!(r.sessions[0].last_activity, rfc3339(now + 6));
        assert_eq!(snap.copied, 0);
    }
}
