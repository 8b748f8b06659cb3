//! Long-poll wake-ups: the broker's listener hears `hookline_queue` (sent by every replica
//! when a webhook's queue may have become deliverable) and wakes the requests waiting on
//! that webhook, in memory. No polling: a waiter sleeps until a wake-up or its deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::listener::Subscriber;
use crate::domain::WebhookId;

/// Notified by `hookline_wake` (see the baseline migration) with a webhook id.
pub const CHANNEL: &str = "hookline_queue";

#[derive(Default)]
pub struct Wakeups {
    /// Weak: an entry lives while some request waits on it.
    waiters: Mutex<HashMap<WebhookId, Weak<Waiters>>>,
}

/// The requests waiting on one webhook.
#[derive(Default)]
pub struct Waiters {
    pub notify: Notify,
    /// How many of them are asleep now (past their check of the queue).
    asleep: AtomicUsize,
}

impl Waiters {
    /// Counts the caller as asleep until the guard is dropped.
    pub fn asleep(&self) -> Asleep<'_> {
        self.asleep.fetch_add(1, Ordering::AcqRel);
        Asleep(&self.asleep)
    }
}

/// One request asleep on a webhook's wake-ups; uncounted when dropped.
pub struct Asleep<'a>(&'a AtomicUsize);

impl Drop for Asleep<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Wakeups {
    /// The notifier for `webhook`. Create the `notified()` future and `enable()` it before
    /// checking the queue, so a wake-up between the check and the wait is not lost.
    pub fn subscribe(&self, webhook: WebhookId) -> Arc<Waiters> {
        let mut waiters = self.waiters.lock().expect("wakeups poisoned");
        if let Some(existing) = waiters.get(&webhook).and_then(Weak::upgrade) {
            return existing;
        }
        waiters.retain(|_, w| w.strong_count() > 0);
        let fresh = Arc::new(Waiters::default());
        waiters.insert(webhook, Arc::downgrade(&fresh));
        fresh
    }

    /// How many requests are asleep on `webhook` now: each found nothing to deliver and
    /// waits for a wake-up (tests wake them only then).
    pub fn asleep(&self, webhook: &WebhookId) -> usize {
        let waiters = self.waiters.lock().expect("wakeups poisoned").get(webhook).and_then(Weak::upgrade);
        waiters.map_or(0, |w| w.asleep.load(Ordering::Acquire))
    }

    fn wake(&self, webhook: &WebhookId) {
        let waiters = self.waiters.lock().expect("wakeups poisoned").get(webhook).and_then(Weak::upgrade);
        if let Some(waiters) = waiters {
            waiters.notify.notify_waiters();
        }
    }

    /// Everyone re-checks: used when notifications may have been missed.
    fn wake_all(&self) {
        let all: Vec<Arc<Waiters>> =
            self.waiters.lock().expect("wakeups poisoned").values().filter_map(Weak::upgrade).collect();
        for waiters in all {
            waiters.notify.notify_waiters();
        }
    }
}

impl Subscriber for Wakeups {
    fn notified(&self, payload: &str) {
        match payload.parse::<uuid::Uuid>() {
            Ok(id) => self.wake(&WebhookId::from_uuid(id)),
            Err(_) => self.wake_all(),
        }
    }

    fn missed(&self) {
        self.wake_all();
    }
}
