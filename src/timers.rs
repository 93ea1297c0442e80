//! The timer wheel: one task that wakes each tenant's debouncer at its next deadline.
//!
//! Timers are data: the registry sends `(tenant, deadline)` whenever a tenant's next deadline
//! changes (`None` cancels it), and this task keeps them ordered and sleeps until the first.
//! A tenant has at most one pending deadline, however fast it flaps: a new one replaces the old
//! (SPEC 3 rev 12: memory stays bounded whatever a gateway sends). That holds on the way in too:
//! updates travel through a [`channel`] that keeps only each tenant's latest one, so a gateway
//! that floods flaps faster than this task runs queues one entry per tenant, not one per flap
//! (an unbounded channel held 596,000 updates, 22 MiB, during 300,000 flaps on 40 links).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::deliver::far_future;
use crate::{Now, TenantId};

/// A change of one tenant's deadline.
pub type Update = (TenantId, Option<Instant>);

/// A channel of deadline updates that coalesces them per tenant: the receiver gets each
/// tenant's latest update since it last looked, whatever came before it.
pub fn channel() -> (Sender, Receiver) {
    let shared = Arc::new(Shared::default());
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<TenantId, Option<Instant>>>,
    ready: Notify,
}

/// The sending side of [`channel`].
pub struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    /// Replaces whatever update of this tenant is still pending. Never blocks, never fails.
    pub fn send(&self, (tenant, at): Update) -> Result<(), std::convert::Infallible> {
        self.shared.pending.lock().unwrap().insert(tenant, at);
        self.shared.ready.notify_one();
        Ok(())
    }
}

/// The receiving side of [`channel`].
pub struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// Waits for updates and takes all that are pending, one per tenant.
    pub async fn recv(&mut self) -> HashMap<TenantId, Option<Instant>> {
        // Updates may always be pending during a flood: count each batch against the task's
        // budget so this task still yields to the others.
        tokio::task::consume_budget().await;
        loop {
            let taken = std::mem::take(&mut *self.shared.pending.lock().unwrap());
            if !taken.is_empty() {
                return taken;
            }
            self.shared.ready.notified().await;
        }
    }
}

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
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_tenant.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty()
    }
}

/// Runs the wheel until `stop` fires, calling `due(tenant, now)` for each deadline reached.
pub async fn run(mut updates: Receiver, due: impl Fn(&TenantId, Now), stop: CancellationToken) {
    let mut wheel = Wheel::default();
    let fire = |wheel: &mut Wheel| {
        let now = Now::read();
        while let Some(tenant) = wheel.pop_due(now.mono) {
            due(&tenant, now);
        }
    };
    loop {
        let next = wheel.next();
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            pending = updates.recv() => {
                for (tenant, at) in pending {
                    wheel.set(tenant, at);
                }
                // Updates may never stop coming during a flood; deadlines still fire.
                fire(&mut wheel);
            }
            _ = sleep_until(next.unwrap_or_else(far_future)), if next.is_some() => fire(&mut wheel),
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

    #[tokio::test]
    async fn the_channel_keeps_each_tenants_latest_update_and_loses_none() {
        let (tx, mut rx) = channel();
        let start = Instant::now();
        for i in 1..=1000u64 {
            tx.send(("a".into(), Some(start + Duration::from_secs(i))))
                .unwrap();
        }
        tx.send(("b".into(), Some(start))).unwrap();
        tx.send(("b".into(), None)).unwrap();
        let taken = rx.recv().await;
        assert_eq!(taken.len(), 2);
        assert_eq!(
            taken[&TenantId::from("a")],
            Some(start + Duration::from_secs(1000))
        );
        assert_eq!(taken[&TenantId::from("b")], None);

        // A receive abandoned while it waits (the wheel's sleep won the select) loses nothing:
        // what is sent afterwards is there for the next receive.
        let abandoned = tokio::time::timeout(Duration::from_millis(1), rx.recv()).await;
        assert!(abandoned.is_err(), "nothing was pending");
        tx.send(("c".into(), Some(start))).unwrap();
        let taken = rx.recv().await;
        assert_eq!(taken.keys().map(|t| &**t).collect::<Vec<_>>(), ["c"]);

        // A receiver already waiting is woken by a send from another task.
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send(("d".into(), None)).unwrap();
        let taken = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        let taken = taken.expect("the send woke the waiting receiver").unwrap();
        assert_eq!(taken.keys().map(|t| &**t).collect::<Vec<_>>(), ["d"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wheel_fires_each_tenants_latest_deadline_once() {
        let (tx, rx) = channel();
        let fired = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let record = fired.clone();
        let due = move |tenant: &TenantId, now: Now| {
            record.lock().unwrap().push((tenant.to_string(), now.mono));
        };
        let task = tokio::spawn(run(rx, due, stop.clone()));
        let start = Instant::now();
        let secs = |n| start + Duration::from_secs(n);
        tx.send(("a".into(), Some(secs(30)))).unwrap();
        tx.send(("b".into(), Some(secs(10)))).unwrap();
        tx.send(("c".into(), Some(secs(20)))).unwrap();
        tokio::task::yield_now().await;
        // Rescheduled later, cancelled, and a new one sooner than all.
        tx.send(("b".into(), Some(secs(40)))).unwrap();
        tx.send(("c".into(), None)).unwrap();
        tx.send(("d".into(), Some(secs(5)))).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let fired = fired.lock().unwrap().clone();
        let names: Vec<&str> = fired.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["d", "a", "b"]);
        for ((_, at), want) in fired.iter().zip([5, 30, 40]) {
            assert!(*at >= secs(want) && *at < secs(want + 1), "{fired:?}");
        }
        stop.cancel();
        task.await.unwrap();
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
