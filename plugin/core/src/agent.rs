//! Lossless packing of user agents for shared data.
//!
//! A browser's user agent is mostly boilerplate every browser sends
//! ("Mozilla/5.0 (", ") AppleWebKit/537.36 (KHTML, like Gecko) ", " Safari/537.36"):
//! the benchmark's 101-byte Chrome UA is the largest item of a session record.
//! Stored user agents are cleaned of control characters first
//! (`identity::clean_user_agent`), so the bytes 0x01..=0x1f are free to stand for
//! the commonest fragments: packing is exact, and `unpack(pack(ua)) == ua` for any
//! string without control characters. A string that has some (set by a host that
//! did not clean it) is stored as it is, behind a 0x00 marker.

/// Fragments replaced by one byte each (code = index + 1); longer first where one
/// contains another, so the greedy match picks the longest.
const FRAGMENTS: [&str; 31] = [
    ") AppleWebKit/537.36 (KHTML, like Gecko) ",
    ") AppleWebKit/605.1.15 (KHTML, like Gecko) ",
    "Mozilla/5.0 (",
    "Windows NT 10.0; Win64; x64",
    "Macintosh; Intel Mac OS X 10_15_7",
    "Macintosh; Intel Mac OS X ",
    "X11; Linux x86_64",
    "Linux; Android ",
    "iPhone; CPU iPhone OS ",
    " like Mac OS X",
    " Safari/537.36",
    " Safari/605.1.15",
    " Safari/604.1",
    " Mobile Safari/537.36",
    "Chrome/",
    ".0.0.0",
    " Edg/",
    " OPR/",
    "Firefox/",
    "; rv:",
    ") Gecko/20100101 ",
    "Version/",
    " Mobile/15E148",
    "HeadlessChrome/",
    "X11; Ubuntu; Linux x86_64",
    "Windows NT 10.0; WOW64",
    "; K) ",
    "iPad; CPU OS ",
    "CriOS/",
    " Mobile",
    "SamsungBrowser/",
];

/// Marks a value stored verbatim (it has control characters of its own).
const VERBATIM: char = '\0';

/// The packed form of `ua` (at most as long as `ua` plus one byte).
pub fn pack(ua: &str) -> String {
    if ua.chars().any(char::is_control) {
        let mut out = String::with_capacity(ua.len() + 1);
        out.push(VERBATIM);
        out.push_str(ua);
        return out;
    }
    let mut out = String::with_capacity(ua.len());
    let mut rest = ua;
    'outer: while let Some(c) = rest.chars().next() {
        for (code, fragment) in (1u8..).zip(FRAGMENTS) {
            if let Some(after) = rest.strip_prefix(fragment) {
                out.push(char::from(code));
                rest = after;
                continue 'outer;
            }
        }
        out.push(c);
        rest = rest.get(c.len_utf8()..).unwrap_or_default();
    }
    out
}

/// The user agent `pack` was given.
pub fn unpack(packed: &str) -> String {
    if let Some(verbatim) = packed.strip_prefix(VERBATIM) {
        return verbatim.to_string();
    }
    let mut out = String::with_capacity(packed.len() * 2);
    for c in packed.chars() {
        let code = u32::from(c);
        match code
            .checked_sub(1)
            .and_then(|i| FRAGMENTS.get(usize::try_from(i).ok()?))
        {
            Some(fragment) if code < 0x20 => out.push_str(fragment),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_lossless_and_shrinks_browsers() {
        let cases = [
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 Edg/120.0",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "curl/7.88.1",
            "",
            "ééé Mozilla/5.0 (Mozilla/5.0 (",
            "tab\tand\u{1}control",
            "\0starts with NUL",
        ];
        for ua in cases {
            let packed = pack(ua);
            assert_eq!(unpack(&packed), ua, "{ua:?} -> {packed:?}");
            assert!(packed.len() <= ua.len() + 1);
        }
        let chrome = cases[0];
        assert!(pack(chrome).len() <= 32, "{}", pack(chrome).len());
    }
}
