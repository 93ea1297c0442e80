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
            .prop_map(|(stable, penalty, flapping)| Restored { stable, penalty, flapping }),
    ]
}

/// What the test knows about a sequence, independently of the debouncer.
struct Model {
    link_down: bool,
    /// An observation arrived since the link last came up.
    observed_on_link: bool,
    last_up: Option<bool>,
    /// Start of the current Up run, while the link stayed up throughout.
    up_since: Option<Instant>,
    /// The last flap; a restored penalty counts as a flap at the start.
    last_flap: Option<Instant>,
    /// The last status reported, starting from the restored (acknowledged) one.
    last_report: Option<Status>,
}

impl Model {
    fn apply(&mut self, now: Instant, ev: &Ev) {
        match ev {
            Ev::LinkUp => {
                self.link_down = false;
                self.observed_on_link = false;
            }
            Ev::LinkDown => {
                self.link_down = true;
                self.up_since = None;
            }
            Ev::Wake => {}
            Ev::Open => {
                if self.last_up != Some(true) && !self.link_down {
                    self.up_since = Some(now);
                }
                self.last_up = Some(true);
                self.observed_on_link |= !self.link_down;
            }
            _ => {
                if !self.link_down && self.observed_on_link && self.last_up == Some(true) {
                    self.last_flap = Some(now);
                }
                self.last_up = Some(false);
                self.up_since = None;
                self.observed_on_link |= !self.link_down;
            }
        }
    }
}

/// Drains reports, checking the per-report invariants.
fn drain(d: &mut Debouncer, model: &mut Model, now: Instant) -> Result<(), TestCaseError> {
    while let Some(report) = d.poll_report() {
        prop_assert_ne!(
            model.last_report,
            Some(report.status),
            "a report equal to the last acknowledged/reported state"
        );
        if report.status == Status::Connected {
            prop_assert_eq!(
                model.last_up,
                Some(true),
                "connected while the last observation is Down"
            );
            prop_assert!(report.reason.is_none());
        } else {
            prop_assert!(report.reason.as_deref().is_some_and(|r| !r.is_empty()));
        }
        prop_assert!(
            report.since <= now,
            "an episode cannot start after its decision"
        );
        model.last_report = Some(report.status);
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
    if let Some(up_since) = model.up_since {
        let mut bound = up_since + policy.connect_grace;
        if let Some(flap) = model.last_flap {
            bound = bound.max(flap + policy.flap_max_suppress);
        }
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
    let mut model = Model {
        link_down: false,
        observed_on_link: false,
        last_up: None,
        up_since: None,
        last_flap: (restored.penalty > 0.0 || restored.flapping).then_some(start),
        last_report: restored.stable,
    };
    let mut now = start;
    let mut flapped = false;
    for (ms, ev) in events {
        let to = now + Duration::from_millis(*ms);
        advance(&mut d, &mut model, policy, &mut now, to)?;
        match ev {
            Ev::LinkUp => d.link_up(now, policy),
            Ev::LinkDown => d.link_down(now, policy, "connection refused"),
            Ev::Wake => d.on_timeout(now, policy),
            other => d.observe(now, policy, &other.observation().unwrap()),
        }
        model.apply(now, ev);
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
