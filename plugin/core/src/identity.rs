//! Reading who someone is from attacker-controlled bytes: cookies, login bodies,
//! trusted upstream headers, forwarding headers. Nothing here panics on bad input.

use crate::config::Config;
use crate::session::{truncate, MAX_NAME, MAX_ROLE};
use cookie::Cookie;
use std::net::IpAddr;

/// Largest body we parse for identity; bigger login bodies are left alone.
pub const MAX_BODY: usize = 64 * 1024;

/// A login body copied chunk by chunk as it streams past, up to [`MAX_BODY`].
///
/// The filter does not hold a body back to read it: a paused (buffered) body that
/// outgrows the proxy's buffer limit gets a 413 from Envoy before the filter is
/// asked again, and how a body splits into chunks is up to the network. So it
/// copies instead. (A fleet node holds a login's body up to `MAX_BODY`,
/// `fleet::login_body_waits`, and copies it whole at its end.)
#[derive(Debug, Default)]
pub struct BodyCopy {
    bytes: Vec<u8>,
    /// Too large, or a chunk could not be read: the copy is dropped for good.
    lost: bool,
}

impl BodyCopy {
    /// Copies the next chunk of `size` bytes; `read` fetches them, and is called only
    /// while the body still fits, so a large body costs no reads.
    pub fn push(&mut self, size: usize, read: impl FnOnce() -> Option<Vec<u8>>) {
        if self.lost || size == 0 {
            return;
        }
        let chunk = if self.bytes.len().saturating_add(size) <= MAX_BODY {
            read()
        } else {
            None
        };
        match chunk {
            Some(c) if c.len() == size => self.bytes.extend_from_slice(&c),
            _ => {
                self.lost = true;
                self.bytes = Vec::new();
            }
        }
    }

    /// The body is too large (or unreadable): nothing more will be copied.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// The whole body, or `None` if it was lost.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.lost).then_some(self.bytes)
    }
}

/// The value of cookie `name` in a request's `Cookie` header, if present and non-empty.
///
/// A request's `Cookie` header is only `name=value` pairs split by `;` (RFC 6265
/// 5.4), read here in one pass over the bytes, as the `cookie` crate's
/// `Cookie::split_parse` reads it (pairs trimmed, no name or no `=` skipped, the
/// first pair named `name` decides; `the_scan_reads_request_cookies_as_the_cookie_crate_does`
/// holds it to that) but without building a `Cookie` per pair: on an authenticated
/// request that was about 2,000 Wasm instructions of the request hook. Bytes that
/// are not UTF-8 in another pair no longer hide the session cookie. `Set-Cookie`
/// (attributes, dates) is still the crate's.
pub fn request_cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    let (_, value) = header
        .split(|b| *b == b';')
        .filter_map(|pair| {
            let eq = memchr::memchr(b'=', pair)?;
            let (n, v) = (trim_space(pair.get(..eq)?), trim_space(pair.get(eq + 1..)?));
            (!n.is_empty()).then_some((n, v))
        })
        .find(|(n, _)| *n == name)?;
    (!value.is_empty()).then_some(value)
}

/// `str::trim` for ASCII: the whitespace `char::is_whitespace` knows below 0x80
/// (which, unlike `u8::is_ascii_whitespace`, includes the vertical tab).
fn trim_space(mut b: &[u8]) -> &[u8] {
    let space = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    while let [first, rest @ ..] = b {
        if !space(first) {
            break;
        }
        b = rest;
    }
    while let [rest @ .., last] = b {
        if !space(last) {
            break;
        }
        b = rest;
    }
    b
}

/// What a `Set-Cookie` header says about the session cookie.
/// `V`: the raw value as parsed, or its keyed hash once a host has hashed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieChange<V = Vec<u8>> {
    /// A new value is set.
    Set(V),
    /// The cookie is deleted (empty value, `Max-Age<=0`, or `Expires` in the past).
    Cleared,
}

/// Looks for cookie `name` in one `Set-Cookie` header value.
pub fn set_cookie(header: &[u8], name: &str, now_ms: u64) -> Option<CookieChange> {
    let text = std::str::from_utf8(header).ok()?;
    let c = Cookie::parse(text).ok()?;
    if c.name() != name {
        return None;
    }
    let expired_by_age = c.max_age().is_some_and(|a| a.whole_seconds() <= 0);
    let expired_by_date = c
        .expires_datetime()
        .is_some_and(|t| t.unix_timestamp() <= i64::try_from(now_ms / 1000).unwrap_or(i64::MAX));
    if c.value().is_empty() || expired_by_age || expired_by_date {
        Some(CookieChange::Cleared)
    } else {
        Some(CookieChange::Set(c.value().as_bytes().to_vec()))
    }
}

/// The client's address: from the trusted forwarding header when configured
/// (the entry `trusted_hops` from the right, i.e. the one our own proxy added),
/// otherwise the downstream peer address (`ip:port` or `[v6]:port`).
pub fn client_ip(cfg: &Config, forwarded: Option<&[u8]>, peer: Option<&[u8]>) -> String {
    let from_header = cfg.client_ip_header.as_ref().and(forwarded).and_then(|h| {
        let text = std::str::from_utf8(h).ok()?;
        let entries: Vec<&str> = text.split(',').map(str::trim).collect();
        let idx = entries.len().checked_sub(cfg.trusted_hops as usize)?;
        entries.get(idx)?.parse::<IpAddr>().ok()
    });
    if let Some(ip) = from_header {
        return ip.to_string();
    }
    peer.and_then(|p| std::str::from_utf8(p).ok())
        .and_then(peer_ip)
        .map(|ip| ip.to_string())
        .unwrap_or_default()
}

fn peer_ip(addr: &str) -> Option<IpAddr> {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    addr.parse::<IpAddr>().ok()
}

/// The address with its host part cut: IPv4 to /24, IPv6 to /48. Anything that
/// does not parse is dropped rather than stored.
pub fn anonymize_ip(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            std::net::Ipv4Addr::new(a, b, c, 0).to_string()
        }
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
        }
        Err(_) => String::new(),
    }
}

/// Identity from the sources a login route allows, in its order of preference.
pub fn combine(
    order: &[crate::config::IdentitySource],
    headers: Identity,
    body: Identity,
    request: Identity,
) -> Identity {
    use crate::config::IdentitySource;
    order.iter().fold(Identity::default(), |acc, source| {
        acc.or(match source {
            IdentitySource::Headers => headers.clone(),
            IdentitySource::ResponseBody => body.clone(),
            IdentitySource::RequestBody => request.clone(),
            // Asked after the login (whoami.rs); nothing yet at the login itself.
            IdentitySource::Whoami => Identity::default(),
        })
    })
}

/// Bots and crawlers are never counted, even with a session cookie.
pub fn is_ignored_agent(cfg: &Config, user_agent: &[u8]) -> bool {
    let patterns = &cfg.ignore_user_agents;
    AgentScan::new(patterns).matches(patterns, user_agent)
}

/// `ignore_user_agents` made ready to scan for, once per configuration (a VM
/// keeps one): on every authenticated request, building it took about 420
/// Wasm instructions before the first byte was looked at.
///
/// One pass over the agent's bytes, compared in place (no lowercased copy, no
/// searcher per pattern): patterns are only tried where their first byte
/// occurs, and eight bytes at a time while the patterns start with at most four
/// bytes that `| 0x20` folds (letters, digits, most punctuation), so a word with
/// none of them is passed over whole, and in a word with some only those places
/// are tried. Byte by byte a browser's agent cost about 33 instructions a byte:
/// all hooks of an authenticated request with Chrome's agent 11,915 -> 10,203
/// (`UA=... WHAT=auth` in `host-tests/examples/profile.rs`), Firefox's 9,767 ->
/// 8,554.
#[derive(Debug, Clone)]
pub struct AgentScan {
    /// The bytes (both cases) a pattern starts with.
    first: [u64; 4],
    lanes: Lanes,
    /// An empty pattern: every agent matches.
    every: bool,
}

impl AgentScan {
    pub fn new(patterns: &[String]) -> AgentScan {
        let mut scan = AgentScan {
            first: [0; 4],
            lanes: Lanes::default(),
            every: false,
        };
        for needle in patterns {
            match needle.as_bytes().first() {
                Some(&b) => {
                    // Both cases, so the scan needs no lowercasing.
                    set_bit(&mut scan.first, b);
                    set_bit(&mut scan.first, b.to_ascii_uppercase());
                    scan.lanes.add(b);
                }
                None => scan.every = true,
            }
        }
        scan
    }

    /// Whether `user_agent` contains one of `patterns` (lowercase, the ones
    /// this scan was built from), ignoring ASCII case. Nothing is allocated.
    pub fn matches(&self, patterns: &[String], user_agent: &[u8]) -> bool {
        if self.every {
            return true;
        }
        let starts_here = |at: usize| {
            user_agent.get(at..).is_some_and(|here| {
                here.first().is_some_and(|b| has_bit(&self.first, *b))
                    && patterns
                        .iter()
                        .any(|needle| starts_with_ignore_ascii_case(here, needle.as_bytes()))
            })
        };
        let mut from = 0;
        if let Some(lanes) = self.lanes.usable() {
            for (k, chunk) in user_agent.chunks_exact(8).enumerate() {
                let word = chunk.first_chunk().map_or(0, |c| u64::from_le_bytes(*c)) | FOLD;
                // The high bit of each byte that may start a pattern.
                let mut at = lanes.iter().fold(0, |m, lane| m | zero_bytes(word ^ lane));
                while at != 0 {
                    if starts_here(k * 8 + (at.trailing_zeros() / 8) as usize) {
                        return true;
                    }
                    at &= at - 1;
                }
                from = k * 8 + 8;
            }
        }
        (from..user_agent.len()).any(starts_here)
    }
}

/// 0x20 in every byte: `| FOLD` maps an ASCII letter to its lower case (and
/// some other bytes onto others, which the byte-wise check then rules out).
const FOLD: u64 = 0x2020_2020_2020_2020;
const ONES: u64 = 0x0101_0101_0101_0101;

/// The high bit of each of the word's bytes that is zero (and perhaps of a
/// byte above one that is: a borrow; the byte-wise check rules it out).
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & (ONES << 7)
}

/// The patterns' first bytes, each repeated over a word, for the eight-byte scan.
#[derive(Debug, Clone, Default)]
struct Lanes {
    words: [u64; 4],
    len: usize,
    /// A first byte the scan cannot fold (no 0x20 bit, so `| FOLD` never
    /// yields it), or more than four of them: byte by byte.
    unusable: bool,
}

impl Lanes {
    fn add(&mut self, first: u8) {
        let lane = u64::from(first) * ONES;
        if first & 0x20 == 0 {
            self.unusable = true;
        } else if !self.words.iter().take(self.len).any(|w| *w == lane) {
            match self.words.get_mut(self.len) {
                Some(w) => *w = lane,
                None => self.unusable = true,
            }
            self.len += 1;
        }
    }

    fn usable(&self) -> Option<&[u64]> {
        if self.unusable {
            None
        } else {
            self.words.get(..self.len)
        }
    }
}

fn set_bit(bits: &mut [u64; 4], b: u8) {
    if let Some(word) = bits.get_mut(usize::from(b >> 6)) {
        *word |= 1 << (b & 63);
    }
}

fn has_bit(bits: &[u64; 4], b: u8) -> bool {
    bits.get(usize::from(b >> 6))
        .is_some_and(|word| word & (1 << (b & 63)) != 0)
}

/// Whether `haystack` starts with `needle` (already lowercase), ignoring ASCII case.
fn starts_with_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.len() >= needle.len()
        && haystack
            .iter()
            .zip(needle)
            .all(|(h, n)| h.to_ascii_lowercase() == *n)
}

/// The user agent as stored: lossy UTF-8, control characters dropped, bounded.
pub fn clean_user_agent(user_agent: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(user_agent)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    truncate(s, crate::session::MAX_USER_AGENT)
}

/// Identity found for a login, before defaults are applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub role: Option<String>,
}

impl Identity {
    /// Fills gaps from `other` (a lower-priority source).
    pub fn or(self, other: Identity) -> Identity {
        Identity {
            user_id: self.user_id.or(other.user_id),
            username: self.username.or(other.username),
            role: self.role.or(other.role),
        }
    }

    /// Final (user_id, username, role), or `None` when nobody is named at all.
    pub fn resolve(self, cfg: &Config) -> Option<(String, String, String)> {
        let username = self.username.or_else(|| self.user_id.clone())?;
        let user_id = self.user_id.unwrap_or_else(|| username.clone());
        let role = self.role.unwrap_or_else(|| cfg.default_role.clone());
        Some((user_id, username, role))
    }
}

fn clean(value: String, max: usize) -> Option<String> {
    let s: String = value.chars().filter(|c| !c.is_control()).collect();
    let s = truncate(s.trim().to_string(), max);
    (!s.is_empty()).then_some(s)
}

pub(crate) fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn pointer_text(doc: &serde_json::Value, pointer: &str, max: usize) -> Option<String> {
    if pointer.is_empty() {
        return None;
    }
    doc.pointer(pointer)
        .and_then(json_text)
        .and_then(|s| clean(s, max))
}

/// Identity from the login response body (JSON pointers). Broken JSON names nobody.
pub fn from_response_body(cfg: &Config, body: &[u8]) -> Identity {
    if body.len() > MAX_BODY {
        return Identity::default();
    }
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Identity::default();
    };
    Identity {
        user_id: pointer_text(&doc, &cfg.user_id_pointer, MAX_NAME),
        username: pointer_text(&doc, &cfg.username_pointer, MAX_NAME),
        role: pointer_text(&doc, &cfg.role_pointer, MAX_ROLE),
    }
}

/// Identity from trusted upstream response headers; `get` looks a header up by name.
pub fn from_response_headers(cfg: &Config, get: impl Fn(&str) -> Option<Vec<u8>>) -> Identity {
    let read = |name: &Option<String>, max| {
        name.as_deref()
            .and_then(&get)
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| clean(s, max))
    };
    Identity {
        user_id: read(&cfg.user_id_header, MAX_NAME),
        username: read(&cfg.username_header, MAX_NAME),
        role: read(&cfg.role_header, MAX_ROLE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_copy_joins_chunks_and_drops_what_is_too_large() {
        let mut copy = BodyCopy::default();
        copy.push(3, || Some(b"abc".to_vec()));
        copy.push(0, || panic!("an empty chunk is not read"));
        copy.push(2, || Some(b"de".to_vec()));
        assert_eq!(copy.finish().as_deref(), Some(&b"abcde"[..]));

        let mut big = BodyCopy::default();
        big.push(MAX_BODY - 1, || Some(vec![b'x'; MAX_BODY - 1]));
        big.push(1, || Some(b"y".to_vec()));
        assert!(!big.is_lost(), "exactly MAX_BODY fits");
        big.push(1, || panic!("a chunk past MAX_BODY is not read"));
        assert!(big.is_lost());
        big.push(1, || panic!("nor any after it"));
        assert_eq!(big.finish(), None);

        let mut unreadable = BodyCopy::default();
        unreadable.push(4, || None);
        unreadable.push(1, || Some(b"a".to_vec()));
        assert_eq!(unreadable.finish(), None, "a missing chunk loses the copy");

        let mut short = BodyCopy::default();
        short.push(4, || Some(b"ab".to_vec()));
        assert_eq!(short.finish(), None, "a short read loses the copy");
    }

    #[test]
    fn finds_the_session_cookie_among_others() {
        assert_eq!(
            request_cookie(b"a=1; session=abc.def; b=2", "session"),
            Some(&b"abc.def"[..])
        );
        assert_eq!(request_cookie(b"a=1", "session"), None);
        assert_eq!(request_cookie(b"session=", "session"), None);
        assert_eq!(request_cookie(b"\xff\xfe session=x", "session"), None);
        assert_eq!(request_cookie(b";;;==;session", "session"), None);
        assert_eq!(
            request_cookie(b"junk=\xff\xfe; session=x", "session"),
            Some(&b"x"[..]),
            "bytes that are not UTF-8 elsewhere do not hide the session cookie"
        );
        assert_eq!(
            request_cookie(b"session=; session=x", "session"),
            None,
            "the first pair of the name decides, as the crate reads it"
        );
    }

    /// Every header of up to 6 bytes over an alphabet of the bytes that matter
    /// (separators, whitespace, quotes, the name's letters), read by the scan and
    /// by the `cookie` crate: the same answer for each.
    #[test]
    fn the_scan_reads_request_cookies_as_the_cookie_crate_does() {
        fn by_crate<'a>(header: &'a str, name: &str) -> Option<&'a str> {
            Cookie::split_parse(header)
                .filter_map(Result::ok)
                .find(|c| c.name() == name)
                .and_then(|c| c.value_raw().filter(|v| !v.is_empty()))
        }
        let alphabet = [b'a', b'b', b'=', b';', b' ', b'\t', 0x0b, b'"', b'x'];
        let mut header = Vec::new();
        let mut checked = 0;
        for len in 0..=6u32 {
            for mut n in 0..alphabet.len().pow(len) {
                header.clear();
                for _ in 0..len {
                    header.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let text = std::str::from_utf8(&header).unwrap();
                for name in ["a", "ab"] {
                    let scan =
                        request_cookie(&header, name).map(|v| std::str::from_utf8(v).unwrap());
                    assert_eq!(scan, by_crate(text, name), "{text:?} for {name:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }

    #[test]
    fn set_cookie_sets_and_clears() {
        let now = 1_800_000_000_000;
        assert_eq!(
            set_cookie(b"session=new; Path=/; HttpOnly", "session", now),
            Some(CookieChange::Set(b"new".to_vec()))
        );
        assert_eq!(
            set_cookie(
                b"session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/",
                "session",
                now
            ),
            Some(CookieChange::Cleared)
        );
        assert_eq!(
            set_cookie(b"session=x; Max-Age=0", "session", now),
            Some(CookieChange::Cleared)
        );
        assert_eq!(set_cookie(b"other=x", "session", now), None);
        assert_eq!(set_cookie(b"\xff", "session", now), None);
    }

    #[test]
    fn client_ip_trusts_only_configured_header_and_hops() {
        let mut cfg = Config::default();
        assert_eq!(
            client_ip(&cfg, Some(b"1.2.3.4"), Some(b"127.0.0.1:5555")),
            "127.0.0.1"
        );
        cfg.client_ip_header = Some("x-forwarded-for".into());
        assert_eq!(
            client_ip(&cfg, Some(b"6.6.6.6, 1.2.3.4"), Some(b"127.0.0.1:1")),
            "1.2.3.4"
        );
        cfg.trusted_hops = 2;
        assert_eq!(
            client_ip(&cfg, Some(b"6.6.6.6, 1.2.3.4"), Some(b"127.0.0.1:1")),
            "6.6.6.6"
        );
        assert_eq!(client_ip(&cfg, Some(b"garbage"), Some(b"[::1]:80")), "::1");
    }

    #[test]
    fn identity_sources_and_priority() {
        let cfg = Config::default();
        let body = br#"{"user":{"id":7,"username":"ann","role":"teacher"}}"#;
        let id = from_response_body(&cfg, body);
        assert_eq!(
            id.clone().resolve(&cfg),
            Some(("7".into(), "ann".into(), "teacher".into()))
        );
        let typed = crate::typed::read(
            &cfg,
            b"application/x-www-form-urlencoded",
            b"username=b%C3%B6b&password=x",
            None,
        );
        let form = Identity {
            username: typed.username,
            ..Identity::default()
        };
        assert_eq!(form.username.as_deref(), Some("böb"));
        let only_form = from_response_body(&cfg, b"not json").or(form);
        assert_eq!(
            only_form.resolve(&cfg),
            Some(("böb".into(), "böb".into(), "unknown".into()))
        );
        assert_eq!(Identity::default().resolve(&cfg), None);
    }

    #[test]
    fn anonymizes_addresses() {
        assert_eq!(anonymize_ip("203.0.113.77"), "203.0.113.0");
        assert_eq!(
            anonymize_ip("2001:db8:85a3:8d3:1319:8a2e:370:7348"),
            "2001:db8:85a3::"
        );
        assert_eq!(anonymize_ip("nonsense"), "");
    }

    #[test]
    fn combine_follows_the_route_order() {
        use crate::config::IdentitySource::*;
        let named = |n: &str| Identity {
            username: Some(n.into()),
            ..Identity::default()
        };
        let got = combine(
            &[RequestBody, ResponseBody],
            named("h"),
            named("b"),
            named("r"),
        );
        assert_eq!(got.username.as_deref(), Some("r"));
        let got = combine(&[ResponseBody], named("h"), Identity::default(), named("r"));
        assert_eq!(got.username, None);
    }

    #[test]
    fn bots_are_recognised_case_insensitively() {
        let cfg = Config::default();
        assert!(is_ignored_agent(
            &cfg,
            b"Mozilla/5.0 (compatible; Googlebot/2.1)"
        ));
        assert!(!is_ignored_agent(
            &cfg,
            b"Mozilla/5.0 (X11; Linux x86_64) Firefox/120"
        ));
        // At either end, cut short at the end, around bytes that are not UTF-8.
        assert!(is_ignored_agent(&cfg, b"SPIDER"));
        assert!(is_ignored_agent(&cfg, b"x\xff\xfeCrawler"));
        assert!(!is_ignored_agent(&cfg, b"Crawle"));
        assert!(!is_ignored_agent(&cfg, b"\xffbo\xfft"));
        assert!(!is_ignored_agent(&cfg, b""));
        let mut cfg = Config {
            ignore_user_agents: vec!["é-bot".into(), "zz".into()],
            ..Config::default()
        };
        assert!(is_ignored_agent(&cfg, "x É-BOT é-BoT".as_bytes()));
        assert!(!is_ignored_agent(&cfg, "É-BOT z".as_bytes()));
        assert!(is_ignored_agent(&cfg, b"aZz"));
        cfg.ignore_user_agents.clear();
        assert!(!is_ignored_agent(&cfg, b"Googlebot"));
    }

    /// The eight-byte scan against the obvious reading (lowercase the agent,
    /// look for each pattern) over random agents and pattern sets: those it
    /// scans by words, those with a first byte it cannot fold, more than four
    /// first bytes, patterns across word boundaries and in the tail.
    #[test]
    fn the_word_scan_finds_what_a_plain_search_finds() {
        let sets: [&[&str]; 7] = [
            &["bot", "crawler", "spider", "slurp"],
            &["é-bot", "zz"],
            &["@x", "bot"],
            &["_", "a"],
            &["bot", "crawler", "spider", "slurp", "x", "y"],
            &["2fa", "-b", "~"],
            &["ab"],
        ];
        let alphabet = b"aAbBcCsSxXyYzZtToOr-_@~2f\r\x00\xc3\xa9\xff /";
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for set in sets {
            let cfg = Config {
                ignore_user_agents: set.iter().map(|s| s.to_string()).collect(),
                ..Config::default()
            };
            let (mut hits, mut misses) = (0, 0);
            for _ in 0..20_000 {
                let len = (next() % 40) as usize;
                let mut agent: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                if next() % 3 == 0 {
                    // A pattern, in random case, somewhere (maybe cut at the end).
                    let p = set[(next() % set.len() as u64) as usize].as_bytes();
                    let at = (next() % (agent.len() as u64 + 1)) as usize;
                    for (i, b) in p.iter().enumerate() {
                        let b = if next() % 2 == 0 {
                            b.to_ascii_uppercase()
                        } else {
                            *b
                        };
                        agent.insert(at + i, b);
                    }
                    if next() % 4 == 0 {
                        agent.truncate(at + p.len() - 1);
                    }
                }
                let lower = agent.to_ascii_lowercase();
                let expected = set
                    .iter()
                    .any(|p| lower.windows(p.len()).any(|w| w == p.as_bytes()));
                assert_eq!(
                    is_ignored_agent(&cfg, &agent),
                    expected,
                    "{set:?} {agent:?}"
                );
                if expected {
                    hits += 1
                } else {
                    misses += 1
                }
            }
            assert!(
                hits > 100 && misses > 100,
                "{set:?}: {hits} hits, {misses} misses"
            );
        }
    }
}
