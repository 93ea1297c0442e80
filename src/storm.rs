//! The mass-outage hold (SPEC section 4, "Mass-outage hold" [rev 12]): when WhatsApp itself drops
//! many sessions at once, their transient drops are held instead of each becoming a bell.
//!
//! This module holds the fleet-level decision, pure like the per-tenant debouncer: no I/O, no
//! clock; every call takes `now`.

use std::time::Duration;

/// Default share of the linked tenants whose transient drops within the window make a storm.
pub const DEFAULT_FRACTION: f64 = 0.2;
/// Default least number of drops for a storm: a handful of tenants is not an outage.
pub const DEFAULT_MIN_TENANTS: usize = 20;
/// Default window in which the drops must fall.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Default hold: how long after a storm began its drops are held before being reported.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(15 * 60);

/// The `[debounce] storm_*` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StormPolicy {
    /// Share (0 to 1) of the linked tenants that must go Down(transient) within `window`;
    /// 0 turns the hold off.
    pub fraction: f64,
    /// Least number of such tenants.
    pub min_tenants: usize,
    pub window: Duration,
    pub hold: Duration,
}

impl Default for StormPolicy {
    fn default() -> Self {
        StormPolicy {
            fraction: DEFAULT_FRACTION,
            min_tenants: DEFAULT_MIN_TENANTS,
            window: DEFAULT_WINDOW,
            hold: DEFAULT_HOLD,
        }
    }
}
