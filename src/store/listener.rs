//! LISTEN/NOTIFY: one connection per broker listens on every channel the broker cares about
//! (queue wake-ups, key revocations) and hands each notification to its channel's
//! subscriber, in memory. A subscriber is told when notifications may have been missed
//! (the connection dropped), so it can fall back to re-checking everything.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use crate::telemetry::Throttle;

/// Listener failures logged a minute (the rest counted): it retries every second while the
/// database is down.
static LISTENER_FAILURES: Throttle = Throttle::new(5);

/// What hears one channel.
pub trait Subscriber: Send + Sync {
    /// A notification's payload.
    fn notified(&self, payload: &str);
    /// Notifications may have been lost (the listener reconnected or is down).
    fn missed(&self);
}

/// Channels and their subscribers.
#[derive(Default)]
pub struct Listener {
    channels: Vec<(&'static str, Arc<dyn Subscriber>)>,
}

impl Listener {
    pub fn on(mut self, channel: &'static str, subscriber: Arc<dyn Subscriber>) -> Self {
        self.channels.push((channel, subscriber));
        self
    }

    /// Listens until the pool closes, reconnecting after failures.
    pub async fn run(self, pool: PgPool) {
        let names: Vec<&str> = self.channels.iter().map(|(c, _)| *c).collect();
        // Until the pool closes (shutdown): then there is nothing left to wake.
        while !pool.is_closed() {
            let listener = async {
                let mut l = PgListener::connect_with(&pool).await?;
                l.listen_all(names.iter().copied()).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = match listener.await {
                Ok(l) => l,
                Err(_) if pool.is_closed() => return,
                Err(e) => {
                    if let Some(suppressed) = LISTENER_FAILURES.permit() {
                        tracing::warn!(error = %e, suppressed, "cannot listen for notifications; retrying");
                    }
                    // While the listener is down nothing is heard: every subscriber falls back
                    // (long-polls re-check once a second, keys re-verify by lookup).
                    self.missed();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.missed();
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        for (_, subscriber) in self.channels.iter().filter(|(c, _)| *c == n.channel()) {
                            subscriber.notified(n.payload());
                        }
                    }
                    // Reconnected: notifications sent meanwhile are lost.
                    Ok(None) => self.missed(),
                    Err(_) if pool.is_closed() => return,
                    Err(e) => {
                        if let Some(suppressed) = LISTENER_FAILURES.permit() {
                            tracing::warn!(error = %e, suppressed, "notification listener failed; reconnecting");
                        }
                        self.missed();
                        break;
                    }
                }
            }
        }
    }

    fn missed(&self) {
        for (_, subscriber) in &self.channels {
            subscriber.missed();
        }
    }
}
