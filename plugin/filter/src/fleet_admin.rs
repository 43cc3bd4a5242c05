//! Fleet mode's data routes (stats, history, events, metrics, revoke): the
//! admin stream asks the collectors itself and waits, paused, so its calls live
//! as long as it needs them. Two steps:
//! 1. who asks: with the admin token, nobody to look up; with a session cookie,
//!    the cookie's shard and then the session's shard (`POST /resolve`);
//! 2. the data: every shard's `/stats`, shard 0's `/feed`, or the session's
//!    shard's `/revoke` (then, with `enforce_revocation`, every shard's
//!    `/revoked`).
//!
//! A collector that fails or answers anything but 200 makes the route 503
//! ("unavailable"), never a partial answer.

use crate::fleet::Fleet;
use crate::host;
use headcount_core::answer::Answer;
use headcount_core::events::Actor;
use headcount_core::gateway::{self, AdminRoute, Site};
use headcount_core::ids::CookieHash;
use headcount_core::ledger::route::Gathered;
use headcount_core::ledger::wire::{
    FeedReply, Resolve, ResolveReply, RevokeQuery, RevokeReply, RevokedAdd, StatsQuery,
};
use headcount_core::{Config, Session};
use proxy_wasm::types::{BufferType, MapType};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Largest answer read from a collector.
const MAX_REPLY: usize = 8 << 20;

/// Sends of one call at most: a call that got no answer, 503 (a collector
/// replica gone: Envoy's answer for a refused connection) or 504 (too slow),
/// goes again, most likely to another replica (until health checks take a
/// dead one out of the rotation).
const MAX_SENDS: u8 = 10;

/// A call in flight, kept to be sent again.
struct Call {
    part: Part,
    shard: u32,
    op: &'static str,
    body: Vec<u8>,
    sends: u8,
}

/// What the stream waits for, per call.
enum Part {
    /// The cookie's shard: the session id behind the cookie (or the session).
    Cookie,
    /// The session's shard: the session.
    Session,
    Stats,
    Feed,
    Revoke,
    /// A shard's `/revoked` (enforcement): the values it added back (the
    /// ones asked, and the session's cookie entries it held).
    Revoked,
    /// The second round: every value any shard added, to every shard, so each
    /// shard's list (which a node syncs from any one shard) is complete.
    RevokedAll,
}

/// A request for a data route in fleet mode, while its calls are answered.
pub struct Gather {
    route: AdminRoute,
    path: Vec<u8>,
    /// The bearer token the request carried (compared to the admin token).
    token: Option<Vec<u8>>,
    site: Site,
    /// A verified JWT's admin, whose session the ledger may not hold.
    transient: Option<Session>,
    waiting: BTreeMap<u32, Call>,
    stats: Gathered,
    feed: Option<FeedReply>,
    revoked: Option<Option<Session>>,
    /// Enforcement: the first round's query, and every value the shards added.
    revoked_round: Option<(RevokedAdd, Vec<(CookieHash, u64)>)>,
    failed: Option<String>,
}

/// What the stream does next.
pub enum Step {
    Wait(Box<Gather>),
    Answer(Answer),
}

/// The request, as the stream read it.
pub struct Asked<'a> {
    pub route: AdminRoute,
    pub path: &'a [u8],
    pub authorization: Option<&'a [u8]>,
    pub site: Site,
    pub cookie: Option<CookieHash>,
    pub transient: Option<Session>,
}

impl Gather {
    /// Starts: the data at once if the token allows, else who the cookie is.
    pub fn start(fleet: &Fleet, cfg: &Config, asked: Asked<'_>, now: u64) -> Step {
        let mut g = Gather {
            route: asked.route,
            path: asked.path.to_vec(),
            token: asked
                .authorization
                .and_then(gateway::bearer)
                .map(<[u8]>::to_vec),
            site: asked.site,
            transient: asked.transient,
            waiting: BTreeMap::new(),
            stats: Gathered::default(),
            feed: None,
            revoked: None,
            revoked_round: None,
            failed: None,
        };
        let by_token = gateway::authorize(cfg, g.route, g.token.as_deref(), None, g.site, now);
        let started = match asked.cookie {
            Some(hash) if by_token != gateway::Access::Allowed => {
                let q = Resolve {
                    hash: Some(hash),
                    id: None,
                    shard: hash.shard(fleet.cfg.shards),
                    shards: fleet.cfg.shards,
                    now,
                };
                g.ask(fleet, q.shard, "/resolve", &q, Part::Cookie)
            }
            _ => return Box::new(g).authorized(fleet, cfg, None, now),
        };
        match started {
            Ok(()) => Step::Wait(Box::new(g)),
            Err(e) => Step::Answer(unavailable(&e)),
        }
    }

    /// One of its calls answered: the next step.
    pub fn answered(
        mut self: Box<Self>,
        fleet: &Fleet,
        cfg: &Config,
        token: u32,
        body_size: usize,
        now: u64,
    ) -> Step {
        let Some(call) = self.waiting.remove(&token) else {
            return Step::Wait(self);
        };
        let body = match read_body(body_size) {
            Ok(b) => b,
            Err((status, _))
                if matches!(status, None | Some(503 | 504)) && call.sends < MAX_SENDS =>
            {
                return match self.send(fleet, call) {
                    Ok(()) => Step::Wait(self),
                    Err(e) => Step::Answer(unavailable(&e)),
                };
            }
            Err((_, e)) => {
                self.failed.get_or_insert(e);
                Vec::new()
            }
        };
        let part = call.part;
        if self.failed.is_some() {
            return self.finish(fleet, cfg, now);
        }
        match self.take(fleet, cfg, part, &body, now) {
            Ok(Some(who)) => self.authorized(fleet, cfg, who, now),
            Ok(None) => self.finish(fleet, cfg, now),
            Err(e) => {
                self.failed.get_or_insert(e);
                self.finish(fleet, cfg, now)
            }
        }
    }

    /// Reads one answer; `Some(who)` once it tells who asks.
    fn take(
        &mut self,
        fleet: &Fleet,
        cfg: &Config,
        part: Part,
        body: &[u8],
        now: u64,
    ) -> Result<Option<Option<Session>>, String> {
        match part {
            Part::Cookie => {
                let reply: ResolveReply = parse(body)?;
                let Some(id) = reply.id else {
                    return Ok(Some(reply.session));
                };
                let shards = fleet.cfg.shards;
                let q = Resolve {
                    hash: None,
                    id: Some(id),
                    shard: id.shard(shards),
                    shards,
                    now,
                };
                self.ask(fleet, q.shard, "/resolve", &q, Part::Session)?;
            }
            Part::Session => {
                let reply: ResolveReply = parse(body)?;
                return Ok(Some(reply.session));
            }
            Part::Stats => self.stats.add(parse(body)?, now),
            Part::Feed => self.feed = Some(parse(body)?),
            Part::Revoke => {
                let reply: RevokeReply = parse(body)?;
                let Some((session, adds)) = fleet.revoked_session(reply, cfg, now) else {
                    self.revoked = Some(None);
                    return Ok(None);
                };
                host::info(&format!(
                    "revoked {} ({})",
                    session.username,
                    session.uuid()
                ));
                self.revoked = Some(Some(session));
                self.revoked_round = adds.first().cloned().map(|q| (q, Vec::new()));
                for q in adds {
                    self.ask(fleet, q.shard, "/revoked", &q, Part::Revoked)?;
                }
            }
            Part::Revoked => {
                let added: Vec<(CookieHash, u64)> = parse(body)?;
                if let Some((_, all)) = self.revoked_round.as_mut() {
                    all.extend(added.iter().copied());
                }
                fleet.revoked_values(added, now);
                let first_round_left = self
                    .waiting
                    .values()
                    .any(|c| matches!(c.part, Part::Revoked));
                if !first_round_left {
                    self.complete_revoked_lists(fleet)?;
                }
            }
            Part::RevokedAll => fleet.revoked_values(parse(body)?, now),
        }
        Ok(None)
    }

    /// Who asks is known (`who`: the session behind the cookie, if any): the
    /// answer if denied, else the data's calls.
    fn authorized(
        mut self: Box<Self>,
        fleet: &Fleet,
        cfg: &Config,
        who: Option<Session>,
        now: u64,
    ) -> Step {
        let who = who.or_else(|| self.transient.clone());
        let token = self.token.as_deref();
        let access = gateway::authorize(cfg, self.route, token, who.as_ref(), self.site, now);
        if let Some(denied) = Answer::denied(access) {
            return Step::Answer(denied);
        }
        let by = gateway::actor(cfg, token, who.as_ref(), now);
        match self.ask_data(fleet, by, now) {
            Ok(()) => Step::Wait(self),
            Err(e) => Step::Answer(unavailable(&e)),
        }
    }

    /// After the first round: values some shard added that others lack (a
    /// session's older cookie entries, indexed on their own shard) go to
    /// every shard.
    fn complete_revoked_lists(&mut self, fleet: &Fleet) -> Result<(), String> {
        let Some((first, all)) = self.revoked_round.take() else {
            return Ok(());
        };
        let mut hashes = first.hashes.clone();
        for (h, _) in all {
            if !hashes.contains(&h) {
                hashes.push(h);
            }
        }
        if hashes.len() == first.hashes.len() {
            return Ok(());
        }
        for shard in 0..first.shards {
            let q = RevokedAdd {
                hashes: hashes.clone(),
                shard,
                ..first.clone()
            };
            self.ask(fleet, shard, "/revoked", &q, Part::RevokedAll)?;
        }
        Ok(())
    }

    fn ask_data(&mut self, fleet: &Fleet, by: Option<Actor>, now: u64) -> Result<(), String> {
        let shards = fleet.cfg.shards;
        let (stats, feed) = match self.route {
            AdminRoute::Revoke(id) => {
                let q = RevokeQuery {
                    id,
                    shard: id.shard(shards),
                    shards,
                    by,
                };
                return self.ask(fleet, q.shard, "/revoke", &q, Part::Revoke);
            }
            AdminRoute::History | AdminRoute::Events => (false, true),
            AdminRoute::Metrics => (true, true),
            _ => (true, false),
        };
        if stats {
            for shard in 0..shards {
                self.ask(fleet, shard, "/stats", &StatsQuery { now }, Part::Stats)?;
            }
        }
        if feed {
            self.ask(fleet, 0, "/feed", &(), Part::Feed)?;
        }
        Ok(())
    }

    fn ask(
        &mut self,
        fleet: &Fleet,
        shard: u32,
        op: &'static str,
        body: &impl serde::Serialize,
        part: Part,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let call = Call {
            part,
            shard,
            op,
            body,
            sends: 0,
        };
        self.send(fleet, call)
    }

    fn send(&mut self, fleet: &Fleet, mut call: Call) -> Result<(), String> {
        let token = fleet.call(call.shard, call.op, &call.body)?;
        call.sends += 1;
        self.waiting.insert(token, call);
        Ok(())
    }

    /// Every call answered (or one failed): the route's answer.
    fn finish(mut self: Box<Self>, fleet: &Fleet, cfg: &Config, now: u64) -> Step {
        if !self.waiting.is_empty() {
            return Step::Wait(self);
        }
        if let Some(why) = &self.failed {
            host::warn(&format!("fleet: {:?} failed: {why}", self.route));
            return Step::Answer(Answer::ledger_unavailable(why));
        }
        let g = std::mem::take(&mut self.stats);
        let feed = self.feed.take().unwrap_or_default();
        let app = fleet.app();
        Step::Answer(match self.route {
            AdminRoute::Revoke(_) => Answer::revoked(self.revoked.flatten().as_ref()),
            AdminRoute::History => Answer::history(&feed.history, now),
            AdminRoute::Events => Answer::events(&feed.events, &self.path),
            AdminRoute::Metrics => {
                let counts = headcount_core::stats::counts(&g.sessions, now, cfg);
                Answer::metrics(app, &counts, &feed.events)
            }
            _ => {
                let limit = headcount_core::stats::listed_limit(&self.path);
                let figures = g.traffic.figures(now);
                let report =
                    headcount_core::stats::report_listing(g.sessions, figures, now, cfg, limit);
                Answer::json(200, report.to_json())
            }
        })
    }
}

fn unavailable(why: &str) -> Answer {
    host::warn(&format!("fleet: {why}"));
    Answer::ledger_unavailable(why)
}

/// The body of a collector's 200 answer; else its status (`None`: no answer)
/// and what to say.
fn read_body(body_size: usize) -> Result<Vec<u8>, (Option<u16>, String)> {
    let headers = host::Headers::read(MapType::HttpCallResponseHeaders);
    let status = headers
        .get(":status")
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok());
    match status {
        Some(200) if body_size <= MAX_REPLY => {
            Ok(host::body(BufferType::HttpCallResponseBody, body_size).unwrap_or_default())
        }
        Some(200) => Err((status, format!("an answer of {body_size} bytes"))),
        Some(s) => {
            let body = host::body(BufferType::HttpCallResponseBody, body_size.min(200))
                .unwrap_or_default();
            let why = String::from_utf8_lossy(&body);
            Err((status, format!("a collector answered {s} ({why})")))
        }
        None => Err((None, "no collector answered".into())),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("an unreadable answer: {e}"))
}
