//! What a client typed into a login: the username field of a JSON, form or
//! multipart request body. The app reads these bytes with its own parser, and
//! parsers disagree (Django, Rails and PHP take the last of a repeated form
//! field, Flask the first), so a field that two parsers could read two ways
//! names nobody: `Typed::ambiguity` says why. Nothing here panics on bad input.

use crate::config::{Config, Normalize};
use crate::identity::MAX_BODY;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Why a successful login names nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unnamed {
    /// The typed field is repeated in a form or JSON body.
    RepeatedField,
    /// The typed field is in the query string and in the body.
    QueryAndBody,
    /// The typed field is in several multipart parts, or in one the app may read
    /// otherwise (a file part, an RFC 2231 encoded name, unparsable parts).
    MultipartParts,
    /// The typed value is not valid in the body's charset (bad UTF-8 after
    /// percent-decoding, non-ASCII under another declared charset, a
    /// transfer-encoded part).
    Charset,
    /// No identity source of the login route named anyone.
    NoIdentity,
}

impl Unnamed {
    pub const ALL: [Unnamed; 5] = [
        Unnamed::RepeatedField,
        Unnamed::QueryAndBody,
        Unnamed::MultipartParts,
        Unnamed::Charset,
        Unnamed::NoIdentity,
    ];

    /// The metric label and log word.
    pub fn name(self) -> &'static str {
        match self {
            Unnamed::RepeatedField => "repeated_field",
            Unnamed::QueryAndBody => "query_and_body",
            Unnamed::MultipartParts => "multipart_parts",
            Unnamed::Charset => "charset",
            Unnamed::NoIdentity => "no_identity",
        }
    }
}

/// The username a login request's body carries, normalized, or why it names nobody.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Typed {
    pub username: Option<String>,
    pub ambiguity: Option<Unnamed>,
}

/// One field as a body carries it.
#[derive(Debug, PartialEq, Eq)]
enum Field {
    Absent,
    One(String),
    Ambiguous(Unnamed),
}

/// Reads `cfg.username_form_field` from a login request: its body (JSON, form or
/// multipart, by `content_type`) and its query string. Other bodies name nobody.
pub fn read(cfg: &Config, content_type: &[u8], body: &[u8], query: Option<&[u8]>) -> Typed {
    let field = cfg.username_form_field.as_str();
    let found = if body.len() > MAX_BODY {
        Field::Absent
    } else {
        body_field(content_type, body, field)
    };
    let in_query = query.is_some_and(|q| form_field(q, field, true) != Field::Absent);
    match found {
        Field::One(_) if in_query => Typed {
            username: None,
            ambiguity: Some(Unnamed::QueryAndBody),
        },
        Field::One(name) => Typed {
            username: normalize(&cfg.username_normalization, &name),
            ambiguity: None,
        },
        Field::Ambiguous(why) => Typed {
            username: None,
            ambiguity: Some(why),
        },
        Field::Absent => Typed::default(),
    }
}

fn body_field(content_type: &[u8], body: &[u8], field: &str) -> Field {
    let Some(ct) = std::str::from_utf8(content_type)
        .ok()
        .and_then(|t| t.parse::<mime::Mime>().ok())
    else {
        return Field::Absent;
    };
    let charset_is_utf8 = ct
        .get_param(mime::CHARSET)
        .is_none_or(|c| c.as_str().eq_ignore_ascii_case("utf-8"));
    match (ct.type_(), ct.subtype()) {
        (mime::APPLICATION, mime::WWW_FORM_URLENCODED) => form_field(body, field, charset_is_utf8),
        (mime::MULTIPART, mime::FORM_DATA) => match ct.get_param(mime::BOUNDARY) {
            Some(b) => multipart_field(body, b.as_str(), field),
            None => Field::Absent,
        },
        (mime::APPLICATION, mime::JSON) => json_field(body, field),
        (_, sub) if ct.suffix() == Some(mime::JSON) || sub == mime::JSON => json_field(body, field),
        _ => Field::Absent,
    }
}

/// `application/x-www-form-urlencoded` (also a query string): keys and values
/// percent-decoded with `+` as space, as every framework does.
fn form_field(body: &[u8], field: &str, utf8: bool) -> Field {
    let mut found = Field::Absent;
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let mut kv = pair.splitn(2, |b| *b == b'=');
        let key = decode(kv.next().unwrap_or_default());
        if key.as_ref() != field.as_bytes() {
            continue;
        }
        if found != Field::Absent {
            return Field::Ambiguous(Unnamed::RepeatedField);
        }
        let value = decode(kv.next().unwrap_or_default());
        found = match String::from_utf8(value.into_owned()) {
            Ok(s) if utf8 || s.is_ascii() => Field::One(s),
            _ => Field::Ambiguous(Unnamed::Charset),
        };
    }
    found
}

fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'+') {
        return percent_encoding::percent_decode(raw).into();
    }
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    Cow::Owned(percent_encoding::percent_decode(&spaced).collect())
}

/// A JSON object's top-level `field`: a string, number or boolean names it; a
/// repeated key is ambiguous (serde_json and most parsers take the last, not all).
fn json_field(body: &[u8], field: &str) -> Field {
    let mut de = serde_json::Deserializer::from_slice(body);
    match TopLevel(field).deserialize(&mut de) {
        Ok(found) if de.end().is_ok() => found,
        _ => Field::Absent,
    }
}

struct TopLevel<'f>(&'f str);

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Field;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        let (mut seen, mut value) = (0u32, None);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == self.0 {
                seen = seen.saturating_add(1);
                value = crate::identity::json_text(&map.next_value::<serde_json::Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(match (seen, value) {
            (0, _) | (1, None) => Field::Absent,
            (1, Some(v)) => Field::One(v),
            _ => Field::Ambiguous(Unnamed::RepeatedField),
        })
    }
}

/// `multipart/form-data` (RFC 7578): parts split at `\r\n--boundary`, each with
/// its headers. The field must be in exactly one plain text part.
fn multipart_field(body: &[u8], boundary: &str, field: &str) -> Field {
    let delimiter = format!("\r\n--{boundary}");
    let first = format!("--{boundary}");
    let mut rest = match body.strip_prefix(first.as_bytes()) {
        Some(after) => after,
        None => match memchr::memmem::find(body, delimiter.as_bytes()) {
            Some(i) => body.get(i + delimiter.len()..).unwrap_or_default(),
            None => return Field::Absent,
        },
    };
    let mut found = Field::Absent;
    loop {
        if rest.starts_with(b"--") {
            return found; // the close delimiter; the epilogue is ignored
        }
        let Some(end) = memchr::memmem::find(rest, delimiter.as_bytes()) else {
            return Field::Ambiguous(Unnamed::MultipartParts); // no close delimiter
        };
        let (part, after) = rest.split_at(end);
        rest = after.get(delimiter.len()..).unwrap_or_default();
        match part_field(part, field) {
            Field::Absent => {}
            _ if found != Field::Absent => return Field::Ambiguous(Unnamed::MultipartParts),
            hit => found = hit,
        }
    }
}

/// One part (after its delimiter line's end): `Absent` unless it names `field`.
fn part_field(part: &[u8], field: &str) -> Field {
    // Transport padding, then the line break ending the delimiter line.
    let start = part
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(part.len());
    let Some(part) = part.get(start..).and_then(|p| p.strip_prefix(b"\r\n")) else {
        return Field::Ambiguous(Unnamed::MultipartParts);
    };
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let Ok(httparse::Status::Complete((offset, headers))) =
        httparse::parse_headers(part, &mut headers)
    else {
        return Field::Ambiguous(Unnamed::MultipartParts);
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    match disposition(header("content-disposition"), field) {
        Field::One(_) => {}
        other => return other,
    }
    let declared_utf8 = header("content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_none_or(|ct| {
            ct.get_param(mime::CHARSET)
                .is_none_or(|c| c.as_str().eq_ignore_ascii_case("utf-8"))
        });
    let content = part.get(offset..).unwrap_or_default();
    match std::str::from_utf8(content) {
        Ok(text) if declared_utf8 && header("content-transfer-encoding").is_none() => {
            Field::One(text.to_string())
        }
        _ => Field::Ambiguous(Unnamed::Charset),
    }
}

/// Whether a part's `Content-Disposition: form-data; name="..."` names `field`
/// (`One`), plainly another field (`Absent`), or the field in a way another
/// parser may read otherwise (a file, an encoded `name*`, a header that does not
/// parse but mentions it). Its parameters are read as a media type's (same
/// grammar, RFC 6266 section 4.1), by the `mime` crate.
fn disposition(value: Option<&[u8]>, field: &str) -> Field {
    let Some(raw) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
        return match value {
            Some(v) if memchr::memmem::find(v, field.as_bytes()).is_some() => {
                Field::Ambiguous(Unnamed::MultipartParts)
            }
            _ => Field::Absent,
        };
    };
    let mentions = raw.contains(field);
    let (kind, params) = raw.split_once(';').unwrap_or((raw, ""));
    let parsed = format!("{}/x;{params}", kind.trim()).parse::<mime::Mime>();
    let Ok(ct) = parsed.as_ref().map_err(|_| ()) else {
        return if mentions {
            Field::Ambiguous(Unnamed::MultipartParts)
        } else {
            Field::Absent
        };
    };
    let named = ct.get_param("name").is_some_and(|n| n.as_str() == field);
    let file = ct.get_param("filename").is_some() || ct.get_param("filename*").is_some();
    let encoded = ct.get_param("name*").is_some();
    match (
        named,
        file || encoded || !ct.type_().as_str().eq_ignore_ascii_case("form-data"),
    ) {
        (true, false) => Field::One(String::new()),
        (true, true) => Field::Ambiguous(Unnamed::MultipartParts),
        (false, _) if mentions && encoded => Field::Ambiguous(Unnamed::MultipartParts),
        (false, _) => Field::Absent,
    }
}

/// A typed name as the app would store it, per `username_normalization`:
/// surrounding whitespace trimmed, Unicode NFKC, lowercased (each if listed);
/// control characters dropped and the length bounded, always.
pub fn normalize(steps: &Normalize, name: &str) -> Option<String> {
    let mut s: Cow<'_, str> = Cow::Borrowed(name);
    if steps.trim {
        s = Cow::Owned(s.trim().to_string());
    }
    if steps.nfkc {
        use unicode_normalization::UnicodeNormalization;
        s = Cow::Owned(s.nfkc().collect());
    }
    if steps.lowercase {
        s = Cow::Owned(s.to_lowercase());
    }
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    let s = crate::session::truncate(s, crate::session::MAX_NAME);
    (!s.trim().is_empty()).then_some(s)
}

#[cfg(test)]
mod tests;
