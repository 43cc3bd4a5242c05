//! The table's operations against an in-memory store.
use super::*;
use crate::memory::MemoryStore;

fn h(n: u8) -> CookieHash {
    CookieHash([n; 16])
}

fn session(id: u8, cookie: u8, user: &str, now: u64) -> Session {
    Session {
        id: crate::ids::SessionId([id; 16]),
        user_id: user.into(),
        username: user.into(),
        role: "student".into(),
        ip: "127.0.0.1".into(),
        user_agent: "ua".into(),
        login_ms: now,
        last_ms: now,
        cookie: h(cookie),
        aliases: vec![],
    }
}

#[test]
fn insert_resolve_touch_end() {
    let (store, cfg) = (MemoryStore::default(), Config::default());
    let t = SessionTable::new(&store);
    t.insert(session(1, 1, "a", 1_000), &cfg).unwrap();
    assert_eq!(
        t.resolve(&h(1), 1_000).unwrap().map(|s| s.username),
        Some("a".into())
    );
    assert_eq!(t.resolve(&h(2), 1_000).unwrap(), None);
    let hit = t.touch(&[(h(1), 5_000), (h(2), 5_000)], 5_000).unwrap();
    assert_eq!(hit, vec![true, false]);
    assert_eq!(
        t.resolve(&h(1), 5_000).unwrap().map(|s| s.last_ms),
        Some(5_000)
    );
    // An older time never moves last activity back.
    t.touch(&[(h(1), 4_000)], 5_000).unwrap();
    assert_eq!(
        t.resolve(&h(1), 5_000).unwrap().map(|s| s.last_ms),
        Some(5_000)
    );
    assert!(t.end(&h(1), 6_000, &cfg).unwrap().is_some());
    assert_eq!(t.sessions().unwrap(), vec![]);
    assert!(t.end(&h(1), 6_000, &cfg).unwrap().is_none());
}

#[test]
fn fast_rotation_keeps_every_recent_value_resolving() {
    let (store, cfg) = (MemoryStore::default(), Config::default());
    let t = SessionTable::new(&store);
    t.insert(session(1, 1, "a", 0), &cfg).unwrap();
    for n in 1..20u8 {
        assert!(t
            .rotate(&h(n), &h(n + 1), u64::from(n), &cfg)
            .unwrap()
            .is_some());
    }
    // A request still in flight with an old value rotates onto the same session.
    assert!(t.rotate(&h(3), &h(99), 30, &cfg).unwrap().is_some());
    assert_eq!(t.sessions().unwrap().len(), 1);
    for n in (1..=20).chain([99]) {
        assert_eq!(
            t.resolve(&h(n), 40).unwrap().map(|s| s.id),
            Some(crate::ids::SessionId([1; 16])),
            "value {n}"
        );
    }
    let s = t.resolve(&h(5), 40).unwrap().unwrap();
    assert_eq!(s.cookie, h(99));
    assert_eq!(s.aliases, vec![h(20), h(19)]);
    // After the grace period only the newest values still resolve.
    let later = 40 + ROTATION_GRACE_MS + 1;
    assert_eq!(t.resolve(&h(5), later).unwrap(), None);
    assert!(t.resolve(&h(19), later).unwrap().is_some());
    // A touch batch keyed by many of those values lands once, on the session.
    let hit = t
        .touch(&[(h(2), 50), (h(10), 60), (h(99), 55)], 60)
        .unwrap();
    assert_eq!(hit, vec![true; 3]);
    assert_eq!(t.resolve(&h(99), 60).unwrap().map(|s| s.last_ms), Some(60));
    assert!(t.end(&h(20), 70, &cfg).unwrap().is_some());
    for n in (1..=20).chain([99]) {
        assert_eq!(t.resolve(&h(n), 80).unwrap(), None, "value {n}");
    }
    assert!(t.sweep(0..SHARDS, later + 1, &cfg).unwrap().is_empty());
    let empty_shards = (0..SHARDS)
        .map(session_key)
        .filter(|k| store.get(k).unwrap().is_some())
        .map(|k| k.len() + 1)
        .sum::<usize>()
        + (0..SEEN_SHARDS)
            .map(seen_key)
            .chain((0..SHARDS).map(cookie_key))
            .filter(|k| store.get(k).unwrap().is_some())
            .map(|k| k.len())
            .sum::<usize>()
        + GENERATIONS_KEY.len()
        + GENERATIONS_LEN;
    assert_eq!(t.footprint().unwrap(), empty_shards);
}

#[test]
fn a_realistic_session_takes_under_256_bytes() {
    // The Envoy benchmark's session: 32-char user id, 33-char username, a browser UA.
    let (store, cfg) = (MemoryStore::default(), Config::default());
    let t = SessionTable::new(&store);
    let empty = t.footprint().unwrap();
    let n = 2_000u32;
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        id[4..8].copy_from_slice(&i.to_le_bytes());
        let mut cookie = id;
        cookie[8] = 1;
        t.insert(
            Session {
                id: SessionId(id),
                user_id: format!("{i:032}"),
                username: format!("bench-user-{i:022}"),
                role: "student".into(),
                ip: "127.0.0.1".into(),
                user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36".into(),
                login_ms: 1_795_830_252_123,
                last_ms: 1_795_830_252_123,
                cookie: CookieHash(cookie),
                aliases: vec![],
            },
            &cfg,
        )
        .unwrap();
    }
    let keys: usize = (0..SHARDS)
        .flat_map(|i| [session_key(i), cookie_key(i)])
        .chain((0..SEEN_SHARDS).map(seen_key))
        .map(|k| k.len())
        .sum();
    let per = (t.footprint().unwrap() - keys) as f64 / f64::from(n);
    assert!(per <= 210.0, "{per} bytes per session ({empty} empty)");
}

#[test]
fn racing_rotations_both_resolve() {
    let (store, cfg) = (MemoryStore::default(), Config::default());
    let t = SessionTable::new(&store);
    t.insert(session(1, 1, "a", 0), &cfg).unwrap();
    t.rotate(&h(1), &h(2), 10, &cfg).unwrap();
    t.rotate(&h(1), &h(3), 10, &cfg).unwrap();
    assert!(t.resolve(&h(2), 20).unwrap().is_some());
    assert!(t.resolve(&h(3), 20).unwrap().is_some());
    assert_eq!(t.sessions().unwrap().len(), 1);
}

#[test]
fn unknown_cookies_do_not_rotate_or_end() {
    let (store, cfg) = (MemoryStore::default(), Config::default());
    let t = SessionTable::new(&store);
    assert_eq!(t.rotate(&h(1), &h(2), 0, &cfg).unwrap(), None);
    assert_eq!(t.end(&h(1), 0, &cfg).unwrap(), None);
    assert_eq!(t.resolve(&h(2), 0).unwrap(), None);
}

#[test]
fn cas_mismatches_are_retried_not_lost() {
    let (store, cfg) = (MemoryStore::default(), Config::default());
    let t = SessionTable::new(&store);
    t.insert(session(1, 1, "a", 0), &cfg).unwrap();
    store.fail_next_sets.set(5);
    t.insert(session(2, 2, "b", 0), &cfg).unwrap();
    assert_eq!(t.sessions().unwrap().len(), 2);
    store.fail_next_sets.set(1000);
    assert!(matches!(
        t.insert(session(3, 3, "c", 0), &cfg),
        Err(TableError::Contended(_))
    ));
}

#[test]
fn sweep_removes_expired_once_and_memory_stays_flat() {
    let (store, cfg) = (MemoryStore::default(), Config::default());
    let t = SessionTable::new(&store);
    let mut after_first = None;
    for round in 0..3u64 {
        let start = round * 10_000_000;
        for i in 0..200u16 {
            let mut s = session(0, 0, &format!("u{i}"), start);
            s.id.0[..2].copy_from_slice(&i.to_le_bytes());
            s.id.0[2] = round as u8;
            s.cookie = CookieHash(s.id.0);
            s.cookie.0[3] = 7;
            let cookie = s.cookie;
            t.insert(s, &cfg).unwrap();
            if i % 3 == 0 {
                let mut to = cookie;
                to.0[4] = 1;
                t.rotate(&cookie, &to, start + 1, &cfg).unwrap();
            }
        }
        let peak = store.bytes();
        let ended = t
            .sweep(0..SHARDS, start + cfg.idle_timeout_ms + 2, &cfg)
            .unwrap();
        assert_eq!(ended.len(), 200);
        assert!(t
            .sweep(0..SHARDS, start + cfg.idle_timeout_ms + 3, &cfg)
            .unwrap()
            .is_empty());
        let after = store.bytes();
        // Only the keys stay (Envoy cannot delete them); every value is an empty
        // list (one byte), or no bytes for the fixed-width shards, besides the
        // fixed-size generations.
        let (keys, values) = store.values();
        let values = values - GENERATIONS_LEN;
        let keys = keys - 1;
        let seen_keys = (0..SEEN_SHARDS)
            .map(seen_key)
            .chain((0..SHARDS).map(cookie_key))
            .filter(|k| store.get(k).unwrap().is_some())
            .count();
        assert_eq!(
            values,
            keys - seen_keys,
            "round {round}: {after} bytes left of {peak}"
        );
        // Every round ends where the first did: nothing accumulates.
        assert_eq!(*after_first.get_or_insert(after), after, "round {round}");
    }
}

#[test]
fn the_cap_evicts_the_longest_idle_and_counts_stay_exact() {
    let store = MemoryStore::default();
    let cfg = Config {
        max_sessions: 3,
        ..Config::default()
    };
    let t = SessionTable::new(&store);
    for i in 0..3u8 {
        t.insert(
            session(i, 100 + i, &format!("u{i}"), u64::from(i) * 10),
            &cfg,
        )
        .unwrap();
    }
    t.touch(&[(h(100), 50)], 50).unwrap(); // u0 is now the most recent
    let evicted = t.insert(session(9, 109, "u9", 60), &cfg).unwrap();
    assert_eq!(
        evicted
            .iter()
            .map(|s| s.username.as_str())
            .collect::<Vec<_>>(),
        vec!["u1"]
    );
    assert_eq!(t.live_count().unwrap(), 3);
    assert_eq!(t.sessions().unwrap().len(), 3);
    assert_eq!(t.resolve(&h(101), 60).unwrap(), None);
    t.end(&h(100), 70, &cfg).unwrap();
    t.sweep(0..SHARDS, 70 + cfg.idle_timeout_ms + 1, &cfg)
        .unwrap();
    assert_eq!(t.live_count().unwrap(), 0);
}

#[test]
fn per_user_limit_ends_the_oldest_session() {
    let store = MemoryStore::default();
    let cfg = Config {
        max_sessions_per_user: Some(2),
        ..Config::default()
    };
    let t = SessionTable::new(&store);
    t.insert(session(1, 1, "ann", 10), &cfg).unwrap();
    t.insert(session(2, 2, "ann", 20), &cfg).unwrap();
    t.insert(session(3, 3, "bob", 25), &cfg).unwrap();
    let evicted = t.insert(session(4, 4, "ann", 30), &cfg).unwrap();
    assert_eq!(
        evicted.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![crate::ids::SessionId([1; 16])]
    );
    assert_eq!(t.sessions().unwrap().len(), 3);
    // Ending one frees a slot: no eviction on the next login.
    t.end(&h(2), 40, &cfg).unwrap();
    assert!(t.insert(session(5, 5, "ann", 50), &cfg).unwrap().is_empty());
    assert_eq!(t.live_count().unwrap(), 3);
}

#[test]
fn revocation_covers_every_known_value_of_the_session() {
    let store = MemoryStore::default();
    let cfg = Config {
        enforce_revocation: true,
        ..Config::default()
    };
    let t = SessionTable::new(&store);
    t.insert(session(1, 1, "ann", 0), &cfg).unwrap();
    for n in 1..6u8 {
        t.rotate(&h(n), &h(n + 1), u64::from(n), &cfg).unwrap();
    }
    t.insert(session(2, 50, "bob", 0), &cfg).unwrap();
    assert_eq!(
        t.revoke(&crate::ids::SessionId([1; 16]), 10, &cfg)
            .unwrap()
            .map(|s| s.username),
        Some("ann".into())
    );
    for n in 1..=6u8 {
        assert!(t.is_revoked(&h(n), 11).unwrap(), "value {n}");
        assert_eq!(t.resolve(&h(n), 11).unwrap(), None);
    }
    assert!(!t.is_revoked(&h(50), 11).unwrap());
    assert!(t
        .revoke(&crate::ids::SessionId([1; 16]), 12, &cfg)
        .unwrap()
        .is_none());
    // Forgotten once the session could no longer have been alive.
    let later = cfg.max_lifetime_ms + 1;
    t.sweep(0..SHARDS, later, &cfg).unwrap();
    assert!(!t.is_revoked(&h(6), later).unwrap());
    assert_eq!(
        record::load::<Vec<(CookieHash, u64)>>(&store, REVOKED_KEY)
            .unwrap()
            .0,
        vec![]
    );
}

#[test]
fn identify_names_a_session_and_moves_it_between_users() {
    let store = MemoryStore::default();
    let cfg = Config::from_json(br#"{"max_sessions_per_user": 1}"#).unwrap();
    let t = SessionTable::new(&store);
    t.insert(session(1, 1, "ann", 1_000), &cfg).unwrap();
    t.insert(session(2, 2, "unnamed:x", 1_000), &cfg).unwrap();
    let who = ("7".to_string(), "ann".to_string(), "teacher".to_string());
    let (named, evicted) = t
        .identify(&crate::ids::SessionId([2; 16]), &who, &cfg)
        .unwrap()
        .unwrap();
    assert_eq!(
        (named.username.as_str(), named.role.as_str()),
        ("ann", "teacher")
    );
    assert!(evicted.is_empty(), "user 7 had no session: {evicted:?}");
    let s = t.resolve(&h(2), 1_000).unwrap().unwrap();
    assert_eq!((s.user_id, s.role), ("7".into(), "teacher".into()));
    // Naming session 1 user 7 too: the limit of one pushes the older out.
    let (_, evicted) = t
        .identify(&crate::ids::SessionId([1; 16]), &who, &cfg)
        .unwrap()
        .unwrap();
    assert_eq!(evicted.len(), 1);
    assert_eq!(t.live_count().unwrap(), 1);
    assert_eq!(
        t.identify(&crate::ids::SessionId([9; 16]), &who, &cfg)
            .unwrap(),
        None
    );
}
