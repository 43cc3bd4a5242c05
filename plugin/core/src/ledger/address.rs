//! Where a request of the ledger protocol goes, and whose it is. A ledger holds
//! one app's sessions: its shards are named after the app, every request names
//! the app in its path (`/{app}/{op}`), and a shard serves the first app it was
//! asked for and refuses any other. So apps that share one store (one Durable
//! Object namespace; one Redis) never read or write each other's rows, even
//! when a deployment is misconfigured into another's names.

use crate::app::AppName;

/// The name of shard `shard` of `app`'s ledger (a Durable Object's name; a
/// store's key prefix): `{app}/shard-{n}`. The `default` app keeps the names
/// shards had before apps existed (`shard-{n}`), so an upgraded single-app
/// deployment finds its live sessions where it left them.
pub fn shard_name(app: &AppName, shard: u32) -> String {
    if app.is_default() {
        format!("shard-{shard}")
    } else {
        format!("{app}/shard-{shard}")
    }
}

/// The path of operation `op` (`/batch`, `/stats`, ...) for `app`.
pub fn request_path(app: &AppName, op: &str) -> String {
    format!("/{app}{op}")
}

/// The app and the operation of a request path (`/{app}/{op}`); `None` if the
/// path has no valid app or no operation.
pub fn parse_request_path(path: &str) -> Option<(AppName, &str)> {
    let rest = path.strip_prefix('/')?;
    let slash = rest.find('/')?;
    let app = AppName::parse("app", rest.get(..slash)?).ok()?;
    Some((app, rest.get(slash..)?))
}

/// The path of operation `op` on shard `shard` of `app` at a collector, which
/// keeps every shard of every app it is asked for: `/{app}/shard-{n}{op}`.
pub fn collector_path(app: &AppName, shard: u32, op: &str) -> String {
    format!("/{app}/shard-{shard}{op}")
}

/// The app, shard and operation of a collector path; `None` if it is not one.
pub fn parse_collector_path(path: &str) -> Option<(AppName, u32, &str)> {
    let (app, rest) = parse_request_path(path)?;
    let rest = rest.strip_prefix("/shard-")?;
    let slash = rest.find('/')?;
    let shard = rest.get(..slash)?;
    if shard.is_empty() || !shard.bytes().all(|b| b.is_ascii_digit()) || shard.len() > 9 {
        return None;
    }
    Some((app, shard.parse().ok()?, rest.get(slash..)?))
}

/// What a shard does with a request for `asked` when it keeps `kept` (`None`:
/// it has served nobody yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Its own app: go on.
    Serve,
    /// Its first request: record `asked` as its app, then go on.
    Adopt,
    /// Another app's request: refuse it, with this reason.
    Refuse(String),
}

pub fn admit(kept: Option<&AppName>, asked: &AppName) -> Admit {
    match kept {
        None => Admit::Adopt,
        Some(k) if k == asked => Admit::Serve,
        Some(k) => Admit::Refuse(format!(
            "this shard keeps app `{k}`; a request for app `{asked}` is refused"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(s: &str) -> AppName {
        AppName::parse("app", s).unwrap()
    }

    #[test]
    fn shards_are_named_after_their_app() {
        assert_eq!(shard_name(&app("shop-a"), 3), "shop-a/shard-3");
        assert_eq!(shard_name(&AppName::default_app(), 0), "shard-0");
        assert_ne!(shard_name(&app("a"), 0), shard_name(&app("b"), 0));
    }

    #[test]
    fn paths_name_the_app_and_the_op() {
        let p = request_path(&app("shop.a"), "/batch");
        assert_eq!(p, "/shop.a/batch");
        assert_eq!(parse_request_path(&p), Some((app("shop.a"), "/batch")));
        for bad in ["/batch", "batch", "//batch", "/a b/batch", "/"] {
            assert_eq!(parse_request_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn collector_paths_name_the_app_the_shard_and_the_op() {
        let p = collector_path(&app("shop"), 12, "/batch");
        assert_eq!(p, "/shop/shard-12/batch");
        assert_eq!(parse_collector_path(&p), Some((app("shop"), 12, "/batch")));
        for bad in [
            "/shop/batch",
            "/shop/shard-/batch",
            "/shop/shard-x/batch",
            "/shop/shard-1",
            "/shop/shard-9999999999/batch",
            "/a b/shard-1/batch",
        ] {
            assert_eq!(parse_collector_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_shard_serves_one_app() {
        assert_eq!(admit(None, &app("a")), Admit::Adopt);
        assert_eq!(admit(Some(&app("a")), &app("a")), Admit::Serve);
        let Admit::Refuse(why) = admit(Some(&app("a")), &app("b")) else {
            panic!("another app's request was served");
        };
        assert!(why.contains("`a`") && why.contains("`b`"), "{why}");
    }
}
