//! An in-process `SharedStore` with Envoy's semantics, for native tests and tools.

use crate::table::{SharedStore, StoreError};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Keys are never removed (as in Envoy); CAS tokens increase on every write.
#[derive(Default)]
pub struct MemoryStore {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    /// Makes the next N writes fail with a CAS mismatch, to exercise retries.
    pub fail_next_sets: Cell<u32>,
}

impl MemoryStore {
    /// (number of keys, bytes of values).
    pub fn values(&self) -> (usize, usize) {
        let map = self.map.borrow();
        (map.len(), map.values().map(|(v, _)| v.len()).sum())
    }

    /// Every key written, in no order.
    pub fn keys(&self) -> Vec<String> {
        self.map.borrow().keys().cloned().collect()
    }

    /// Keys plus values, as Envoy would hold them.
    pub fn bytes(&self) -> usize {
        self.map
            .borrow()
            .iter()
            .map(|(k, (v, _))| k.len() + v.len())
            .sum()
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.map.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if self.fail_next_sets.get() > 0 {
            self.fail_next_sets.set(self.fail_next_sets.get() - 1);
            // Someone else wrote in between: bump the token as a real writer would.
            let next = self.next_cas.get().wrapping_add(1).max(1);
            self.next_cas.set(next);
            if let Some(entry) = self.map.borrow_mut().get_mut(key) {
                entry.1 = next;
            }
            return Err(StoreError::CasMismatch);
        }
        let mut map = self.map.borrow_mut();
        let current = map.get(key).map(|(_, c)| *c);
        // `None` means "only if absent"; keys are never deleted, so this is exact.
        if current != cas {
            return Err(StoreError::CasMismatch);
        }
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}
