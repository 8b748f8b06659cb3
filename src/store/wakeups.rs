//! Long-poll wake-ups: the broker's listener hears `hookline_queue` (sent by every replica
//! when a webhook's queue may have become deliverable) and wakes the requests waiting on
//! that webhook, in memory. No polling: a waiter sleeps until a wake-up or its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::listener::Subscriber;
use crate::domain::WebhookId;

/// Notified by `hookline_wake` (see the baseline migration) with a webhook id.
pub const CHANNEL: &str = "hookline_queue";

#[derive(Default)]
pub struct Wakeups {
    /// Weak: an entry lives while some request waits on it.
    waiters: Mutex<HashMap<WebhookId, Weak<Notify>>>,
}

impl Wakeups {
    /// The notifier for `webhook`. Create the `notified()` future and `enable()` it before
    /// checking the queue, so a wake-up between the check and the wait is not lost.
    pub fn subscribe(&self, webhook: WebhookId) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().expect("wakeups poisoned");
        if let Some(notify) = waiters.get(&webhook).and_then(Weak::upgrade) {
            return notify;
        }
        waiters.retain(|_, w| w.strong_count() > 0);
        let notify = Arc::new(Notify::new());
        waiters.insert(webhook, Arc::downgrade(&notify));
        notify
    }

    /// How many requests wait on `webhook` now (each holds its notifier). Once one is
    /// counted, a wake-up for it is not lost.
    pub fn waiting(&self, webhook: &WebhookId) -> usize {
        self.waiters.lock().expect("wakeups poisoned").get(webhook).map_or(0, Weak::strong_count)
    }

    fn wake(&self, webhook: &WebhookId) {
        let notify = self.waiters.lock().expect("wakeups poisoned").get(webhook).and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Everyone re-checks: used when notifications may have been missed.
    fn wake_all(&self) {
        let all: Vec<Arc<Notify>> =
            self.waiters.lock().expect("wakeups poisoned").values().filter_map(Weak::upgrade).collect();
        for notify in all {
            notify.notify_waiters();
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
