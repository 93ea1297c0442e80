//! Reference models shared by the unit tests and the integration and property tests: compiled for
//! `cargo test` (the crate's own tests, and the `testing` feature the test crates turn on), never
//! into the sidecar.

/// The debouncer's invariants, tracked independently of the debouncer: what a test knows about a
/// sequence of inputs without deciding anything itself.
pub mod debounce {
    use tokio::time::Instant;

    use crate::debounce::{Policy, Report, Restored, Status};
    use crate::observe::Observation;

    /// One input to a debouncer, as the model sees it.
    #[derive(Debug, Clone, Copy)]
    pub enum Input<'a> {
        LinkUp,
        LinkDown,
        /// A spurious or late timer.
        Wake,
        Observed(&'a Observation),
    }

    #[derive(Debug, Clone, Default)]
    pub struct Model {
        link_down: bool,
        /// An observation arrived since the link last came up (the link is established).
        observed_on_link: bool,
        last_up: Option<bool>,
        /// Start of the current Up run, while the link has stayed up throughout it.
        up_since: Option<Instant>,
        /// The last flap; a restored penalty counts as a flap at the start.
        last_flap: Option<Instant>,
        /// The last status reported, starting from the restored (acknowledged) one.
        last_report: Option<Status>,
    }

    impl Model {
        /// The model of a debouncer created at `start` from `restored`.
        pub fn new(start: Instant, restored: &Restored) -> Self {
            Model {
                last_flap: (restored.penalty > 0.0 || restored.flapping).then_some(start),
                last_report: restored.stable,
                ..Model::default()
            }
        }

        pub fn apply(&mut self, now: Instant, input: Input<'_>) {
            match input {
                Input::LinkUp => {
                    self.link_down = false;
                    self.observed_on_link = false;
                }
                Input::LinkDown => {
                    self.link_down = true;
                    self.up_since = None;
                }
                Input::Wake => {}
                Input::Observed(Observation::Up) => {
                    if self.last_up != Some(true) && !self.link_down {
                        self.up_since = Some(now);
                    }
                    self.last_up = Some(true);
                    self.observed_on_link |= !self.link_down;
                }
                Input::Observed(Observation::Down(_)) => {
                    if !self.link_down && self.observed_on_link && self.last_up == Some(true) {
                        self.last_flap = Some(now);
                    }
                    self.last_up = Some(false);
                    self.up_since = None;
                    self.observed_on_link |= !self.link_down;
                }
            }
        }

        /// Checks a newly drained report: never equal to the previous report (the first never to
        /// the restored, acknowledged state); never `connected` while the last observation is
        /// Down; `disconnected` always with a reason, `connected` never; never an episode that
        /// starts after its decision.
        pub fn reported(&mut self, report: &Report, now: Instant) -> Result<(), String> {
            if self.last_report == Some(report.status) {
                return Err(format!(
                    "two reports in a row with the same status: {report:?}"
                ));
            }
            match report.status {
                Status::Connected if self.last_up != Some(true) => {
                    return Err("connected while the last observation is Down".into())
                }
                Status::Connected if report.reason.is_some() => {
                    return Err("connected with a reason".into())
                }
                Status::Disconnected if report.reason.as_deref().is_none_or(str::is_empty) => {
                    return Err("disconnected without a reason".into())
                }
                _ => {}
            }
            if report.since > now {
                return Err("an episode cannot start after its decision".into());
            }
            self.last_report = Some(report.status);
            Ok(())
        }

        /// When, with Up holding on a live link, the debouncer must be connected and not
        /// flapping: `connect_grace` after the Up run began, and `flap_max_suppress` after the
        /// last flap. None while that does not hold.
        pub fn settled_by(&self, policy: &Policy) -> Option<Instant> {
            let up_since = self.up_since?;
            let mut bound = up_since + policy.connect_grace;
            if let Some(flap) = self.last_flap {
                bound = bound.max(flap + policy.flap_max_suppress);
            }
            Some(bound)
        }
    }
}
