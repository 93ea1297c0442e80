//! The timer wheel: one task that wakes each tenant's debouncer at its next deadline.
//!
//! Timers are data: the registry sends `(tenant, deadline)` whenever a tenant's next deadline
//! changes (`None` cancels it), and this task keeps them ordered and sleeps until the first.
//! A tenant has at most one pending deadline, however fast it flaps: a new one replaces the old
//! (SPEC 3 rev 12: memory stays bounded whatever a gateway sends).

use std::collections::{BTreeSet, HashMap};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::deliver::far_future;
use crate::{Now, TenantId};

/// A change of one tenant's deadline.
pub type Update = (TenantId, Option<Instant>);

/// Each tenant's one pending deadline, ordered by time.
#[derive(Debug, Default)]
pub struct Wheel {
    by_time: BTreeSet<(Instant, TenantId)>,
    by_tenant: HashMap<TenantId, Instant>,
}

impl Wheel {
    /// Sets (or, with None, cancels) the tenant's deadline, replacing any earlier one.
    pub fn set(&mut self, tenant: TenantId, at: Option<Instant>) {
        if let Some(old) = self.by_tenant.remove(&tenant) {
            self.by_time.remove(&(old, tenant.clone()));
        }
        if let Some(at) = at {
            self.by_time.insert((at, tenant.clone()));
            self.by_tenant.insert(tenant, at);
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Removes and returns the next tenant due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<TenantId> {
        let (at, _) = self.by_time.first()?;
        if *at > now {
            return None;
        }
        let (_, tenant) = self.by_time.pop_first()?;
        self.by_tenant.remove(&tenant);
        Some(tenant)
    }

    /// Pending deadlines.
    pub fn len(&self) -> usize {
        self.by_tenant.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty()
    }
}

/// Runs the wheel until `stop` fires, calling `due(tenant, now)` for each deadline reached.
pub async fn run(
    mut updates: UnboundedReceiver<Update>,
    due: impl Fn(&TenantId, Now),
    stop: CancellationToken,
) {
    let mut wheel = Wheel::default();
    loop {
        let next = wheel.next();
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            update = updates.recv() => match update {
                Some((tenant, at)) => wheel.set(tenant, at),
                None => return,
            },
            _ = sleep_until(next.unwrap_or_else(far_future)), if next.is_some() => {
                let now = Now::read();
                while let Some(tenant) = wheel.pop_due(now.mono) {
                    due(&tenant, now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_tenant_has_one_deadline_however_often_it_is_rescheduled() {
        let start = Instant::now();
        let mut wheel = Wheel::default();
        let t: TenantId = "b1".into();
        for i in 0..300_000u64 {
            wheel.set(t.clone(), Some(start + Duration::from_millis(i % 1000 + 1)));
        }
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.by_time.len(), 1);
        wheel.set("b2".into(), Some(start + Duration::from_millis(5)));
        wheel.set(t.clone(), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.next(), Some(start + Duration::from_millis(5)));
        assert_eq!(wheel.pop_due(start), None);
        assert_eq!(
            wheel.pop_due(start + Duration::from_millis(5)).as_deref(),
            Some("b2")
        );
        assert!(wheel.is_empty());
    }

    #[test]
    fn due_tenants_come_out_in_deadline_order() {
        let start = Instant::now();
        let mut wheel = Wheel::default();
        for (name, ms) in [("c", 30), ("a", 10), ("b", 20)] {
            wheel.set(name.into(), Some(start + Duration::from_millis(ms)));
        }
        let mut order = Vec::new();
        while let Some(t) = wheel.pop_due(start + Duration::from_millis(25)) {
            order.push(t.to_string());
        }
        assert_eq!(order, ["a", "b"]);
        assert_eq!(wheel.next(), Some(start + Duration::from_millis(30)));
    }
}
