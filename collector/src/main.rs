//! `headcount-collector --listen ADDR:PORT --store URL --config FILE`
//!
//! - `--listen`: where fleet nodes reach it (an Envoy cluster's address);
//! - `--store`: `memory` (one process), `redis://HOST:PORT[/DB]` (Redis 7 or
//!   Valkey), or `redis+cluster://HOST:PORT[,HOST:PORT...]` (a Redis Cluster);
//! - `--config`: the plugin configuration JSON the fleet's nodes get; its
//!   `fleet.token` admits them.
//!
//! Prints `headcount-collector listening on ADDR` once it serves.

use headcount_collector::service::{self, Collector};
use headcount_collector::store::Store;
use headcount_collector::sweeper;
use headcount_core::Config;
use std::sync::Arc;

const USAGE: &str = "usage: headcount-collector --listen ADDR:PORT --store URL --config FILE";

struct Args {
    listen: String,
    store: String,
    config: String,
}

fn args() -> Result<Args, String> {
    let (mut listen, mut store, mut config) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--listen" => &mut listen,
            "--store" => &mut store,
            "--config" => &mut config,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        };
        *slot = Some(
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?,
        );
    }
    match (listen, store, config) {
        (Some(listen), Some(store), Some(config)) => Ok(Args {
            listen,
            store,
            config,
        }),
        _ => Err(format!(
            "--listen, --store and --config are required\n{USAGE}"
        )),
    }
}

fn setup(a: &Args) -> Result<Collector, String> {
    let raw = std::fs::read(&a.config).map_err(|e| format!("--config {}: {e}", a.config))?;
    let cfg = Config::from_json(&raw).map_err(|e| format!("--config {}: {e}", a.config))?;
    let fleet = cfg.fleet.clone().ok_or_else(|| {
        format!(
            "--config {}: invalid headcount config: `fleet` is missing (its `token` admits the nodes)",
            a.config
        )
    })?;
    let store = Store::open(&a.store)?;
    Ok(Collector { store, cfg, fleet })
}

async fn serve(a: Args, c: Collector) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", a.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let c = Arc::new(c);
    tokio::spawn(sweeper::run(c.clone()));
    println!("headcount-collector listening on {addr}");
    axum::serve(listener, service::router(c))
        .with_graceful_shutdown(async {
            let term = async {
                if let Ok(mut s) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    s.recv().await;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
        })
        .await
        .map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let run = args().and_then(|a| {
        let c = setup(&a)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(serve(a, c))
    });
    match run {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("headcount-collector: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
