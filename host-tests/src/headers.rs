//! An ordered, multi-valued HTTP header map with Envoy's key handling (keys are lower-cased on
//! the way in; values are raw bytes, so non-UTF-8 values survive untouched).

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

fn lower(key: &[u8]) -> Vec<u8> {
    key.to_ascii_lowercase()
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends `key: value` (Envoy `addCopy`).
    pub fn add(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.entries
            .push((lower(key.as_ref()), value.as_ref().to_vec()));
    }

    /// Sets `key` to exactly one `value` (Envoy `setCopy`): the first entry keeps its place, any
    /// further entries with that key are removed; a missing key is appended.
    pub fn replace(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = lower(key.as_ref());
        let mut seen = false;
        let value = value.as_ref().to_vec();
        self.entries.retain_mut(|(k, v)| {
            if *k != key {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            *v = value.clone();
            true
        });
        if !seen {
            self.entries.push((key, value));
        }
    }

    /// Removes every entry with `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        let key = lower(key.as_ref());
        self.entries.retain(|(k, _)| *k != key);
    }

    /// The first value of `key` (what `proxy_get_header_map_value` returns), as raw bytes.
    pub fn get_bytes(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        let key = lower(key.as_ref());
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `key`, lossily decoded as UTF-8.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<String> {
        self.get_bytes(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of `key`, in order, lossily decoded.
    pub fn get_all(&self, key: impl AsRef<[u8]>) -> Vec<String> {
        let key = lower(key.as_ref());
        self.entries
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn contains(&self, key: impl AsRef<[u8]>) -> bool {
        self.get_bytes(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    pub fn pairs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.entries
    }

    /// Replaces every entry (Envoy `proxy_set_header_map_pairs`).
    pub fn set_all(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) {
        self.entries = pairs.into_iter().map(|(k, v)| (lower(&k), v)).collect();
    }

    /// Total bytes of keys and values.
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (k, v) in &self.entries {
            list.entry(&format_args!(
                "{}: {}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            ));
        }
        list.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_like_semantics() {
        let mut h = HeaderMap::new();
        h.add("Set-Cookie", "a=1");
        h.add("x", "1");
        h.add("set-cookie", "b=2");
        assert_eq!(h.get("SET-COOKIE").unwrap(), "a=1");
        assert_eq!(h.get_all("set-cookie"), vec!["a=1", "b=2"]);
        h.replace("set-cookie", "c=3");
        assert_eq!(h.get_all("set-cookie"), vec!["c=3"]);
        assert_eq!(h.len(), 2);
        h.remove("X");
        assert!(!h.contains("x"));
        h.add("bin", [0xff, 0xfe]);
        assert_eq!(h.get_bytes("bin").unwrap(), &[0xff, 0xfe]);
    }
}
