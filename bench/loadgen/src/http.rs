//! HTTP/1.1 keep-alive by hand: a head read up to its blank line, its
//! `content-length`, and that many bytes of body. Enough for both ends of the
//! benchmark, and nothing an HTTP client crate would add to what is measured.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A head longer than this is refused.
pub const MAX_HEAD: usize = 64 * 1024;

/// One keep-alive connection and the bytes read past the last message.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        // Requests and answers are one small write each: never hold them back.
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    pub async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        Ok(Conn::new(stream))
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// The next head, through its blank line; `None` if the peer closed the
    /// connection before sending a byte of it.
    pub async fn read_head(&mut self) -> Result<Option<Vec<u8>>, String> {
        let mut searched = 0;
        loop {
            if let Some(end) = blank_line(&self.buf, searched) {
                let rest = self.buf.split_off(end);
                return Ok(Some(std::mem::replace(&mut self.buf, rest)));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(format!("head longer than {MAX_HEAD} bytes"));
            }
            searched = self.buf.len().saturating_sub(3);
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err("connection closed in a head".into())
                };
            }
        }
    }

    /// Reads and drops a body of `len` bytes.
    pub async fn skip_body(&mut self, len: usize) -> Result<(), String> {
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Err("connection closed in a body".into());
            }
        }
        self.buf.drain(..len);
        Ok(())
    }

    async fn fill(&mut self) -> Result<usize, String> {
        self.buf.reserve(4096);
        self.stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| format!("read: {e}"))
    }
}

/// Where the first `\r\n\r\n` at or after `from` ends.
fn blank_line(buf: &[u8], from: usize) -> Option<usize> {
    let at = buf.get(from..)?.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(from + at + 4)
}

/// What a response head says about the connection's next bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_length: usize,
    /// The server will close the connection after this response.
    pub close: bool,
}

impl Response {
    pub fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What a request head says about its body and the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub content_length: usize,
    pub close: bool,
}

pub fn parse_response(head: &[u8]) -> Result<Response, String> {
    let (first, fields) = split_head(head)?;
    let mut parts = first.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: {first:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {first:?}"))?;
    let bodiless = status < 200 || status == 204 || status == 304;
    let content_length = match fields.content_length {
        Some(n) => n,
        None if bodiless => 0,
        None if fields.chunked => return Err("chunked responses are not supported".into()),
        None => return Err(format!("a {status} response without content-length")),
    };
    Ok(Response {
        status,
        content_length,
        close: fields.close || version == "HTTP/1.0",
    })
}

pub fn parse_request(head: &[u8]) -> Result<Request, String> {
    let (first, fields) = split_head(head)?;
    let mut parts = first.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("not a request line: {first:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 request: {first:?}"));
    }
    if fields.chunked {
        return Err("chunked requests are not supported".into());
    }
    Ok(Request {
        method: method.into(),
        path: path.into(),
        content_length: fields.content_length.unwrap_or(0),
        close: fields.close || version == "HTTP/1.0",
    })
}

#[derive(Default)]
struct Fields {
    content_length: Option<usize>,
    close: bool,
    chunked: bool,
}

/// The head's first line and the header fields that matter here.
fn split_head(head: &[u8]) -> Result<(&str, Fields), String> {
    let text = std::str::from_utf8(head).map_err(|_| "a head that is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut fields = Fields::default();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("not a header field: {line:?}"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| format!("bad content-length {value:?}"))?;
            fields.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("connection") {
            fields.close |= has_token(value, "close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            fields.chunked |= has_token(value, "chunked");
        }
    }
    Ok((first, fields))
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A GET as wrk.format builds it for bench/load.lua (plus the cookie, if any).
pub fn get(host: &str, path: &str, user_agent: &str, cookie: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nAccept: application/json\r\n"
    );
    if let Some(cookie) = cookie {
        r.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A 200 with a JSON body and the given extra header lines (each ending in `\r\n`).
pub fn ok_json(body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_gives_status_length_and_close() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCONTENT-LENGTH: 2\r\nx-envoy-upstream-service-time: 0\r\n\r\n";
        assert_eq!(
            parse_response(head),
            Ok(Response {
                status: 200,
                content_length: 2,
                close: false
            })
        );
        let head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 19\r\nconnection: keep-alive, Close\r\n\r\n";
        let r = parse_response(head).unwrap();
        assert_eq!(
            (r.status, r.content_length, r.close, r.success()),
            (503, 19, true, false)
        );
        let r = parse_response(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert_eq!((r.content_length, r.close, r.success()), (0, true, true));
    }

    #[test]
    fn unusable_response_heads_are_errors() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 OK\r\n\r\n").is_err());
    }

    #[test]
    fn a_request_head_gives_its_body_length() {
        let head = b"POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\nContent-Length: 51\r\n\r\n";
        let r = parse_request(head).unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/api/v1/auth/login")
        );
        assert_eq!((r.content_length, r.close), (51, false));
        let r = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!((r.content_length, r.close), (0, true));
    }

    #[test]
    fn the_blank_line_is_found_across_reads() {
        assert_eq!(blank_line(b"HTTP/1.1 200 OK\r\n\r\nok", 0), Some(19));
        assert_eq!(blank_line(b"HTTP/1.1 200 OK\r\n\r", 0), None);
        // The caller searches again from 3 bytes before the end of what it had.
        assert_eq!(blank_line(b"ab\r\n\r\n", 2), Some(6));
        assert_eq!(blank_line(b"ab\r\n\r\n", 3), None);
        assert_eq!(blank_line(b"ab", 5), None);
    }

    #[test]
    fn requests_look_like_load_lua_s() {
        let r = get(
            "127.0.0.1:1",
            "/api/items",
            "UA",
            Some("theme=dark; session=abc"),
        );
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "GET /api/items HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUser-Agent: UA\r\n\
             Accept: application/json\r\nCookie: theme=dark; session=abc\r\n\r\n"
        );
    }
}
