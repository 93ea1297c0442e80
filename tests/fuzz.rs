//! Property tests at scale (issue 5), standing in for `cargo fuzz`, which needs a nightly
//! toolchain this project's machines do not have.
//!
//! - The frame parser: `observe::parse` and `SessionView::apply` never panic, on arbitrary
//!   strings, on mutations of the seed corpus `tests/fuzz-corpus/frames.jsonl`, and on JSON built
//!   from the known shapes with random values.
//! - The debounce state machine, under random event sequences and random time steps, keeps its
//!   invariants: never a report equal to the previous one (the first never equal to the restored,
//!   acknowledged state), never `connected` while the last observation is Down, and flapping
//!   always ends within `flap_max_suppress` of the last flap (and `connect_grace` of the Up run)
//!   when Up holds on a live link.
//! - The storm detector (`storm::Detector`) decides exactly what a naive reference model decides,
//!   event for event, under random drops, recoveries, link losses, removals, reloads and restarts,
//!   with the timer driven punctually or lazily.
//!
//! The default case counts make a CI pass of well under a minute; set `PROPTEST_CASES` for a longer
//! local run, e.g. `PROPTEST_CASES=200000 cargo test --release --test fuzz`. Failures are saved
//! by proptest in `tests/proptest-regressions/fuzz.txt` and replayed first on every run: commit them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use serde_json::{json, Value};
use tokio::time::Instant;
use wa_status_sidecar::debounce::{Debouncer, Policy, Restored, Status};
use wa_status_sidecar::observe::{self, DownCause, DownKind, Observation, SessionView};
use wa_status_sidecar::storm::{Detector, Event, StormPolicy};
use wa_status_sidecar::testing::debounce::{Input, Model};

/// Cases per property: `PROPTEST_CASES` if set, else `default`.
fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        // Shrinking a long event sequence can take long; bound it.
        max_shrink_iters: 2_000,
        // Relative to the package root, where cargo runs tests; replayed first on every run.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/fuzz.txt",
        ))),
        ..Config::default()
    }
}

const CORPUS: &str = include_str!("fuzz-corpus/frames.jsonl");

fn corpus() -> Vec<&'static str> {
    CORPUS.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// Feeds frames through the parser and one session view, as a link does; must not panic.
fn feed<'a>(frames: impl IntoIterator<Item = &'a str>) {
    let mut view = SessionView::default();
    for frame in frames {
        if let Ok(frame) = observe::parse(frame) {
            let qr = matches!(&frame.update, observe::Update::Baileys(u) if u.qr);
            let observation = view.apply(frame.update);
            if qr {
                // A QR shown always means not linked, whatever else the frame said.
                assert!(
                    matches!(
                        observation,
                        Some(Observation::Down(DownCause {
                            kind: DownKind::QrShown,
                            ..
                        }))
                    ),
                    "{observation:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The frame parser
// ---------------------------------------------------------------------------------------------

/// A random mutation of a seed frame: byte-level edits kept as valid UTF-8 (WebSocket text frames
/// are UTF-8; tungstenite rejects anything else before the parser sees it).
#[derive(Debug, Clone)]
enum Edit {
    Truncate(usize),
    Delete(usize, usize),
    Insert(usize, String),
    Duplicate(usize, usize),
    Swap(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let snippets = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "null",
        "true",
        "-1",
        "1e999",
        "\\ud800",
        "\\u0000",
        "\"connection\":",
        "\"open\"",
        "\"close\"",
        "\"qr\":\"x\"",
        "\"lastDisconnect\":",
        "\"statusCode\":",
        "\"event\":",
        "\"data\":",
        "\u{feff}",
        "é",
        "\u{10ffff}",
    ]);
    prop_oneof![
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 0usize..16).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), snippets.prop_map(str::to_string)).prop_map(|(a, s)| Edit::Insert(a, s)),
        (any::<usize>(), any::<String>()).prop_map(|(a, s)| Edit::Insert(a, s)),
        (any::<usize>(), 1usize..64).prop_map(|(a, n)| Edit::Duplicate(a, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
    ]
}

fn boundary(s: &str, at: usize) -> usize {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate(seed: &str, edits: &[Edit]) -> String {
    let mut s = seed.to_string();
    for e in edits {
        match e {
            Edit::Truncate(at) => {
                let at = boundary(&s, *at);
                s.truncate(at);
            }
            Edit::Delete(at, n) => {
                let a = boundary(&s, *at);
                let b = boundary(&s, a + n);
                if b >= a {
                    s.replace_range(a..b, "");
                }
            }
            Edit::Insert(at, text) => {
                let at = boundary(&s, *at);
                s.insert_str(at, text);
            }
            Edit::Duplicate(at, n) => {
                let a = boundary(&s, *at);
                let b = boundary(&s, a + n);
                if b >= a {
                    let piece = s[a..b].to_string();
                    s.insert_str(b, &piece);
                }
            }
            Edit::Swap(x, y) => {
                let (a, b) = (boundary(&s, *x), boundary(&s, *y));
                let (a, b) = (a.min(b), a.max(b));
                let piece = s[a..b].to_string();
                s.replace_range(a..b, &piece.chars().rev().collect::<String>());
            }
        }
    }
    s
}

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "open",
            "close",
            "connecting",
            "WORKING",
            "FAILED",
            "STARTING",
            "SCAN_QR_CODE",
            "STOPPED",
            "refused",
            "connected",
            "disconnected",
            "",
            "OPEN",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A frame of one of the known shapes, each field present or absent and holding either a
/// plausible value or anything at all.
fn shaped_frame() -> impl Strategy<Value = String> {
    let field = |plausible: BoxedStrategy<Value>| {
        prop_oneof![
            2 => Just(None),
            5 => plausible.prop_map(Some),
            2 => any_json().prop_map(Some),
        ]
    };
    let connection = prop::sample::select(vec!["open", "close", "connecting", "opening"])
        .prop_map(|s| json!(s))
        .boxed();
    let code = prop_oneof![
        prop::sample::select(vec![401u32, 403, 408, 411, 428, 440, 500, 503, 515]),
        any::<u32>()
    ]
    .prop_map(|c| json!(c))
    .boxed();
    let message = ".{0,40}".prop_map(|s| json!(s)).boxed();
    let boom = (field(code.clone()), field(message.clone())).prop_map(|(code, message)| {
        let mut payload = serde_json::Map::new();
        if let Some(m) = message {
            payload.insert("message".into(), m);
        }
        let mut output = serde_json::Map::new();
        if let Some(c) = code {
            output.insert("statusCode".into(), c);
        }
        output.insert("payload".into(), Value::Object(payload));
        json!({"isBoom": true, "output": output})
    });
    let baileys = (
        field(connection),
        field(boom.prop_map(|e| json!({"error": e})).boxed()),
        field(".{0,10}".prop_map(|s| json!(s)).boxed()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(connection, last, qr, wrapped, online)| {
            let mut data = serde_json::Map::new();
            if let Some(c) = connection {
                data.insert("connection".into(), c);
            }
            if let Some(l) = last {
                data.insert("lastDisconnect".into(), l);
            }
            if let Some(q) = qr {
                data.insert("qr".into(), q);
            }
            if online {
                data.insert("isOnline".into(), json!(true));
            }
            if wrapped {
                json!({"event": "connection.update", "data": data})
            } else {
                Value::Object(data)
            }
        });
    let status = prop::sample::select(vec![
        "WORKING",
        "STARTING",
        "SCAN_QR_CODE",
        "FAILED",
        "STOPPED",
        "connected",
        "disconnected",
        "open",
        "close",
        "refused",
        "connecting",
    ])
    .prop_map(|s| json!(s))
    .boxed();
    let tenant = prop_oneof![Just(json!("business_1")), any_json()].boxed();
    let native = (
        tenant.clone(),
        field(status.clone()),
        field(message.clone()),
    )
        .prop_map(|(t, s, r)| json!({"tenant_id": t, "status": s, "reason": r}));
    let waha = (tenant.clone(), field(status.clone())).prop_map(
        |(t, s)| json!({"event": "session.status", "session": t, "payload": {"status": s}}),
    );
    let evolution = (tenant, field(status), field(code)).prop_map(|(t, s, c)| {
        json!({"event": "connection.update", "instance": t, "data": {"state": s, "statusReason": c}})
    });
    prop_oneof![baileys, native, waha, evolution].prop_map(|v| v.to_string())
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn the_parser_never_panics_on_arbitrary_text(frames in prop::collection::vec(".*", 1..4)) {
        feed(frames.iter().map(String::as_str));
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        feed([text.as_ref()]);
    }

    #[test]
    fn the_parser_never_panics_on_mutated_seeds(
        picks in prop::collection::vec((any::<prop::sample::Index>(), prop::collection::vec(edit(), 0..6)), 1..6)
    ) {
        let seeds = corpus();
        let frames: Vec<String> = picks
            .iter()
            .map(|(i, edits)| mutate(i.get::<&str>(&seeds), edits))
            .collect();
        feed(frames.iter().map(String::as_str));
    }

    #[test]
    fn the_parser_never_panics_on_known_shapes_with_random_values(
        frames in prop::collection::vec(shaped_frame(), 1..8)
    ) {
        feed(frames.iter().map(String::as_str));
    }
}

#[test]
fn every_seed_of_the_corpus_parses_without_panic_and_the_real_ones_are_understood() {
    let seeds = corpus();
    assert!(seeds.len() >= 20);
    feed(seeds.iter().copied());
    // The real Baileys frames (the fixture) all parse.
    let fixture = include_str!("fixtures/baileys-connection-update.jsonl");
    for line in fixture.lines().filter(|l| !l.is_empty()) {
        assert!(observe::parse(line).is_ok(), "{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// The debounce state machine
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Ev {
    LinkUp,
    LinkDown,
    Open,
    Connecting,
    Close(Option<u16>),
    Qr,
    Ended,
    /// The driver wakes with nothing new (a spurious or late timer).
    Wake,
}

impl Ev {
    fn observation(&self) -> Option<Observation> {
        let down = |kind, code| {
            Some(Observation::Down(DownCause {
                kind,
                code,
                message: Some("Connection Closed".into()),
            }))
        };
        match self {
            Ev::Open => Some(Observation::Up),
            Ev::Connecting => down(DownKind::Connecting, None),
            Ev::Close(code) => down(DownKind::Closed, *code),
            Ev::Qr => down(DownKind::QrShown, None),
            Ev::Ended => down(DownKind::Ended, None),
            Ev::LinkUp | Ev::LinkDown | Ev::Wake => None,
        }
    }
}

fn event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => Just(Ev::LinkUp),
        3 => Just(Ev::LinkDown),
        25 => Just(Ev::Open),
        10 => Just(Ev::Connecting),
        18 => prop::sample::select(vec![Some(428u16), Some(408), Some(440), Some(515), Some(500), None])
            .prop_map(Ev::Close),
        3 => Just(Ev::Close(Some(401))),
        2 => Just(Ev::Qr),
        1 => Just(Ev::Ended),
        4 => Just(Ev::Wake),
    ]
}

/// A time step in milliseconds: often none or short (flapping), sometimes minutes or hours.
fn step() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        10 => 0u64..20_000,
        4 => 0u64..300_000,
        1 => 0u64..7_200_000,
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        1u64..300,
        0u64..60,
        prop_oneof![Just(None), (10u64..900).prop_map(Some)],
        30u64..1_800,
        60u64..7_200,
        prop::sample::select(vec![(3000.0, 750.0), (2000.0, 500.0), (1500.0, 1000.0)]),
    )
        .prop_map(
            |(disconnect, connect, gateway, half_life, max, (suppress, reuse))| Policy {
                disconnect_grace: Duration::from_secs(disconnect),
                connect_grace: Duration::from_secs(connect),
                gateway_down_grace: gateway.map(Duration::from_secs),
                flap_half_life: Duration::from_secs(half_life),
                flap_suppress: suppress,
                flap_reuse: reuse,
                flap_max_suppress: Duration::from_secs(max),
                ..Policy::default()
            },
        )
}

fn restored() -> impl Strategy<Value = Restored> {
    prop_oneof![
        3 => Just(Restored::default()),
        2 => (
            prop::option::of(prop_oneof![Just(Status::Connected), Just(Status::Disconnected)]),
            prop_oneof![Just(0.0), 0.0f64..100_000.0],
            any::<bool>(),
        )
            .prop_map(|(stable, penalty, flapping)| Restored { stable, penalty, flapping, held: None }),
    ]
}

/// The model's view of a test event.
fn input<'a>(ev: &Ev, obs: &'a Option<Observation>) -> Input<'a> {
    match ev {
        Ev::LinkUp => Input::LinkUp,
        Ev::LinkDown => Input::LinkDown,
        Ev::Wake => Input::Wake,
        _ => Input::Observed(obs.as_ref().expect("an observation event")),
    }
}

/// Drains reports, checking the per-report invariants.
fn drain(d: &mut Debouncer, model: &mut Model, now: Instant) -> Result<(), TestCaseError> {
    while let Some(report) = d.poll_report() {
        model.reported(&report, now).map_err(TestCaseError::fail)?;
    }
    Ok(())
}

/// Moves time to `to`, firing every deadline exactly when due, and checks the flapping bound at
/// each stop.
fn advance(
    d: &mut Debouncer,
    model: &mut Model,
    policy: &Policy,
    now: &mut Instant,
    to: Instant,
) -> Result<(), TestCaseError> {
    let mut fired = 0;
    while let Some(at) = d.next_deadline(policy).filter(|at| *at <= to) {
        let at = at.max(*now);
        *now = at;
        d.on_timeout(at, policy);
        drain(d, model, at)?;
        fired += 1;
        prop_assert!(fired < 1_000, "deadlines never settle");
        check_bound(d, model, policy, at)?;
    }
    *now = to;
    check_bound(d, model, policy, to)
}

fn check_bound(
    d: &Debouncer,
    model: &Model,
    policy: &Policy,
    now: Instant,
) -> Result<(), TestCaseError> {
    if let Some(bound) = model.settled_by(policy) {
        if now >= bound {
            BOUND_CHECKS.fetch_add(1, Ordering::Relaxed);
            prop_assert!(!d.is_flapping(), "still flapping past flap_max_suppress");
            prop_assert_eq!(d.stable(), Some(Status::Connected));
        }
    }
    Ok(())
}

/// How often the flapping bound was actually checked past its deadline, and how often a case
/// went through flapping: the property must exercise what it claims to check.
static BOUND_CHECKS: AtomicU64 = AtomicU64::new(0);
static FLAPPING_CASES: AtomicU64 = AtomicU64::new(0);

fn debounce_case(
    policy: &Policy,
    restored: &Restored,
    events: &[(u64, Ev)],
) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let mut d = Debouncer::new(start, restored.clone());
    let mut model = Model::new(start, restored);
    let mut now = start;
    let mut flapped = false;
    for (ms, ev) in events {
        let to = now + Duration::from_millis(*ms);
        advance(&mut d, &mut model, policy, &mut now, to)?;
        match ev {
            Ev::LinkUp => d.link_up(now, policy),
            Ev::LinkDown => d.link_down(now, policy, "connection refused"),
            Ev::Wake => d.on_timeout(now, policy),
            other => {
                d.observe(now, policy, &other.observation().unwrap());
            }
        }
        model.apply(now, input(ev, &ev.observation()));
        drain(&mut d, &mut model, now)?;
        // Whatever became due at this instant (a zero grace) fires before the bound is checked.
        let at = now;
        advance(&mut d, &mut model, policy, &mut now, at)?;
        flapped |= d.is_flapping();
    }
    // Let every timer run out: the bound must hold at the end too.
    let end = now + policy.flap_max_suppress + policy.connect_grace + Duration::from_secs(7_200);
    advance(&mut d, &mut model, policy, &mut now, end)?;
    FLAPPING_CASES.fetch_add(u64::from(flapped), Ordering::Relaxed);
    Ok(())
}

#[test]
fn the_debouncer_keeps_its_invariants_under_random_events_and_time_steps() {
    let config = config(8_000);
    let cases = u64::from(config.cases);
    let mut runner = TestRunner::new(config);
    let strategy = (
        policy(),
        restored(),
        prop::collection::vec((step(), event()), 1..80),
    );
    if let Err(e) = runner.run(&strategy, |(policy, restored, events)| {
        debounce_case(&policy, &restored, &events)
    }) {
        panic!("{e}");
    }
    let (checks, flapping) = (
        BOUND_CHECKS.load(Ordering::Relaxed),
        FLAPPING_CASES.load(Ordering::Relaxed),
    );
    eprintln!("{cases} cases: flapping bound checked {checks} times, {flapping} cases flapped");
    assert!(
        checks > cases,
        "the flapping bound was checked only {checks} times"
    );
    assert!(flapping > cases / 50, "only {flapping} cases flapped");
}

// ---------------------------------------------------------------------------------------------
// The storm detector against a reference model
// ---------------------------------------------------------------------------------------------

/// The reference model of the mass-outage hold: the rules of `src/storm.rs`'s module doc written
/// the naive way, with no sequence numbers, lazy queues, member index or compaction. The window
/// is a map of drop instants swept on every drop; every storm keeps a map of all its members;
/// every question is answered by scanning. Fractions are whole percentages so the threshold is
/// exact integer arithmetic, independent of the detector's floating point.
mod storm_model {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;
    use wa_status_sidecar::storm::{Event, Saved, StormPolicy, View};

    pub struct MStorm {
        since: Instant,
        linked: usize,
        window: Duration,
        last: String,
        /// Every member, and whether it is down.
        members: BTreeMap<u32, bool>,
        /// Its count of members, frozen when it ended.
        frozen: Option<usize>,
        ended: bool,
        released: bool,
    }

    impl MStorm {
        fn n(&self) -> usize {
            self.frozen.unwrap_or(self.members.len())
        }

        fn down(&self) -> Vec<u32> {
            self.members
                .iter()
                .filter(|(_, down)| **down)
                .map(|(t, _)| *t)
                .collect()
        }

        /// In progress, or ended with its hold still running (its members are its members until
        /// then).
        fn alive(&self) -> bool {
            !(self.ended && self.released)
        }

        fn last(&self) -> &str {
            if self.last.is_empty() {
                "session reconnecting"
            } else {
                &self.last
            }
        }

        fn reason(&self) -> Arc<str> {
            let n = self.n();
            format!(
                "WhatsApp-wide outage: {n} of {} sessions dropped within {}s; last: {}",
                self.linked.max(n),
                self.window.as_secs(),
                self.last()
            )
            .into()
        }
    }

    #[derive(Default)]
    pub struct Model {
        clock: Option<Instant>,
        /// Tenants down after a counted drop, with its instant.
        window: BTreeMap<u32, Instant>,
        last: String,
        storms: Vec<MStorm>,
        pub events: Vec<Event<u32>>,
    }

    pub fn on(policy: &StormPolicy) -> bool {
        policy.fraction > 0.0
    }

    /// `n` drops meet the threshold: `fraction` is `percent / 100` exactly.
    fn meets(policy: &StormPolicy, percent: u32, linked: usize, n: usize) -> bool {
        n >= policy.min_tenants.max(1) && n * 100 >= percent as usize * linked
    }

    impl Model {
        fn tick(&mut self, now: Instant) -> Instant {
            let now = self.clock.map_or(now, |c| c.max(now));
            self.clock = Some(now);
            now
        }

        fn alive(&mut self) -> impl Iterator<Item = &mut MStorm> {
            self.storms.iter_mut().filter(|s| s.alive())
        }

        /// The alive storm in which `t` is down.
        fn holding(&mut self, t: u32) -> Option<&mut MStorm> {
            self.alive().find(|s| s.members.get(&t) == Some(&true))
        }

        fn active(&mut self) -> Option<&mut MStorm> {
            self.alive().find(|s| !s.ended)
        }

        pub fn timeout(&mut self, now: Instant, policy: &StormPolicy) {
            let now = self.tick(now);
            if !on(policy) {
                for s in self.storms.iter().filter(|s| s.alive()) {
                    if !s.released && !s.down().is_empty() {
                        self.events.push(Event::Released {
                            tenants: s.down(),
                            reason: s.reason(),
                        });
                    }
                    if !s.ended {
                        self.events.push(Event::Ended {
                            since: s.since,
                            members: s.n(),
                            still_down: s.down().len(),
                            turned_off: true,
                            held_until: None,
                        });
                    }
                }
                self.storms.clear();
                self.window.clear();
                self.last.clear();
                return;
            }
            for s in self.storms.iter_mut().filter(|s| s.alive()) {
                if !s.released && s.since + policy.hold <= now {
                    s.released = true;
                    if !s.down().is_empty() {
                        self.events.push(Event::Released {
                            tenants: s.down(),
                            reason: s.reason(),
                        });
                    }
                }
            }
        }

        pub fn dropped(
            &mut self,
            now: Instant,
            policy: &StormPolicy,
            percent: u32,
            t: u32,
            linked: usize,
            reason: Option<&str>,
        ) {
            self.timeout(now, policy);
            if !on(policy) {
                return;
            }
            let now = self.tick(now);
            let keep = |last: &mut String| {
                if let Some(r) = reason {
                    *last = r.to_string();
                }
            };
            if let Some(s) = self.holding(t) {
                keep(&mut s.last);
                return;
            }
            // A member of an ended storm whose hold still runs is down (and held) again.
            if let Some(s) = self
                .alive()
                .find(|s| s.ended && !s.released && s.members.contains_key(&t))
            {
                s.members.insert(t, true);
                keep(&mut s.last);
                return;
            }
            if let Some(s) = self.active() {
                s.members.insert(t, true);
                keep(&mut s.last);
                return;
            }
            self.window
                .retain(|_, at| now.saturating_duration_since(*at) <= policy.window);
            if self.window.is_empty() {
                self.last.clear();
            }
            self.window.entry(t).or_insert(now);
            keep(&mut self.last);
            let n = self.window.len();
            if meets(policy, percent, linked, n) {
                let s = MStorm {
                    since: now,
                    linked: linked.max(n),
                    window: policy.window,
                    last: std::mem::take(&mut self.last),
                    members: self.window.keys().map(|t| (*t, true)).collect(),
                    frozen: None,
                    ended: false,
                    released: false,
                };
                self.window.clear();
                self.events.push(Event::Began {
                    since: now,
                    members: n,
                    linked: s.linked,
                    reason: s.reason(),
                });
                self.storms.push(s);
            }
        }

        fn leave_window(&mut self, t: u32) -> bool {
            let left = self.window.remove(&t).is_some();
            if self.window.is_empty() {
                self.last.clear();
            }
            left
        }

        pub fn recovered(&mut self, now: Instant, policy: &StormPolicy, t: u32) {
            self.timeout(now, policy);
            if self.leave_window(t) {
                return;
            }
            if let Some(s) = self.holding(t) {
                s.members.insert(t, false);
                if !s.ended {
                    self.check_end(policy);
                }
            }
        }

        pub fn unlinked(&mut self, t: u32) {
            self.leave_window(t);
        }

        pub fn removed(&mut self, now: Instant, policy: &StormPolicy, t: u32) {
            self.timeout(now, policy);
            if self.leave_window(t) {
                return;
            }
            if let Some(s) = self.alive().find(|s| s.ended && s.members.contains_key(&t)) {
                s.members.remove(&t);
                return;
            }
            if let Some(s) = self.active() {
                if s.members.remove(&t).is_some() {
                    self.check_end(policy);
                }
            }
        }

        fn check_end(&mut self, policy: &StormPolicy) {
            let Some(s) = self.active() else { return };
            let (n, down) = (s.n(), s.down().len());
            if n == 0 || down * 2 < n {
                let held_until = (!s.released && down > 0).then(|| s.since + policy.hold);
                let event = Event::Ended {
                    since: s.since,
                    members: n,
                    still_down: down,
                    turned_off: false,
                    held_until,
                };
                s.frozen = Some(n);
                s.ended = true;
                self.events.push(event);
            }
        }

        pub fn held_until(&self, policy: &StormPolicy, t: u32) -> Option<Instant> {
            self.storms
                .iter()
                .filter(|s| s.alive() && !s.released)
                .find(|s| s.members.get(&t) == Some(&true))
                .map(|s| s.since + policy.hold)
        }

        pub fn next_deadline(&self, policy: &StormPolicy) -> Option<Instant> {
            let alive = self.storms.iter().filter(|s| s.alive());
            if !on(policy) {
                return alive.map(|s| s.since).min();
            }
            alive
                .filter(|s| !s.released)
                .map(|s| s.since + policy.hold)
                .min()
        }

        pub fn view(&self, policy: &StormPolicy) -> Option<View<'_>> {
            let s = self.storms.iter().rev().find(|s| s.alive())?;
            Some(View {
                active: !s.ended,
                since: s.since,
                hold_until: s.since + policy.hold,
                released: s.released,
                members: s.n(),
                still_down: s.down().len(),
                linked_at_start: s.linked,
                last_reason: s.last(),
                held: self
                    .storms
                    .iter()
                    .filter(|s| s.alive() && !s.released)
                    .map(|s| s.down().len())
                    .sum(),
            })
        }

        pub fn saved(&self) -> Vec<Saved<u32>> {
            self.storms
                .iter()
                .filter(|s| s.alive() && !s.released && !s.down().is_empty())
                .map(|s| Saved {
                    since: s.since,
                    linked: s.linked,
                    members: s.n(),
                    window: s.window,
                    last_reason: s.last.clone(),
                    held: s.down(),
                })
                .collect()
        }

        pub fn resume(now: Instant, saved: Vec<Saved<u32>>) -> Self {
            let mut model = Model {
                clock: Some(now),
                ..Model::default()
            };
            for s in saved {
                let n = s.members.max(s.held.len());
                model.storms.push(MStorm {
                    since: s.since.min(now),
                    linked: s.linked.max(n),
                    window: s.window,
                    last: s.last_reason,
                    members: s.held.into_iter().map(|t| (t, true)).collect(),
                    frozen: Some(n),
                    ended: true,
                    released: false,
                });
            }
            model
        }
    }
}

#[derive(Debug, Clone)]
enum StormOp {
    Drop(u32, Option<&'static str>),
    Up(u32),
    Unlink(u32),
    Remove(u32),
    Linked(usize),
    /// A new policy: (whole percent, min_tenants, window s, hold s).
    Reload((u32, usize, u64, u64)),
    Wake,
    Restart,
}

const STORM_TENANTS: u32 = 8;

fn storm_policy() -> impl Strategy<Value = (u32, usize, u64, u64)> {
    (
        prop::sample::select(vec![0u32, 10, 20, 25, 30, 50, 100]),
        prop_oneof![1 => 0usize..3, 2 => 3usize..5],
        // Whole seconds below two minutes: the reason reads "Ns" for all of them.
        1u64..120,
        prop_oneof![1 => Just(0u64), 5 => 30u64..600],
    )
}

fn to_policy((percent, min_tenants, window, hold): (u32, usize, u64, u64)) -> StormPolicy {
    StormPolicy {
        fraction: f64::from(percent) / 100.0,
        min_tenants,
        window: Duration::from_secs(window),
        hold: Duration::from_secs(hold),
    }
}

fn storm_op() -> impl Strategy<Value = StormOp> {
    let tenant = 0..STORM_TENANTS;
    let reason = prop::sample::select(vec![
        Some("Connection Closed (code 428)"),
        Some("Stream Errored (restart required) (code 515)"),
        Some("Connection Failure (code 503)"),
        None,
    ]);
    prop_oneof![
        30 => (tenant.clone(), reason).prop_map(|(t, r)| StormOp::Drop(t, r)),
        30 => tenant.clone().prop_map(StormOp::Up),
        3 => tenant.clone().prop_map(StormOp::Unlink),
        3 => tenant.prop_map(StormOp::Remove),
        4 => (0usize..14).prop_map(StormOp::Linked),
        2 => storm_policy().prop_map(StormOp::Reload),
        3 => Just(StormOp::Wake),
        2 => Just(StormOp::Restart),
    ]
}

/// A time step in milliseconds: often within a window, sometimes past a hold.
fn storm_step() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        10 => 0u64..20_000,
        3 => 0u64..200_000,
        1 => 0u64..1_500_000,
    ]
}

static STORMS_BEGUN: AtomicU64 = AtomicU64::new(0);
static STORMS_RELEASED: AtomicU64 = AtomicU64::new(0);
static ENDS_STILL_HOLDING: AtomicU64 = AtomicU64::new(0);
static RESTARTS_HOLDING: AtomicU64 = AtomicU64::new(0);

fn storm_case(
    policy: (u32, usize, u64, u64),
    punctual: bool,
    ops: &[(u64, StormOp)],
) -> Result<(), TestCaseError> {
    let (mut percent, mut policy) = (policy.0, to_policy(policy));
    let mut now = Instant::now();
    let mut d: Detector<u32> = Detector::new();
    let mut model = storm_model::Model::default();
    let mut linked = 10usize;
    let compare = |d: &mut Detector<u32>,
                   model: &mut storm_model::Model,
                   policy: &StormPolicy,
                   what: &str|
     -> Result<(), TestCaseError> {
        let got: Vec<Event<u32>> = std::iter::from_fn(|| d.poll_event()).collect();
        let want = std::mem::take(&mut model.events);
        for event in &got {
            match event {
                Event::Began { .. } => STORMS_BEGUN.fetch_add(1, Ordering::Relaxed),
                Event::Released { .. } => STORMS_RELEASED.fetch_add(1, Ordering::Relaxed),
                Event::Ended {
                    held_until: Some(_),
                    ..
                } => ENDS_STILL_HOLDING.fetch_add(1, Ordering::Relaxed),
                Event::Ended { .. } => 0,
            };
        }
        prop_assert_eq!(&got, &want, "events after {}", what);
        prop_assert_eq!(d.view(policy), model.view(policy), "view after {}", what);
        prop_assert_eq!(
            d.next_deadline(policy),
            model.next_deadline(policy),
            "deadline after {}",
            what
        );
        for t in 0..STORM_TENANTS {
            prop_assert_eq!(
                d.held_until(policy, &t),
                model.held_until(policy, t),
                "held_until({}) after {}",
                t,
                what
            );
        }
        Ok(())
    };
    for (step, op) in ops {
        let target = now + Duration::from_millis(*step);
        if punctual {
            // The timer wheel: on_timeout exactly at each deadline on the way.
            while let Some(due) = d.next_deadline(&policy) {
                if due > target {
                    break;
                }
                now = now.max(due);
                d.on_timeout(now, &policy);
                model.timeout(now, &policy);
                compare(&mut d, &mut model, &policy, "a deadline")?;
            }
        }
        now = target;
        match op {
            StormOp::Drop(t, reason) => {
                d.dropped(now, &policy, t, linked, *reason);
                model.dropped(now, &policy, percent, *t, linked, *reason);
            }
            StormOp::Up(t) => {
                d.recovered(now, &policy, t);
                model.recovered(now, &policy, *t);
            }
            StormOp::Unlink(t) => {
                d.unlinked(t);
                model.unlinked(*t);
            }
            StormOp::Remove(t) => {
                d.removed(now, &policy, t);
                model.removed(now, &policy, *t);
            }
            StormOp::Linked(n) => linked = *n,
            StormOp::Reload(new) => {
                percent = new.0;
                policy = to_policy(*new);
                d.on_timeout(now, &policy);
                model.timeout(now, &policy);
            }
            StormOp::Wake => {
                d.on_timeout(now, &policy);
                model.timeout(now, &policy);
            }
            StormOp::Restart => {
                // Whatever was decided before is drained first, as the registry would have.
                compare(&mut d, &mut model, &policy, "before a restart")?;
                let saved = d.saved();
                prop_assert_eq!(&saved, &model.saved(), "saved holds");
                if !saved.is_empty() {
                    RESTARTS_HOLDING.fetch_add(1, Ordering::Relaxed);
                }
                d = Detector::resume(now, saved.clone(), Duration::ZERO);
                model = storm_model::Model::resume(now, saved);
            }
        }
        compare(&mut d, &mut model, &policy, &format!("{op:?}"))?;
    }
    // Every hold ends.
    let end = now + Duration::from_secs(3600);
    d.on_timeout(end, &policy);
    model.timeout(end, &policy);
    compare(&mut d, &mut model, &policy, "the end")?;
    prop_assert_eq!(model.held_until(&policy, 0), None);
    Ok(())
}

#[test]
fn the_storm_detector_decides_what_the_reference_model_decides() {
    let config = config(3_000);
    let cases = u64::from(config.cases);
    let mut runner = TestRunner::new(config);
    let strategy = (
        storm_policy(),
        any::<bool>(),
        prop::collection::vec((storm_step(), storm_op()), 1..120),
    );
    if let Err(e) = runner.run(&strategy, |(policy, punctual, ops)| {
        storm_case(policy, punctual, &ops)
    }) {
        panic!("{e}");
    }
    let counts = [
        ("storms begun", STORMS_BEGUN.load(Ordering::Relaxed)),
        ("releases", STORMS_RELEASED.load(Ordering::Relaxed)),
        (
            "ends still holding",
            ENDS_STILL_HOLDING.load(Ordering::Relaxed),
        ),
        ("restarts holding", RESTARTS_HOLDING.load(Ordering::Relaxed)),
    ];
    eprintln!("{cases} cases: {counts:?}");
    // The generator must actually reach every rule, not only the empty case.
    for (what, count) in counts {
        assert!(count > cases / 40, "only {count} {what}");
    }
}
