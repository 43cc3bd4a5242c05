//! One atomic step on one ledger shard in Redis: reads go to Redis (and are
//! remembered), writes wait in memory, and `commit` applies them all at once
//! with a Lua script, but only if no other step committed to the shard since
//! this one began. Every shard has a generation key, read first and bumped by
//! every commit; a commit whose generation moved is refused (`Conflict`) and
//! the caller runs the step again. So steps on one shard are serializable
//! whatever the number of collectors, with no lock to expire and no rule in Lua:
//! the script only checks the generation and writes values.
//!
//! The structures are Redis hashes (fields), sorted sets (members, scores) and
//! strings. Reads see the step's own writes: a range of a sorted set is Redis's
//! answer corrected by the members this step changed.

use redis::{ConnectionLike, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// A failure of the store: a Redis error or an unreadable value. The step is
/// abandoned (nothing is written) and the node's batch answered 503, so the
/// node sends it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError(format!("redis: {e}"))
    }
}

pub type R<T> = Result<T, StoreError>;

/// What a commit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Done,
    /// Another step committed to the shard first; run this one again.
    Conflict,
}

/// Checks the generation, applies the writes, bumps the generation. KEYS[1] is
/// the generation; ARGV[1] the generation the step read ("" if none); then ops:
/// `h` key field value | `hd` key field | `z` key score member | `zd` key member
/// | `s` key value | `sd` key, each key an index into KEYS.
const COMMIT: &str = r"
local gen = redis.call('GET', KEYS[1]) or ''
if gen ~= ARGV[1] then return 0 end
local i = 2
while i <= #ARGV do
  local op, k = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 'h' then redis.call('HSET', k, ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'hd' then redis.call('HDEL', k, ARGV[i + 2]); i = i + 3
  elseif op == 'z' then redis.call('ZADD', k, ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'zd' then redis.call('ZREM', k, ARGV[i + 2]); i = i + 3
  elseif op == 's' then redis.call('SET', k, ARGV[i + 2]); i = i + 3
  elseif op == 'sd' then redis.call('DEL', k); i = i + 2
  else return redis.error_reply('headcount commit: unknown op ' .. tostring(op)) end
end
redis.call('INCR', KEYS[1])
return 1
";

#[derive(Debug, Clone)]
struct Field {
    value: Option<String>,
    dirty: bool,
}

#[derive(Debug, Clone)]
struct Member {
    score: Option<f64>,
    dirty: bool,
    /// Whether Redis has it (`None`: not known yet).
    base: Option<bool>,
}

/// One step's view of one shard.
pub struct Overlay<'c, C: ConnectionLike> {
    con: &'c mut C,
    gen_key: String,
    gen: String,
    hashes: HashMap<String, HashMap<String, Field>>,
    /// Hashes read whole (`hgetall`): every field is in `hashes`.
    whole: HashSet<String>,
    zsets: HashMap<String, HashMap<String, Member>>,
    strings: HashMap<String, Field>,
    /// Sizes of sorted sets as Redis has them (fixed for the step: any commit
    /// that changed them moves the generation, and this step then runs again).
    cards: HashMap<String, u64>,
    /// Redis round trips so far (for the benchmark and the tests).
    pub trips: u64,
}

fn text(v: &Value) -> R<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => String::from_utf8(b.clone())
            .map(Some)
            .map_err(|_| StoreError("a stored value is not UTF-8".into())),
        Value::SimpleString(s) => Ok(Some(s.clone())),
        Value::Int(n) => Ok(Some(n.to_string())),
        other => Err(StoreError(format!("unexpected reply {other:?}"))),
    }
}

fn score(v: &Value) -> R<Option<f64>> {
    match v {
        Value::Double(d) => Ok(Some(*d)),
        other => text(other)?
            .map(|s| {
                s.parse::<f64>()
                    .map_err(|_| StoreError(format!("bad score {s:?}")))
            })
            .transpose(),
    }
}

/// `[member, score, member, score, ...]` or RESP3 pairs.
fn pairs(v: Value) -> R<Vec<(String, f64)>> {
    let Value::Array(items) = v else {
        return Err(StoreError("expected an array".into()));
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let Some(item) = it.next() {
        if let Value::Array(pair) = item {
            let (Some(m), Some(s)) = (pair.first(), pair.get(1)) else {
                return Err(StoreError("a short pair".into()));
            };
            out.push((text(m)?.unwrap_or_default(), score(s)?.unwrap_or(0.0)));
            continue;
        }
        let m = text(&item)?.unwrap_or_default();
        let s = it.next().as_ref().map(score).transpose()?.flatten();
        out.push((m, s.unwrap_or(0.0)));
    }
    Ok(out)
}

impl<'c, C: ConnectionLike> Overlay<'c, C> {
    /// Begins a step on the shard whose generation key is `gen_key`.
    pub fn begin(con: &'c mut C, gen_key: String) -> R<Overlay<'c, C>> {
        let gen = Self::read_generation(con, &gen_key)?;
        Ok(Self::with_generation(con, gen_key, gen))
    }

    /// The shard's generation ("" before its first commit).
    pub fn read_generation(con: &mut C, gen_key: &str) -> R<String> {
        let v = con.req_command(redis::cmd("GET").arg(gen_key))?;
        Ok(text(&v)?.unwrap_or_default())
    }

    /// Begins a step whose generation was just read (`read_generation`).
    pub fn with_generation(con: &'c mut C, gen_key: String, gen: String) -> Overlay<'c, C> {
        Overlay {
            con,
            gen_key,
            gen,
            hashes: HashMap::new(),
            whole: HashSet::new(),
            zsets: HashMap::new(),
            strings: HashMap::new(),
            cards: HashMap::new(),
            trips: 1,
        }
    }

    /// `command key item...` in one round trip (`HMGET`, `ZMSCORE`): one value
    /// per item, in order.
    fn multi(&mut self, command: &str, key: &str, items: &[String]) -> R<Vec<Value>> {
        let mut cmd = redis::cmd(command);
        cmd.arg(key);
        items.iter().for_each(|i| {
            cmd.arg(i.as_str());
        });
        match self.query(&cmd)? {
            Value::Array(values) if values.len() == items.len() => Ok(values),
            other => Err(StoreError(format!("{command}: unexpected {other:?}"))),
        }
    }

    fn query(&mut self, cmd: &redis::Cmd) -> R<Value> {
        self.trips += 1;

        Ok(self.con.req_command(cmd)?)
    }

    fn read_gen(&mut self) -> R<String> {
        let v = self.query(redis::cmd("GET").arg(&self.gen_key))?;
        Ok(text(&v)?.unwrap_or_default())
    }

    // Hashes.

    pub fn hget(&mut self, key: &str, field: &str) -> R<Option<String>> {
        if let Some(f) = self.hashes.get(key).and_then(|h| h.get(field)) {
            return Ok(f.value.clone());
        }
        if self.whole.contains(key) {
            return Ok(None);
        }
        let v = text(&self.query(redis::cmd("HGET").arg(key).arg(field))?)?;
        self.remember(key, field, v.clone());
        Ok(v)
    }

    /// Several fields in one round trip (those not known yet).
    pub fn hmget(&mut self, key: &str, fields: &[String]) -> R<Vec<Option<String>>> {
        let known = self.hashes.get(key);
        let missing: Vec<&String> = fields
            .iter()
            .filter(|f| known.is_none_or(|h| !h.contains_key(*f)))
            .collect();
        if !missing.is_empty() && !self.whole.contains(key) {
            let missing: Vec<String> = missing.into_iter().cloned().collect();
            let values = self.multi("HMGET", key, &missing)?;
            for (f, v) in missing.iter().zip(values.iter()) {
                let v = text(v)?;
                self.remember(key, f, v);
            }
        }
        fields.iter().map(|f| self.hget(key, f)).collect()
    }

    fn remember(&mut self, key: &str, field: &str, value: Option<String>) {
        let h = self.hashes.entry(key.to_string()).or_default();
        h.entry(field.to_string()).or_insert(Field {
            value,
            dirty: false,
        });
    }

    pub fn hset(&mut self, key: &str, field: &str, value: String) {
        self.hashes.entry(key.to_string()).or_default().insert(
            field.to_string(),
            Field {
                value: Some(value),
                dirty: true,
            },
        );
    }

    pub fn hdel(&mut self, key: &str, field: &str) {
        self.hashes.entry(key.to_string()).or_default().insert(
            field.to_string(),
            Field {
                value: None,
                dirty: true,
            },
        );
    }

    /// Every field of a (small) hash, with this step's changes.
    pub fn hgetall(&mut self, key: &str) -> R<BTreeMap<String, String>> {
        if !self.whole.contains(key) {
            let v = self.query(redis::cmd("HGETALL").arg(key))?;
            let base: Vec<(String, String)> = match v {
                Value::Map(m) => m
                    .iter()
                    .map(|(k, v)| Ok((text(k)?.unwrap_or_default(), text(v)?.unwrap_or_default())))
                    .collect::<R<_>>()?,
                Value::Array(items) => items
                    .chunks(2)
                    .map(|p| {
                        let k = p.first().map(text).transpose()?.flatten();
                        let v = p.get(1).map(text).transpose()?.flatten();
                        Ok((k.unwrap_or_default(), v.unwrap_or_default()))
                    })
                    .collect::<R<_>>()?,
                other => return Err(StoreError(format!("HGETALL: unexpected {other:?}"))),
            };
            for (f, v) in base {
                self.remember(key, &f, Some(v));
            }
            self.whole.insert(key.to_string());
        }
        Ok(self
            .hashes
            .get(key)
            .map(|h| {
                h.iter()
                    .filter_map(|(f, v)| v.value.clone().map(|v| (f.clone(), v)))
                    .collect()
            })
            .unwrap_or_default())
    }

    // Sorted sets.

    /// Reads the scores of `members` not known yet in one round trip.
    pub fn zprefetch(&mut self, key: &str, members: &[String]) -> R<()> {
        let known = self.zsets.get(key);
        let missing: Vec<&String> = members
            .iter()
            .filter(|m| known.is_none_or(|z| !z.contains_key(*m)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let missing: Vec<String> = missing.into_iter().cloned().collect();
        let scores = self.multi("ZMSCORE", key, &missing)?;
        let z = self.zsets.entry(key.to_string()).or_default();
        for (m, s) in missing.into_iter().zip(scores.iter()) {
            let s = score(s)?;
            z.entry(m).or_insert(Member {
                score: s,
                dirty: false,
                base: Some(s.is_some()),
            });
        }
        Ok(())
    }

    pub fn zscore(&mut self, key: &str, member: &str) -> R<Option<f64>> {
        if let Some(m) = self.zsets.get(key).and_then(|z| z.get(member)) {
            return Ok(m.score);
        }
        let s = score(&self.query(redis::cmd("ZSCORE").arg(key).arg(member))?)?;
        self.zsets.entry(key.to_string()).or_default().insert(
            member.to_string(),
            Member {
                score: s,
                dirty: false,
                base: Some(s.is_some()),
            },
        );
        Ok(s)
    }

    fn zchange(&mut self, key: &str, member: &str, score: Option<f64>) {
        let z = self.zsets.entry(key.to_string()).or_default();
        let base = z.get(member).and_then(|m| m.base);
        z.insert(
            member.to_string(),
            Member {
                score,
                dirty: true,
                base,
            },
        );
    }

    pub fn zadd(&mut self, key: &str, member: &str, score: u64) {
        self.zchange(key, member, Some(score as f64));
    }

    pub fn zrem(&mut self, key: &str, member: &str) {
        self.zchange(key, member, None);
    }

    fn dirty_members(&self, key: &str) -> Vec<(String, Option<f64>)> {
        self.zsets
            .get(key)
            .map(|z| {
                z.iter()
                    .filter(|(_, m)| m.dirty)
                    .map(|(k, m)| (k.clone(), m.score))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Members with `min <= score <= max`, lowest first, with this step's changes.
    pub fn zrange_by_score(&mut self, key: &str, min: u64, max: u64) -> R<Vec<(String, u64)>> {
        let v = self.query(
            redis::cmd("ZRANGEBYSCORE")
                .arg(key)
                .arg(min)
                .arg(max)
                .arg("WITHSCORES"),
        )?;
        let base = pairs(v)?;
        let (lo, hi) = (min as f64, max as f64);
        Ok(self.merge(key, base, |s| s >= lo && s <= hi))
    }

    /// The `n` lowest members (all those tied with the last of them too), with
    /// this step's changes.
    pub fn zlowest(&mut self, key: &str, n: usize) -> R<Vec<(String, u64)>> {
        let changed = self.dirty_members(key).len();
        let want = n.saturating_add(changed);
        if want == 0 {
            return Ok(Vec::new());
        }
        let v = self.query(
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(want.saturating_sub(1))
                .arg("WITHSCORES"),
        )?;
        let mut base = pairs(v)?;
        // Members tied with the last one fetched may sort before some fetched ones.
        if base.len() == want {
            if let Some((_, top)) = base.last() {
                let v = self.query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg("-inf")
                        .arg(*top)
                        .arg("WITHSCORES"),
                )?;
                base = pairs(v)?;
            }
        }
        let cut = base.last().map(|(_, s)| *s);
        let full = base.len() >= want;
        Ok(self.merge(key, base, |s| !full || cut.is_none_or(|c| s <= c)))
    }

    /// Redis's answer `base`, with the members this step changed put right:
    /// those removed or moved out of `keep` dropped, those added or moved in
    /// added. Lowest first, then by member.
    fn merge(
        &mut self,
        key: &str,
        base: Vec<(String, f64)>,
        keep: impl Fn(f64) -> bool,
    ) -> Vec<(String, u64)> {
        let z = self.zsets.entry(key.to_string()).or_default();
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for (m, s) in base {
            match z.get(&m) {
                Some(cur) if cur.dirty => {}
                _ => {
                    z.entry(m.clone()).or_insert(Member {
                        score: Some(s),
                        dirty: false,
                        base: Some(true),
                    });
                    out.insert(m, s);
                }
            }
        }
        for (m, cur) in z.iter().filter(|(_, c)| c.dirty) {
            if let Some(s) = cur.score.filter(|s| keep(*s)) {
                out.insert(m.clone(), s);
            }
        }
        let mut list: Vec<(String, u64)> = out.into_iter().map(|(m, s)| (m, s as u64)).collect();
        list.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        list
    }

    /// How many members, with this step's changes.
    pub fn zcard(&mut self, key: &str) -> R<u64> {
        let base = match self.cards.get(key) {
            Some(n) => *n,
            None => {
                let n = match self.query(redis::cmd("ZCARD").arg(key))? {
                    Value::Int(n) => u64::try_from(n).unwrap_or(0),
                    other => return Err(StoreError(format!("ZCARD: unexpected {other:?}"))),
                };
                self.cards.insert(key.to_string(), n);
                n
            }
        };
        let unknown: Vec<String> = self
            .zsets
            .get(key)
            .map(|z| {
                z.iter()
                    .filter(|(_, m)| m.dirty && m.base.is_none())
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        if !unknown.is_empty() {
            let scores = self.multi("ZMSCORE", key, &unknown)?;
            let z = self.zsets.entry(key.to_string()).or_default();
            for (m, s) in unknown.iter().zip(scores.iter()) {
                let present = score(s)?.is_some();
                if let Some(e) = z.get_mut(m) {
                    e.base = Some(present);
                }
            }
        }
        let mut n = i128::from(base);
        for m in self.zsets.get(key).into_iter().flat_map(|z| z.values()) {
            if m.dirty {
                n += i128::from(m.score.is_some()) - i128::from(m.base == Some(true));
            }
        }
        Ok(u64::try_from(n.max(0)).unwrap_or(0))
    }

    // Strings.

    pub fn get(&mut self, key: &str) -> R<Option<String>> {
        if let Some(f) = self.strings.get(key) {
            return Ok(f.value.clone());
        }
        let v = text(&self.query(redis::cmd("GET").arg(key))?)?;
        self.strings.insert(
            key.to_string(),
            Field {
                value: v.clone(),
                dirty: false,
            },
        );
        Ok(v)
    }

    pub fn set(&mut self, key: &str, value: String) {
        self.strings.insert(
            key.to_string(),
            Field {
                value: Some(value),
                dirty: true,
            },
        );
    }

    /// Whether this step changed anything.
    pub fn is_dirty(&self) -> bool {
        self.strings.values().any(|f| f.dirty)
            || self
                .hashes
                .values()
                .flat_map(|h| h.values())
                .any(|f| f.dirty)
            || self
                .zsets
                .values()
                .flat_map(|z| z.values())
                .any(|m| m.dirty)
    }

    /// Applies the step's writes if the shard's generation has not moved. A
    /// step that wrote nothing only checks the generation (so what it read was
    /// one state of the shard).
    pub fn commit(mut self) -> R<Commit> {
        if !self.is_dirty() {
            let now = self.read_gen()?;
            return Ok(if now == self.gen {
                Commit::Done
            } else {
                Commit::Conflict
            });
        }
        let mut keys: Vec<String> = vec![self.gen_key.clone()];
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut slot = |k: &str, keys: &mut Vec<String>| -> String {
            let i = *index.entry(k.to_string()).or_insert_with(|| {
                keys.push(k.to_string());
                keys.len()
            });
            i.to_string()
        };
        let mut args: Vec<String> = vec![self.gen.clone()];
        for (k, f) in self.strings.iter().filter(|(_, f)| f.dirty) {
            let i = slot(k, &mut keys);
            match &f.value {
                Some(v) => args.extend(["s".into(), i, v.clone()]),
                None => args.extend(["sd".into(), i]),
            }
        }
        for (k, h) in &self.hashes {
            for (field, f) in h.iter().filter(|(_, f)| f.dirty) {
                let i = slot(k, &mut keys);
                match &f.value {
                    Some(v) => args.extend(["h".into(), i, field.clone(), v.clone()]),
                    None => args.extend(["hd".into(), i, field.clone()]),
                }
            }
        }
        for (k, z) in &self.zsets {
            for (member, m) in z.iter().filter(|(_, m)| m.dirty) {
                let i = slot(k, &mut keys);
                match m.score {
                    Some(s) => args.extend(["z".into(), i, (s as u64).to_string(), member.clone()]),
                    None => args.extend(["zd".into(), i, member.clone()]),
                }
            }
        }
        let script = redis::Script::new(COMMIT);
        let mut inv = script.prepare_invoke();
        keys.iter().for_each(|k| {
            inv.key(k.as_str());
        });
        args.iter().for_each(|a| {
            inv.arg(a.as_str());
        });
        self.trips += 1;
        let done: i64 = inv.invoke(self.con)?;
        Ok(if done == 1 {
            Commit::Done
        } else {
            Commit::Conflict
        })
    }
}
