//! The risk gate: lets a message that has crashed before run alone.
//!
//! Every stage that could kill the process holds the gate shared; a crash
//! suspect holds it exclusively, so while it runs nothing else is in flight
//! and a second crash names it exactly. Writers are preferred (tokio's
//! RwLock is fair), so a suspect waits at most for the stages already
//! running.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Default)]
pub struct Gate(RwLock<()>);

/// Held while a stage runs.
pub enum Pass<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

impl Gate {
    /// Shared for ordinary work, exclusive for a crash suspect.
    pub async fn enter(&self, alone: bool) -> Pass<'_> {
        if alone {
            Pass::Alone(self.0.write().await)
        } else {
            Pass::Shared(self.0.read().await)
        }
    }
}
