//! The queue and flushers of group commit, shared by ingestion (`group_commit`) and
//! acknowledgements (`consumer_batch`): requests wait in one queue; each flusher in turn takes
//! everything waiting (up to `max_batch`), optionally lingers `max_wait` for more, and
//! writes it. Requests that arrive while a batch is written form the next one, so batches
//! grow with load and a lone request is written at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;

use super::StoreResult;

/// Parts of a failed batch retried at once (the pool is shared with every other request).
pub const SPLIT_RETRIES: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Most requests written in one transaction.
    pub max_batch: usize,
    /// How long a flusher waits for more requests once it has one (zero: take what is there).
    pub max_wait: Duration,
    /// Batches written at the same time.
    pub flushers: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self { max_batch: 256, max_wait: Duration::ZERO, flushers: 4 }
    }
}

/// One request in a batch, and where its outcome goes.
pub struct Pending<T, R> {
    pub item: T,
    pub reply: oneshot::Sender<StoreResult<R>>,
}

/// The queue in front of the flushers. Cloning shares it; the flushers stop once every
/// clone is dropped and the queue is drained.
pub struct Queue<T, R> {
    sender: mpsc::Sender<Pending<T, R>>,
}

impl<T, R> Clone for Queue<T, R> {
    fn clone(&self) -> Self {
        Self { sender: self.sender.clone() }
    }
}

impl<T: Send + 'static, R: Send + 'static> Queue<T, R> {
    /// Starts `config.flushers` flushers, each writing its batches with `write`.
    pub fn start<W, F>(config: GroupCommitConfig, write: W) -> Self
    where
        W: Fn(Vec<Pending<T, R>>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send,
    {
        let (sender, receiver) = mpsc::channel(config.max_batch * config.flushers.max(1) * 4);
        let (receiver, write) = (Arc::new(Mutex::new(receiver)), Arc::new(write));
        for _ in 0..config.flushers.max(1) {
            let (receiver, write) = (receiver.clone(), write.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&receiver, config).await {
                    write(batch).await;
                }
            });
        }
        Self { sender }
    }

    /// Queues `item` and waits for its batch; None when the flushers have stopped.
    pub async fn submit(&self, item: T) -> Option<StoreResult<R>> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(Pending { item, reply }).await.ok()?;
        answer.await.ok()
    }
}

async fn next_batch<T, R>(
    receiver: &Mutex<mpsc::Receiver<Pending<T, R>>>,
    config: GroupCommitConfig,
) -> Option<Vec<Pending<T, R>>> {
    let mut rx = receiver.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    let deadline = Instant::now() + config.max_wait;
    while batch.len() < config.max_batch {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) if config.max_wait.is_zero() => break,
            Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                _ => break,
            },
        }
    }
    Some(batch)
}

/// Splits a batch into parts by `key` (a webhook), each part in arrival order.
pub fn split_by<T, K: PartialEq>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<Vec<T>> {
    let mut parts: Vec<Vec<T>> = Vec::new();
    for item in items {
        match parts.iter_mut().find(|p| key(&p[0]) == key(&item)) {
            Some(part) => part.push(item),
            None => parts.push(vec![item]),
        }
    }
    parts
}
