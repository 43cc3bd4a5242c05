//! The application behind Envoy in the benchmark's "real app" runs: a
//! keep-alive HTTP/1.1 server that answers every request `200` with a small
//! JSON body after a set delay (measured from the end of the request).
//!
//! A login (`POST /api/v1/auth/login`, Headcount's default login route) is
//! answered as bench/nginx.conf answers it: a new `session` cookie and a new
//! user in the body, so sessions can be made through an Envoy in front of it.

use crate::http::{self, Conn};
use crate::timer::Timer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub const LOGIN_PATH: &str = "/api/v1/auth/login";
pub const BODY: &str = r#"{"items":[]}"#;

pub async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    let listen = crate::loopback(listen)?;
    TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, delay: Duration) -> Result<(), String> {
    let timer = Timer::start()?;
    let ids = Arc::new(Ids::new());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let conn = Conn::new(stream);
                tokio::spawn(connection(conn, delay, timer.clone(), ids.clone()));
            }
            Err(e) => {
                // Out of descriptors, say: the next accept may work.
                eprintln!("headcount-loadgen upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(mut conn: Conn, delay: Duration, timer: Timer, ids: Arc<Ids>) {
    while let Ok(Some(head)) = conn.read_head().await {
        let request = match http::parse_request(&head) {
            Ok(r) => r,
            Err(_) => {
                let bad =
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = conn.send(bad).await;
                return;
            }
        };
        if conn.skip_body(request.content_length).await.is_err() {
            return;
        }
        if !delay.is_zero() {
            timer.sleep_until(Instant::now() + delay).await;
        }
        let answer = if request.method == "POST" && request.path == LOGIN_PATH {
            ids.login()
        } else {
            http::ok_json(BODY, "")
        };
        if conn.send(&answer).await.is_err() || request.close {
            return;
        }
    }
}

/// Unique ids for logins: this process's start time and a counter.
struct Ids {
    process: u64,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Ids {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ids {
            process: (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32),
            next: AtomicU64::new(0),
        }
    }

    fn login(&self) -> Vec<u8> {
        let id = format!(
            "{:016x}{:016x}",
            self.process,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let body = format!(r#"{{"user":{{"id":"{id}","username":"u{id}","role":"student"}}}}"#);
        http::ok_json(
            &body,
            &format!("set-cookie: session={id}; Path=/; HttpOnly\r\n"),
        )
    }
}
