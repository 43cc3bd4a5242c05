//! Small single-key records in the shared store (traffic, events, history), each a
//! postcard value updated by CAS read-modify-write.

use crate::table::{SharedStore, StoreError, TableError};
use serde::{de::DeserializeOwned, Serialize};

/// Attempts of one CAS read-modify-write before giving up.
pub const MAX_RETRIES: usize = 64;

/// Reads a record; a missing or undecodable value (another version) reads as default.
pub fn load<T: DeserializeOwned + Default>(
    store: &impl SharedStore,
    key: &str,
) -> Result<(T, Option<u32>), StoreError> {
    Ok(match store.get(key)? {
        Some((bytes, cas)) => (postcard::from_bytes(&bytes).unwrap_or_default(), Some(cas)),
        None => (T::default(), None),
    })
}

/// CAS read-modify-write of one record. `f` returns whether it changed anything;
/// it may run several times, so it must only depend on its argument.
pub fn update<T, R>(
    store: &impl SharedStore,
    key: &str,
    mut f: impl FnMut(&mut T) -> (bool, R),
) -> Result<R, TableError>
where
    T: DeserializeOwned + Serialize + Default,
{
    for _ in 0..MAX_RETRIES {
        let (mut value, cas) = load::<T>(store, key)?;
        let (changed, out) = f(&mut value);
        if !changed {
            return Ok(out);
        }
        let bytes = postcard::to_allocvec(&value).map_err(|e| StoreError::Host(e.to_string()))?;
        match store.set(key, &bytes, cas) {
            Ok(()) => return Ok(out),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(TableError::Contended(key.to_string()))
}
