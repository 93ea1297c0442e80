//! The timer wheel: one task that wakes each tenant's debouncer at its next deadline.
//!
//! Timers are data: the registry sends `(deadline, tenant)` whenever a tenant's next deadline
//! changes, and this task keeps them ordered and sleeps until the first. A superseded deadline is
//! not removed; when it fires the registry finds nothing due and carries on, which is cheaper than
//! bookkeeping for every change.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::deliver::far_future;
use crate::registry::{Now, Registry, TenantId};

pub async fn run(
    registry: Arc<Registry>,
    mut updates: UnboundedReceiver<(Instant, TenantId)>,
    stop: CancellationToken,
) {
    let mut wheel: BTreeSet<(Instant, TenantId)> = BTreeSet::new();
    loop {
        let next = wheel.first().map(|(at, _)| *at);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            update = updates.recv() => match update {
                Some(entry) => {
                    wheel.insert(entry);
                }
                None => return,
            },
            _ = sleep_until(next.unwrap_or_else(far_future)), if next.is_some() => {
                let now = Now::read();
                while wheel.first().is_some_and(|(at, _)| *at <= now.mono) {
                    let (_, tenant) = wheel.pop_first().expect("checked non-empty");
                    registry.timeout(&tenant, now);
                }
            }
        }
    }
}
