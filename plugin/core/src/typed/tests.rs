use super::*;

fn cfg() -> Config {
    Config::default()
}

fn form(body: &str) -> Typed {
    read(
        &cfg(),
        b"application/x-www-form-urlencoded",
        body.as_bytes(),
        None,
    )
}

fn named(name: &str) -> Typed {
    Typed {
        username: Some(name.into()),
        ambiguity: None,
    }
}

fn nobody(why: Unnamed) -> Typed {
    Typed {
        username: None,
        ambiguity: Some(why),
    }
}

#[test]
fn a_form_field_names_whom_it_says_once() {
    assert_eq!(form("username=b%C3%B6b&password=x"), named("böb"));
    assert_eq!(form("password=x&username=ann+lee"), named("ann lee"));
    // Keys are decoded as the app decodes them.
    assert_eq!(form("user%6Eame=ann"), named("ann"));
    assert_eq!(form("password=x"), Typed::default());
    assert_eq!(form("username="), Typed::default());
}

#[test]
fn a_repeated_form_field_names_nobody() {
    assert_eq!(
        form("username=alice&username=bob&password=x"),
        nobody(Unnamed::RepeatedField)
    );
    assert_eq!(
        form("username=alice&user%6Eame=bob"),
        nobody(Unnamed::RepeatedField)
    );
}

#[test]
fn a_field_in_the_query_and_the_body_names_nobody() {
    let got = read(
        &cfg(),
        b"application/x-www-form-urlencoded",
        b"username=alice",
        Some(b"next=/&username=bob"),
    );
    assert_eq!(got, nobody(Unnamed::QueryAndBody));
    let other = read(
        &cfg(),
        b"application/x-www-form-urlencoded",
        b"username=alice",
        Some(b"next=/"),
    );
    assert_eq!(other, named("alice"));
}

#[test]
fn invalid_text_in_the_bodys_charset_names_nobody() {
    assert_eq!(form("username=%FFalice"), nobody(Unnamed::Charset));
    let latin1 = read(
        &cfg(),
        b"application/x-www-form-urlencoded; charset=ISO-8859-1",
        b"username=b%F6b",
        None,
    );
    assert_eq!(latin1, nobody(Unnamed::Charset));
    let ascii = read(
        &cfg(),
        b"application/x-www-form-urlencoded; charset=ISO-8859-1",
        b"username=bob",
        None,
    );
    assert_eq!(ascii, named("bob"));
}

#[test]
fn json_names_once_and_a_repeated_key_names_nobody() {
    let json = |b: &str| read(&cfg(), b"application/json", b.as_bytes(), None);
    assert_eq!(
        json(r#"{"username": "ann", "password": "x"}"#),
        named("ann")
    );
    assert_eq!(json(r#"{"username": 42}"#), named("42"));
    assert_eq!(
        json(r#"{"username": "ann", "username": "bob"}"#),
        nobody(Unnamed::RepeatedField)
    );
    // An escaped key is the same key to the app.
    assert_eq!(
        json(r#"{"username": "ann", "user\u006eame": "bob"}"#),
        nobody(Unnamed::RepeatedField)
    );
    assert_eq!(json(r#"{"username": ["ann", "bob"]}"#), Typed::default());
    assert_eq!(json(r#"{"username": "ann"} trailing"#), Typed::default());
    assert_eq!(json(r#"["username", "ann"]"#), Typed::default());
    let vendor = read(
        &cfg(),
        b"application/vnd.api+json",
        br#"{"username":"ann"}"#,
        None,
    );
    assert_eq!(vendor, named("ann"));
}

fn multipart(parts: &[&str]) -> Typed {
    let mut body = String::new();
    for p in parts {
        body.push_str("--XyZ\r\n");
        body.push_str(p);
        body.push_str("\r\n");
    }
    body.push_str("--XyZ--\r\n");
    read(
        &cfg(),
        b"multipart/form-data; boundary=XyZ",
        body.as_bytes(),
        None,
    )
}

#[test]
fn multipart_names_one_plain_part_only() {
    let user = "Content-Disposition: form-data; name=\"username\"\r\n\r\nann";
    let pass = "Content-Disposition: form-data; name=\"password\"\r\n\r\nx";
    assert_eq!(multipart(&[user, pass]), named("ann"));
    assert_eq!(multipart(&[pass]), Typed::default());
    let bob = "Content-Disposition: form-data; name=\"username\"\r\n\r\nbob";
    assert_eq!(
        multipart(&[user, pass, bob]),
        nobody(Unnamed::MultipartParts)
    );
    let file = "Content-Disposition: form-data; name=\"username\"; filename=\"a.txt\"\r\n\r\nbob";
    assert_eq!(multipart(&[file]), nobody(Unnamed::MultipartParts));
    let encoded = "Content-Disposition: form-data; name*=UTF-8''username\r\n\r\nbob";
    assert_eq!(multipart(&[user, encoded]), nobody(Unnamed::MultipartParts));
    let latin1 = "Content-Disposition: form-data; name=\"username\"\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nann";
    assert_eq!(multipart(&[latin1]), nobody(Unnamed::Charset));
    let b64 = "Content-Disposition: form-data; name=\"username\"\r\nContent-Transfer-Encoding: base64\r\n\r\nYW5u";
    assert_eq!(multipart(&[b64]), nobody(Unnamed::Charset));
    // No close delimiter: the app may read it either way.
    let open = read(
        &cfg(),
        b"multipart/form-data; boundary=XyZ",
        b"--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nann",
        None,
    );
    assert_eq!(open, nobody(Unnamed::MultipartParts));
    // A part whose content holds something like a delimiter is still one part.
    let tricky = "Content-Disposition: form-data; name=\"username\"\r\n\r\nann--XyZ";
    assert_eq!(multipart(&[tricky, pass]), named("ann--XyZ"));
}

#[test]
fn names_are_normalized_as_configured() {
    // Full-width "ａ" is "a" under NFKC, as Django's normalize_username reads it.
    assert_eq!(form("username=%EF%BD%81lice"), named("alice"));
    assert_eq!(form("username=+alice+"), named("alice"));
    let c = Config::from_json(br#"{"username_normalization": ["lowercase"]}"#).unwrap();
    let got = read(
        &c,
        b"application/x-www-form-urlencoded",
        b"username=+Alice",
        None,
    );
    assert_eq!(got, named(" alice"));
    let none = Config::from_json(br#"{"username_normalization": []}"#).unwrap();
    let got = read(
        &none,
        b"application/x-www-form-urlencoded",
        b"username=%EF%BD%81",
        None,
    );
    assert_eq!(got, named("ａ"));
    assert_eq!(
        crate::config::tests::field_of(r#"{"username_normalization": ["nfc"]}"#),
        "username_normalization"
    );
}

#[test]
fn other_and_broken_bodies_name_nobody_and_never_panic() {
    for (ct, body) in [
        (&b"text/plain"[..], &b"username=ann"[..]),
        (b"", b"username=ann"),
        (b"\xff\xfe", b"username=ann"),
        (b"multipart/form-data", b"--x\r\n"),
        (b"multipart/form-data; boundary=x", b""),
        (b"multipart/form-data; boundary=x", b"--x"),
        (b"multipart/form-data; boundary=x", b"--x\r\n\r\n--x--"),
        (b"application/json", b"\xff"),
    ] {
        let got = read(&cfg(), ct, body, None);
        assert_eq!(got.username, None, "{ct:?} {body:?}");
    }
}
