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
use crate::stats::{self, rfc3339, Counts, SessionView, Stats, MAX_LISTED};
use crate::table::{
    generation, seen_key, session_key, RecordRef, Seen, SharedStore, TableError, GENERATIONS_KEY,
    SEEN_SHARDS, SHARDS,
};
use crate::traffic::TrafficFigures;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

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
    login_ms: u64,
    /// Where the username is in the shard's bytes (listings sort by it on ties).
    username: (u32, u32),
}

#[derive(Default)]
struct Shard {
    /// The shard's generation when it was read (`None`: read without one).
    generation: Option<u64>,
    cas: Option<u32>,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    /// JSON of the listed sessions' fields that never change (`SessionFixed`),
    /// by entry, made the first time each is listed; dropped with the entries.
    fixed_json: HashMap<u32, Box<[u8]>>,
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
    /// Entries in the shards' `fixed_json` (bounded by `MAX_FIXED_JSON`).
    fixed_json_count: usize,
    /// Hashes user ids for counting distinct users (random keys per VM).
    user_hasher: RandomState,
    /// Active sessions found by the last pass.
    last_active: usize,
}

/// Listed sessions whose fixed JSON a VM keeps (~300 bytes each): past this, all
/// of it is dropped and made again as sessions are listed.
const MAX_FIXED_JSON: usize = 4 * crate::stats::DEFAULT_LISTED;

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

/// Hasher for keys that are already hashes (`Entry::user`, keyed per VM at random,
/// so nobody can choose user ids that collide): mixes, never rehashes.
#[derive(Default)]
struct Mixed(u64);

impl Hasher for Mixed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|b| self.write_u64(u64::from(*b)));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

/// An active session found by a pass: (last activity, shard, entry).
type Candidate = (u64, u32, u32);

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
            fixed_json_count: 0,
            user_hasher: RandomState::new(),
            last_active: 0,
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
        let base = bytes.as_ptr() as usize;
        // Entries with their role's name; role ids are given below (`role_id`
        // needs `self` while `bytes` is borrowed).
        let found: Vec<(Entry, String)> = records(&bytes)
            .unwrap_or_default()
            .into_iter()
            .map(|(offset, r)| {
                // Borrowed from `bytes`, so its address gives its place there.
                let at = (r.username.as_ptr() as usize).saturating_sub(base);
                let entry = Entry {
                    key: u128::from_be_bytes(r.id.0),
                    user: self.user_hasher.hash_one(r.user_id),
                    role: 0,
                    offset: u32::try_from(offset).unwrap_or(u32::MAX),
                    login_ms: r.login_ms,
                    username: (
                        u32::try_from(at).unwrap_or(u32::MAX),
                        u32::try_from(r.username.len()).unwrap_or(0),
                    ),
                };
                (entry, r.role.to_string())
            })
            .collect();
        let mut entries = Vec::with_capacity(found.len());
        for (entry, role) in found {
            entries.push(Entry {
                role: self.role_id(&role),
                ..entry
            });
        }
        if let Some(shard) = self.shards.get_mut(index) {
            self.fixed_json_count -= shard.fixed_json.len();
            *shard = Shard {
                generation,
                cas,
                bytes,
                entries,
                fixed_json: HashMap::new(),
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
        // Distinct users, and distinct (user, role) pairs counted per role. The
        // keys are already hashes: the sets only mix them (no SipHash, no sort).
        let mut active_sessions = 0usize;
        // Sized like the last pass's: growing them was a tenth of a pass.
        let size = self.last_active;
        let mut users: HashSet<u64, BuildHasherDefault<Mixed>> =
            HashSet::with_capacity_and_hasher(size, BuildHasherDefault::default());
        let mut pairs: HashSet<(u64, u32), BuildHasherDefault<Mixed>> =
            HashSet::with_capacity_and_hasher(size, BuildHasherDefault::default());
        let mut per_role = vec![0usize; self.roles.len()];
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
                let id: [u8; 16] = r
                    .get(..16)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or_default();
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
                    active_sessions += 1;
                    users.insert(e.user);
                    if pairs.insert((e.user, e.role)) {
                        let role = usize::try_from(e.role).unwrap_or(usize::MAX);
                        if per_role.len() <= role {
                            per_role.resize(role.saturating_add(1), 0);
                        }
                        if let Some(n) = per_role.get_mut(role) {
                            *n += 1;
                        }
                    }
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
        let active_users = users.len();
        self.last_active = active_sessions;
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

    /// The `limit` most recently active of `candidates` (newest first, then by
    /// username), as (last activity, shard, entry).
    fn listing(&self, mut candidates: Vec<Candidate>, limit: usize) -> Vec<Candidate> {
        let Some(k) = limit.min(candidates.len()).checked_sub(1) else {
            return Vec::new();
        };
        // The k-th most recent activity; everything at least as recent is listed
        // or loses only a tie on the username.
        candidates.select_nth_unstable_by(k, |x, y| y.0.cmp(&x.0));
        let boundary = candidates.get(k).map_or(0, |c| c.0);
        let mut chosen: Vec<Candidate> =
            candidates.into_iter().filter(|c| c.0 >= boundary).collect();
        // Ties are broken by username, read in place.
        let username = |&(_, shard, i): &Candidate| -> Option<&[u8]> {
            let s = self.shards.get(shard as usize)?;
            let (at, len) = s.entries.get(i as usize)?.username;
            s.bytes
                .get(at as usize..(at as usize).checked_add(len as usize)?)
        };
        chosen.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| username(a).cmp(&username(b))));
        chosen.truncate(k + 1);
        chosen
    }

    /// Whether a listed session's unchanging fields are already kept as JSON.
    fn has_fixed_json(&self, (_, shard, i): Candidate) -> bool {
        self.shards
            .get(shard as usize)
            .is_some_and(|s| s.fixed_json.contains_key(&i))
    }

    fn record(&self, (_, shard, i): Candidate) -> Option<RecordRef<'_>> {
        let shard = self.shards.get(usize::try_from(shard).ok()?)?;
        let e = shard.entries.get(usize::try_from(i).ok()?)?;
        record_at(&shard.bytes, e.offset)
    }

    /// A pass's counts and its `limit` (at most `MAX_LISTED`) listed sessions.
    fn counted_and_listed(
        &mut self,
        store: &impl SharedStore,
        now: u64,
        cfg: &Config,
        limit: usize,
    ) -> Result<(Counts, Vec<Candidate>), TableError> {
        let limit = limit.min(MAX_LISTED);
        let (counts, candidates) = self.pass(store, now, cfg, limit > 0)?;
        Ok((counts, self.listing(candidates, limit)))
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
        let (counts, listed) = self.counted_and_listed(store, now, cfg, limit)?;
        // Users share a few user agents: unpack and describe each one once.
        let mut agents: HashMap<&str, (String, String)> = HashMap::new();
        let sessions = listed
            .into_iter()
            .filter_map(|c| {
                let r = self.record(c)?;
                let (user_agent, device) = agents
                    .entry(r.agent)
                    .or_insert_with(|| described(r.agent))
                    .clone();
                Some(view(&r, user_agent, device, c.0, now))
            })
            .collect();
        Ok(stats_of(counts, sessions, traffic, cfg, now))
    }

    /// `report(..).to_json()`, byte for byte, without building the listed
    /// sessions' strings: each one's unchanging fields are kept as JSON from the
    /// first report that listed it, so a report writes only last activity and
    /// duration afresh.
    pub fn report_json(
        &mut self,
        store: &impl SharedStore,
        now: u64,
        cfg: &Config,
        limit: usize,
        traffic: TrafficFigures,
    ) -> Result<Vec<u8>, TableError> {
        let (counts, listed) = self.counted_and_listed(store, now, cfg, limit)?;
        let missing = listed.iter().filter(|c| !self.has_fixed_json(**c)).count();
        if self.fixed_json_count + missing > MAX_FIXED_JSON {
            self.shards.iter_mut().for_each(|s| s.fixed_json.clear());
            self.fixed_json_count = 0;
        }
        let mut agents: HashMap<String, (String, String)> = HashMap::new();
        for &c in &listed {
            let (_, shard, i) = c;
            if self.has_fixed_json(c) {
                continue;
            }
            let Some(json) = self.record(c).map(|r| fixed_json(&r, &mut agents)) else {
                continue;
            };
            if let Some(s) = self.shards.get_mut(shard as usize) {
                s.fixed_json.insert(i, json);
                self.fixed_json_count += 1;
            }
        }
        let head = stats_of(counts, Vec::new(), traffic, cfg, now);
        let mut out = Vec::with_capacity(512 + listed.len() * 448);
        stats::write_report(&mut out, &head, |out| {
            let mut first = true;
            for &(last, shard, i) in &listed {
                let Some(s) = self.shards.get(shard as usize) else {
                    continue;
                };
                let (Some(json), Some(e)) = (s.fixed_json.get(&i), s.entries.get(i as usize))
                else {
                    continue;
                };
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(json);
                let login_ms = e.login_ms;
                stats::write_session_end(out, &rfc3339(last), now.saturating_sub(login_ms) / 1000);
            }
        });
        Ok(out)
    }
}

/// A listed session's unchanging fields as JSON (`SessionFixed`).
fn fixed_json(r: &RecordRef<'_>, agents: &mut HashMap<String, (String, String)>) -> Box<[u8]> {
    let (user_agent, device) = agents
        .entry(r.agent.to_string())
        .or_insert_with(|| described(r.agent));
    let mut out = Vec::with_capacity(320);
    stats::SessionFixed {
        session_id: &uuid::Uuid::from_bytes(r.id.0).hyphenated().to_string(),
        user_id: r.user_id,
        username: r.username,
        role: r.role,
        ip: r.ip,
        user_agent,
        device,
        login_time: &rfc3339(r.login_ms),
    }
    .write_json(&mut out);
    out.into_boxed_slice()
}

/// A stored (packed) user agent, unpacked, and the device it names.
fn described(packed: &str) -> (String, String) {
    let ua = agent::unpack(packed);
    let device = crate::device::describe(&ua);
    (ua, device)
}

fn stats_of(
    counts: Counts,
    sessions: Vec<SessionView>,
    traffic: TrafficFigures,
    cfg: &Config,
    now: u64,
) -> Stats {
    Stats {
        app: cfg.app_name().to_string(),
        active_users: counts.active_users,
        active_sessions: counts.active_sessions,
        window_seconds: cfg.active_window_ms / 1000,
        by_role: counts.by_role,
        sessions,
        traffic,
        generated_at: rfc3339(now),
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
        session_id: uuid::Uuid::from_bytes(r.id.0).hyphenated().to_string(),
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
            id: crate::ids::SessionId([id; 16]),
            user_id: user.into(),
            username: user.into(),
            role: role.into(),
            ip: "10.0.0.1".into(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36".into(),
            login_ms: 1_000,
            last_ms: last,
            cookie: crate::ids::CookieHash([id; 16]),
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
            // The JSON with kept fixed fields is the report's, byte for byte (twice:
            // when they are made, and when they are reused).
            for _ in 0..2 {
                let json = snap
                    .report_json(&store, now, &cfg, limit, traffic.clone())
                    .unwrap();
                assert_eq!(
                    String::from_utf8(json).unwrap(),
                    String::from_utf8(want.to_json()).unwrap()
                );
            }
        }
        // Nothing changed: nothing copied or decoded again. A touch changes only
        // activity.
        snap.counts(&store, now, &cfg).unwrap();
        assert_eq!((snap.copied, snap.decoded), (0, 0));
        t.touch(&[(crate::ids::CookieHash([4; 16]), now)], now)
            .unwrap();
        let c = snap.counts(&store, now, &cfg).unwrap();
        assert_eq!((snap.decoded, c.active_sessions, c.active_users), (0, 7, 6));
        assert_eq!(snap.copied, 0);
        // A logout: fresh counts (its shard is not even read once its activity
        // shard is empty).
        t.end(&crate::ids::CookieHash([5; 16]), now, &cfg).unwrap();
        let c = snap.counts(&store, now, &cfg).unwrap();
        assert_eq!((snap.decoded, c.active_sessions), (0, 6));
        assert_eq!(c.by_role.get("auditor"), None);
        // A rotation changes one shard: one decode, and the report shows it.
        let kept = snap.fixed_json_count;
        t.rotate(
            &crate::ids::CookieHash([1; 16]),
            &crate::ids::CookieHash([99; 16]),
            now + 5,
            &cfg,
        )
        .unwrap();
        let r = snap
            .report(&store, now + 5, &cfg, 1, traffic.clone())
            .unwrap();
        assert_eq!((snap.copied, snap.decoded), (1, 1));
        // The re-decoded shard's kept JSON went with it: the listing shows the change.
        assert_eq!(snap.fixed_json_count, kept - 1);
        let json = snap
            .report_json(&store, now + 5, &cfg, 100, traffic.clone())
            .unwrap();
        let want = snap
            .report(&store, now + 5, &cfg, 100, traffic.clone())
            .unwrap();
        assert_eq!(json, want.to_json());
        assert!(snap.fixed_json_count >= want.sessions.len());
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
        t.rotate(
            &crate::ids::CookieHash([99; 16]),
            &crate::ids::CookieHash([98; 16]),
            now + 6,
            &cfg,
        )
        .unwrap();
        let c = snap.counts(&store, now + 6, &cfg).unwrap();
        assert_eq!(
            (snap.copied, snap.decoded, c.active_sessions),
            (every, 1, 6)
        );
        let r = snap.report(&store, now + 6, &cfg, 1, traffic).unwrap();
        assert_eq!(r.sessions[0].last_activity, rfc3339(now + 6));
        assert_eq!(snap.copied, 0);
    }
}
