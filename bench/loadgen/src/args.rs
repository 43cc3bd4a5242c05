//! The command line: `load ...` or `upstream ...`, flags as `--name value`.

use crate::load::{self, LoadConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub const USAGE: &str = "\
usage: headcount-loadgen load --addr 127.0.0.1:PORT --rate R --duration S [--path /api/items]
           [--warmup S] [--connections C] [--cookies FILE] [--auth-share F]
           [--cookie-name session] [--user-agent UA] [--timeout S]
       headcount-loadgen upstream --listen 127.0.0.1:PORT [--delay-us D]

load: an open-loop GET load at R requests/s for S seconds (after --warmup seconds not
measured) over C keep-alive connections (default 64); a share F (default 0) of the
requests carry `Cookie: theme=dark; <cookie-name>=<value>`, the values taken in turn from
FILE (one per line). Latency runs from each request's scheduled time to the last byte of
its answer. Prints one line `LOADGEN {json}`.
upstream: answers every request 200 {\"items\":[]} after D microseconds (default 0).
Both only use loopback addresses.";

pub enum Command {
    Load(LoadConfig),
    Upstream { listen: SocketAddr, delay: Duration },
}

pub fn parse(argv: &[String]) -> Result<Command, String> {
    let (command, rest) = argv.split_first().ok_or("no command")?;
    let mut flags = Flags::new(rest)?;
    let command = match command.as_str() {
        "load" => Command::Load(load_config(&mut flags)?),
        "upstream" => Command::Upstream {
            listen: crate::loopback(flags.required("listen")?)?,
            delay: Duration::from_micros(flags.optional("delay-us")?.unwrap_or(0)),
        },
        other => return Err(format!("unknown command {other:?}")),
    };
    flags.done()?;
    Ok(command)
}

fn load_config(flags: &mut Flags) -> Result<LoadConfig, String> {
    let secs = |v: f64, name: &str| {
        Duration::try_from_secs_f64(v)
            .map_err(|_| format!("--{name}: not a number of seconds: {v}"))
    };
    let cookies = match flags.take("cookies") {
        Some(file) => std::fs::read_to_string(&file)
            .map_err(|e| format!("--cookies {file}: {e}"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    Ok(LoadConfig {
        addr: crate::loopback(flags.required("addr")?)?,
        path: flags.take("path").unwrap_or_else(|| "/api/items".into()),
        rate: flags.required("rate")?,
        duration: secs(flags.required("duration")?, "duration")?,
        warmup: secs(flags.optional("warmup")?.unwrap_or(0.0), "warmup")?,
        connections: flags.optional("connections")?.unwrap_or(64),
        cookies,
        auth_share: flags.optional("auth-share")?.unwrap_or(0.0),
        cookie_name: flags
            .take("cookie-name")
            .unwrap_or_else(|| "session".into()),
        user_agent: flags
            .take("user-agent")
            .unwrap_or_else(|| load::USER_AGENT.into()),
        timeout: secs(flags.optional("timeout")?.unwrap_or(5.0), "timeout")?,
    })
}

struct Flags(HashMap<String, String>);

impl Flags {
    fn new(args: &[String]) -> Result<Flags, String> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected a --flag, got {flag:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            if map.insert(name.to_string(), value.clone()).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Flags(map))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    fn optional<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, String> {
        self.take(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("--{name}: cannot read {v:?}"))
            })
            .transpose()
    }

    fn required<T: FromStr>(&mut self, name: &str) -> Result<T, String> {
        self.optional(name)?
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn done(self) -> Result<(), String> {
        match self.0.keys().next() {
            Some(name) => Err(format!("unknown flag --{name}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn a_load_command_with_defaults() {
        let Ok(Command::Load(c)) = parse(&argv(
            "load --addr 127.0.0.1:8080 --rate 500 --duration 2.5",
        )) else {
            panic!("not a load command");
        };
        assert_eq!(
            (c.rate, c.duration, c.warmup),
            (500.0, Duration::from_millis(2500), Duration::ZERO)
        );
        assert_eq!(
            (c.connections, c.auth_share, c.path.as_str()),
            (64, 0.0, "/api/items")
        );
    }

    #[test]
    fn only_loopback_and_known_flags() {
        assert!(parse(&argv("load --addr 10.0.0.1:80 --rate 1 --duration 1")).is_err());
        assert!(parse(&argv("upstream --listen 0.0.0.0:80")).is_err());
        assert!(parse(&argv("upstream --listen 127.0.0.1:0 --delay 5")).is_err());
        assert!(parse(&argv("load --addr 127.0.0.1:80 --rate 1")).is_err());
        assert!(matches!(
            parse(&argv("upstream --listen [::1]:0 --delay-us 1000")),
            Ok(Command::Upstream { delay, .. }) if delay == Duration::from_millis(1)
        ));
    }
}
