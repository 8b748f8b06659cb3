//! Long-poll wake-ups: one LISTEN connection per broker hears `hookline_queue` (sent by
//! every replica when a webhook's queue may have become deliverable) and wakes the requests
//! waiting on that webhook, in memory. No polling: a waiter sleeps until a wake-up or its
//! deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::domain::WebhookId;

const CHANNEL: &str = "hookline_queue";

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

/// Listens for wake-ups until the process ends, reconnecting after failures.
pub async fn listen(pool: PgPool, wakeups: Arc<Wakeups>) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match listener.await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for queue wake-ups; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        wakeups.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => match n.payload().parse::<uuid::Uuid>() {
                    Ok(id) => wakeups.wake(&WebhookId::from_uuid(id)),
                    Err(_) => wakeups.wake_all(),
                },
                // Reconnected: wake-ups sent meanwhile are lost, so everyone re-checks.
                Ok(None) => wakeups.wake_all(),
                Err(e) => {
                    tracing::warn!(error = %e, "queue wake-up listener failed; reconnecting");
                    wakeups.wake_all();
                    break;
                }
            }
        }
    }
}
