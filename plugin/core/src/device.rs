//! "Chrome 148 on Linux" from a user agent. A full UA database crate would add
//! hundreds of KB of regexes to the .wasm; the dashboard needs only the family.

/// Browser (with major version) and OS, best effort; "Unknown" parts when unsure.
pub fn describe(ua: &str) -> String {
    format!("{} on {}", browser(ua), os(ua))
}

fn version_after(ua: &str, token: &str) -> Option<String> {
    let start = ua.find(token)? + token.len();
    let major: String = ua
        .get(start..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!major.is_empty()).then_some(major)
}

fn named(name: &str, ua: &str, token: &str) -> String {
    match version_after(ua, token) {
        Some(v) => format!("{name} {v}"),
        None => name.to_string(),
    }
}

fn browser(ua: &str) -> String {
    // Order matters: Edge and Opera also say Chrome; Chrome also says Safari.
    const RULES: [(&str, &str); 9] = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("SamsungBrowser/", "Samsung Internet"),
        ("Firefox/", "Firefox"),
        ("HeadlessChrome/", "Headless Chrome"),
        ("Chrome/", "Chrome"),
        ("CriOS/", "Chrome"),
        ("curl/", "curl"),
        ("python-requests/", "python-requests"),
    ];
    for (token, name) in RULES {
        if ua.contains(token) {
            return named(name, ua, token);
        }
    }
    if ua.contains("Safari/") {
        return named("Safari", ua, "Version/");
    }
    "Unknown browser".to_string()
}

fn os(ua: &str) -> &'static str {
    const RULES: [(&str, &str); 9] = [
        ("Windows", "Windows"),
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("CrOS", "ChromeOS"),
        ("Mac OS X", "macOS"),
        ("Macintosh", "macOS"),
        ("Linux", "Linux"),
        ("X11", "Unix"),
    ];
    RULES
        .iter()
        .find(|(t, _)| ua.contains(t))
        .map_or("unknown OS", |(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn common_agents() {
        let cases = [
            ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/148.0.7778.167 Safari/537.36", "Chrome 148 on Linux"),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 Edg/120.0", "Edge 120 on Windows"),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15", "Safari 17 on macOS"),
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1", "Safari 17 on iOS"),
            ("Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0", "Firefox 121 on Android"),
            ("curl/7.88.1", "curl 7 on unknown OS"),
            ("", "Unknown browser on unknown OS"),
        ];
        for (ua, want) in cases {
            assert_eq!(describe(ua), want, "{ua}");
        }
    }
}
