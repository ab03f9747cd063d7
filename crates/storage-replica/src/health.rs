//! Health: checking every copy, and the periodic task that also replays the
//! repair queue.

use super::*;

impl StorageManager {
    /// Asks every copy for its stats (bounded by `replica_timeout`) and records
    /// which are healthy; reads avoid unhealthy copies when failing over.
    pub async fn health_check(&self) -> HealthReport {
        let checks = self.shared.copies.iter().map(|c| {
            let backend = c.backend.clone();
            let timeout = self.shared.config.replica_timeout;
            async move { with_timeout(timeout, "get_stats", backend.get_stats()).await }
        });
        let results = join_all_spawned(checks).await;
        let mut issues = Vec::new();
        let mut healthy = 0usize;
        for (copy, r) in self.shared.copies.iter().zip(results) {
            let ok = r.is_ok();
            copy.healthy.store(ok, SeqCst);
            if let Err(e) = r {
                issues.push(format!("{}: {e}", copy.name));
            } else {
                healthy += 1;
            }
        }
        let primary_healthy = self.shared.copies[0].healthy.load(SeqCst);
        HealthReport {
            primary_healthy,
            healthy_replicas: healthy - usize::from(primary_healthy),
            total_replicas: self.shared.copies.len() - 1,
            under_replicated: healthy < self.shared.config.replication_factor as usize,
            pending_repairs: self.pending_repairs(),
            issues,
        }
    }

    /// Runs [`Self::health_check`] and [`Self::process_repairs`] every
    /// `health_check_interval` until the handle is stopped or dropped.
    pub fn start_health_checks(&self) -> HealthCheckHandle {
        let me = self.clone();
        let period = self.shared.config.health_check_interval;
        HealthCheckHandle(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.shared.lifecycle.is_closed() {
                    return;
                }
                me.health_check().await;
                me.process_repairs().await;
            }
        }))
    }
}
