//! Logging: structured tracing to stderr, filtered by RUST_LOG (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tokio_cron_scheduler=warn,actix_server=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// At most `per_minute` log lines of one kind a minute: a database outage fails every
/// request, and the log must stay readable (and the disk unfilled) while it lasts. Lines past
/// the budget are counted, and the count goes out with the next line let through.
pub struct Throttle {
    per_minute: u32,
    window: std::sync::Mutex<Window>,
}

struct Window {
    started: Option<std::time::Instant>,
    logged: u32,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(per_minute: u32) -> Self {
        Self { per_minute, window: std::sync::Mutex::new(Window { started: None, logged: 0, suppressed: 0 }) }
    }

    /// Whether this line may be logged; if so, how many were held back before it.
    pub fn permit(&self) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        if w.started.is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(60)) {
            w.started = Some(now);
            w.logged = 0;
        }
        if w.logged >= self.per_minute {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn a_throttle_lets_its_budget_through_and_counts_the_rest() {
        let throttle = Throttle::new(3);
        assert_eq!((0..3).map(|_| throttle.permit()).collect::<Vec<_>>(), vec![Some(0); 3]);
        assert_eq!((0..5).filter_map(|_| throttle.permit()).count(), 0);
        // The next window reports what was held back with its first line.
        throttle.window.lock().unwrap().started = Some(std::time::Instant::now() - std::time::Duration::from_secs(61));
        assert_eq!(throttle.permit(), Some(5));
        assert_eq!(throttle.permit(), Some(0));
    }
}
