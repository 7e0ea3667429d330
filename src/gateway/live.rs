//! [`Live`]: a value a configuration reload can replace while it is in use.
//!
//! Readers take an `Arc` snapshot ([`Live::get`]) and keep it for the whole
//! of one unit of work (a message, a delivery attempt), so a reload never
//! changes the rules half-way through; [`Live::set`] affects the next one.

use std::sync::{Arc, RwLock};

pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(v: T) -> Live<T> {
        Live(RwLock::new(Arc::new(v)))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        // A poisoned lock still holds a whole Arc: the writer only swaps it.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the value for every later [`Live::get`].
    pub fn set(&self, v: T) {
        let v = Arc::new(v);
        match self.0.write() {
            Ok(mut g) => *g = v,
            Err(p) => *p.into_inner() = v,
        }
    }
}
