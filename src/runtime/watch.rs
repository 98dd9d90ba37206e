//! A single-value broadcast channel with tokio's `sync::watch` API, whose wake-up order depends
//! only on the order in which receivers started waiting.
//!
//! Why it exists: tokio's `watch::Receiver::changed` parks each waiter on one of eight
//! `Notify`s picked by `thread_rng_n(8)`, a per-thread generator that tokio seeds by hashing a
//! process-global counter (`tokio::loom::std::rand::seed`). The counter advances once per thread
//! that first draws from it, so the same simulation seed run twice in one process (which is
//! what `MADSIM_TEST_CHECK_DETERMINISM=1` does, and what a multi-seed sweep does for every seed
//! after the first) parks waiters differently, wakes them in a different order, and madsim's
//! scheduler diverges. Two separate processes agree, because the counter starts at the same
//! value in both. This channel uses one `Notify` (which wakes in registration order), so the
//! simulation build is deterministic; the production build keeps tokio's channel (see
//! `runtime::watch` in `mod.rs`).
//!
//! Invariant: the version only grows; a receiver's `changed` resolves iff the version moved
//! past the one it last saw, or with [`error::RecvError`] once every sender is gone.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::Notify;

/// Error types, named as tokio names them.
pub mod error {
    /// Every sender was dropped.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RecvError(pub(super) ());

    impl std::fmt::Display for RecvError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "channel closed")
        }
    }

    impl std::error::Error for RecvError {}

    /// Every receiver was dropped; the value is handed back.
    #[derive(Debug, PartialEq, Eq)]
    pub struct SendError<T>(pub T);

    impl<T: std::fmt::Debug> std::fmt::Display for SendError<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "channel closed")
        }
    }

    impl<T: std::fmt::Debug> std::error::Error for SendError<T> {}
}

struct Shared<T> {
    value: RwLock<T>,
    /// Bumped (under the value's write lock) on every published change.
    version: AtomicU64,
    notify: Notify,
    senders: AtomicUsize,
    receivers: AtomicUsize,
    closed: AtomicBool,
}

/// The sending half; cloning adds a sender.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half: remembers the last version it saw.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// A read guard on the current value.
pub struct Ref<'a, T>(RwLockReadGuard<'a, T>);

impl<T> Deref for Ref<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A channel holding `init`.
pub fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        value: RwLock::new(init),
        version: AtomicU64::new(0),
        notify: Notify::new(),
        senders: AtomicUsize::new(1),
        receivers: AtomicUsize::new(1),
        closed: AtomicBool::new(false),
    });
    (Sender { shared: shared.clone() }, Receiver { shared, seen: 0 })
}

impl<T> Sender<T> {
    /// Publishes `value`; fails (handing it back) if no receiver is left.
    pub fn send(&self, value: T) -> Result<(), error::SendError<T>> {
        if self.shared.receivers.load(Ordering::Acquire) == 0 {
            return Err(error::SendError(value));
        }
        self.send_replace(value);
        Ok(())
    }

    /// Publishes `value` whether or not anyone listens; returns the previous value.
    pub fn send_replace(&self, value: T) -> T {
        let old = {
            let mut v = self.shared.value.write().unwrap();
            self.shared.version.fetch_add(1, Ordering::AcqRel);
            std::mem::replace(&mut *v, value)
        };
        self.shared.notify.notify_waiters();
        old
    }

    /// Modifies the value in place and notifies receivers.
    pub fn send_modify(&self, modify: impl FnOnce(&mut T)) {
        self.send_if_modified(|v| {
            modify(v);
            true
        });
    }

    /// Modifies the value in place; notifies receivers only if `modify` returns true.
    pub fn send_if_modified(&self, modify: impl FnOnce(&mut T) -> bool) -> bool {
        let changed = {
            let mut v = self.shared.value.write().unwrap();
            let changed = modify(&mut v);
            if changed {
                self.shared.version.fetch_add(1, Ordering::AcqRel);
            }
            changed
        };
        if changed {
            self.shared.notify.notify_waiters();
        }
        changed
    }

    /// The current value.
    pub fn borrow(&self) -> Ref<'_, T> {
        Ref(self.shared.value.read().unwrap())
    }

    /// A new receiver that has seen the current value.
    pub fn subscribe(&self) -> Receiver<T> {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        Receiver { shared: self.shared.clone(), seen: self.shared.version.load(Ordering::Acquire) }
    }

    /// How many receivers are alive.
    pub fn receiver_count(&self) -> usize {
        self.shared.receivers.load(Ordering::Acquire)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Sender { shared: self.shared.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.closed.store(true, Ordering::Release);
            self.shared.notify.notify_waiters();
        }
    }
}

impl<T> Receiver<T> {
    /// The current value (does not mark it seen).
    pub fn borrow(&self) -> Ref<'_, T> {
        Ref(self.shared.value.read().unwrap())
    }

    /// The current value, marked seen.
    pub fn borrow_and_update(&mut self) -> Ref<'_, T> {
        let guard = self.shared.value.read().unwrap();
        self.seen = self.shared.version.load(Ordering::Acquire);
        Ref(guard)
    }

    /// True if a value was published since this receiver last looked.
    pub fn has_changed(&self) -> Result<bool, error::RecvError> {
        let changed = self.shared.version.load(Ordering::Acquire) != self.seen;
        if !changed && self.shared.closed.load(Ordering::Acquire) {
            return Err(error::RecvError(()));
        }
        Ok(changed)
    }

    /// Waits for a value newer than the last one seen and marks it seen; fails once every
    /// sender is gone and nothing new is left.
    pub async fn changed(&mut self) -> Result<(), error::RecvError> {
        loop {
            // Register before checking, so a change between the check and the wait is not lost.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.shared.version.load(Ordering::Acquire);
            if now != self.seen {
                self.seen = now;
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(error::RecvError(()));
            }
            notified.await;
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        Receiver { shared: self.shared.clone(), seen: self.seen }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the tokio-compatible semantics the broker relies on: a receiver sees each change
    // once, `send_if_modified(false)` wakes nobody, and dropping the sender ends `changed`.
    #[tokio::test]
    async fn changed_borrow_and_close() {
        let (tx, mut rx) = channel(1i64);
        assert!(!rx.has_changed().unwrap());
        tx.send_modify(|v| *v = 2);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 2);
        assert!(!tx.send_if_modified(|_| false));
        assert!(!rx.has_changed().unwrap());
        let mut rx2 = tx.subscribe();
        let waiter = tokio::spawn(async move { rx2.changed().await.map(|_| *rx2.borrow()) });
        tokio::task::yield_now().await;
        assert_eq!(tx.send_replace(3), 2);
        assert_eq!(waiter.await.unwrap(), Ok(3));
        drop(tx);
        rx.changed().await.unwrap(); // the 3 was not seen yet
        assert!(rx.changed().await.is_err());
        let (tx, rx) = channel(0u8);
        drop(rx);
        assert_eq!(tx.send(1), Err(error::SendError(1)));
    }
}
