//! The plugin's own routes under `route_prefix`, answered in the filter and never
//! proxied: the dashboard page (no data), and the data routes, which need the
//! admin token or an admin-role session (`gateway::authorize`). The answers are
//! the core's (`answer::Answer`); this file finds the data in shared data.

use crate::fleet_admin::{Asked, Gather, Step};
use crate::host;
use crate::vm::Vm;
use headcount_core::answer::Answer;
use headcount_core::bearer;
use headcount_core::events::{Actor, Events, EVENTS_KEY};
use headcount_core::gateway::{self, AdminRoute};
use headcount_core::history::{History, HISTORY_KEY};
use headcount_core::identity::Identity;
use headcount_core::table::SharedStore;
use headcount_core::table::{StoreError, TableError};
use headcount_core::{handoff, record, stats, traffic, CookieHash};

/// A request to one of the plugin's routes, as the stream read it.
pub struct AdminRequest<'a> {
    pub route: AdminRoute,
    /// Path and query string.
    pub path: &'a [u8],
    pub authorization: Option<&'a [u8]>,
    /// Whether it came from the same origin (a state change on a cookie needs it).
    pub site: gateway::Site,
    /// The request's session key (cookie hash, or a verified token's key).
    pub cookie: Option<CookieHash>,
    /// Who a verified JWT names, when its session is not in the table (admin
    /// routes never start one).
    pub bearer_admin: Option<Identity>,
    pub now: u64,
}

/// The answer to a request for the plugin's routes or, in fleet mode, the
/// collectors' answers a data route waits for.
pub fn decide(vm: &Vm, req: AdminRequest<'_>) -> Step {
    let (cfg, route, now) = (&vm.cfg, req.route, req.now);
    let Some(fleet) = vm
        .fleet
        .as_ref()
        .filter(|_| Answer::without_data(cfg, route).is_none())
    else {
        return Step::Answer(answer(vm, req));
    };
    let asked = Asked {
        route,
        path: req.path,
        authorization: req.authorization,
        site: req.site,
        cookie: req.cookie,
        transient: req
            .bearer_admin
            .and_then(|who| bearer::transient_session(cfg, who, now)),
    };
    Gather::start(fleet, cfg, asked, now)
}

/// The answer to a request for the plugin's routes.
pub fn answer(vm: &Vm, req: AdminRequest<'_>) -> Answer {
    let (cfg, route, now) = (&vm.cfg, req.route, req.now);
    if let Some(answer) = Answer::without_data(cfg, route) {
        return answer;
    }
    let token = req.authorization.and_then(gateway::bearer);
    let session = req
        .cookie
        .and_then(|h| vm.table().resolve(&h, now).ok().flatten())
        .or_else(|| bearer::transient_session(cfg, req.bearer_admin?, now));
    let access = gateway::authorize(cfg, route, token, session.as_ref(), req.site, now);
    Answer::denied(access).unwrap_or_else(|| {
        let by = gateway::actor(cfg, token, session.as_ref(), now);
        data(vm, route, req.path, by, now).unwrap_or_else(|e| {
            host::error(&format!("{route:?} failed: {e}"));
            Answer::unavailable()
        })
    })
}

/// The singleton's stats report if it is fresh (`handoff::SNAPSHOT_MAX_AGE_MS`),
/// noting that it is read so the singleton keeps it fresh.
fn snapshot(vm: &Vm, now: u64) -> Option<Vec<u8>> {
    if let Err(e) = crate::host::overwrite(&vm.store, handoff::WANTED_KEY, &now.to_le_bytes()) {
        host::warn(&format!("stats snapshot not asked for: {e}"));
    }
    let (stored, _) = vm.store.get(handoff::SNAPSHOT_KEY).ok()??;
    handoff::usable_snapshot(&stored, now).map(<[u8]>::to_vec)
}

/// The answer of an allowed data route, asked for by `by`; flushes this VM first
/// so its own activity shows.
fn data(
    vm: &Vm,
    route: AdminRoute,
    path: &[u8],
    by: Option<Actor>,
    now: u64,
) -> Result<Answer, String> {
    if matches!(route, AdminRoute::Stats) && handoff::accepts_snapshot(path) {
        if let Some(report) = snapshot(vm, now) {
            return Ok(Answer::json(200, report));
        }
    }
    vm.flush(now);
    let store = &vm.store;
    let e = |e: TableError| e.to_string();
    let s = |e: StoreError| e.to_string();
    Ok(match route {
        AdminRoute::Revoke(id) => {
            let session = vm.table().revoke(&id, now, &vm.cfg).map_err(e)?;
            if let Some(session) = &session {
                host::info(&format!(
                    "revoked {} ({})",
                    session.username,
                    session.uuid()
                ));
                vm.revocation_event(session, by, now);
            }
            Answer::revoked(session.as_ref())
        }
        AdminRoute::History => {
            let (h, _) = record::load::<History>(store, HISTORY_KEY).map_err(s)?;
            Answer::history(&h, now)
        }
        AdminRoute::Events => {
            let (ev, _) = record::load::<Events>(store, EVENTS_KEY).map_err(s)?;
            Answer::events(&ev, path)
        }
        AdminRoute::Metrics => {
            let counts = vm.counts(now).map_err(e)?;
            let (ev, _) = record::load::<Events>(store, EVENTS_KEY).map_err(s)?;
            Answer::metrics(vm.app(), &counts, &ev)
        }
        _ => {
            let limit = stats::listed_limit(path);
            let traffic = traffic::load(store).map_err(s)?;
            let report = vm
                .snapshot
                .borrow_mut()
                .report_json(store, now, &vm.cfg, limit, traffic.figures(now))
                .map_err(e)?;
            Answer::json(200, report)
        }
    })
}
