//! Gateway frames in, [`Observation`]s out (SPEC sections 3 and 4).
//!
//! [`parse`] turns one JSON text frame (or a `gateway.state_url` body) into a [`Frame`]; it
//! auto-detects four shapes:
//!
//! - Baileys `connection.update`, wrapped `{"event":"connection.update","data":{...}}` or bare
//!   `{"connection":"close",...}`. These are partial, so they come out as [`Update::Baileys`] and a
//!   per-session [`SessionView`] merges them into observations.
//! - Native `{"tenant_id":"b1","status":"connected"|"disconnected","reason":...}`.
//! - WAHA `{"event":"session.status","session":"b1","payload":{"status":"WORKING"}}`.
//! - Evolution API `{"event":"connection.update","instance":"b1","data":{"state":"open",...}}`.
//!
//! The last three state the whole session state at once and come out as [`Update::State`].
//!
//! This is the hot path (about 1,000 frames/s across 10,000 links), so a frame is deserialized into
//! borrowed structs that name only the keys read here: no `serde_json::Value` tree is built, every
//! other key is skipped, and a frame allocates only the tenant id and message it keeps. Nesting is
//! bounded by those structs; anything deeper is skipped by serde_json's iterative skipper, so no
//! input can overflow the stack, and nothing here panics on any input.
//!
//! Decisions on ambiguous input:
//! - A JSON `null` is the same as a missing key everywhere.
//! - Enumerated values (`open`, `WORKING`, event names, ...) match ASCII case-insensitively;
//!   `connection.update` may also be spelled `connection_update`.
//! - Close codes are lenient: an integer in `0..=65535` or a decimal string is a code; anything
//!   else (negative, too large, fractional, wrong type) is `None` and never fails the frame,
//!   because the message and the fact of the close still matter.
//! - `lastDisconnect` never fails a frame: any part missing, `null` or of an odd type just leaves
//!   the code or message `None`; a string `lastDisconnect` or `error` is taken as the message.
//! - Every other key that is read must have the right JSON type ([`Ignored::WrongType`]), and an
//!   unknown value of an enumerated key is [`Ignored::UnknownShape`], so a gateway speaking a
//!   newer dialect is counted instead of silently changing nothing. A duplicated key that is read
//!   is [`Ignored::WrongType`] too.
//! - The tenant is read from the top-level `tenant_id`, `tenant`, `session` or `instance` (first
//!   non-empty string wins); for `connection.update` frames without one, from the same keys inside
//!   `data` (Evolution repeats `instance` there). Empty strings are no tenant.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What a gateway says about one WhatsApp session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The session is linked and connected to WhatsApp.
    Up,
    /// The session is not connected.
    Down(DownCause),
}

/// Why a session is down, as far as the gateway said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownCause {
    pub kind: DownKind,
    /// Close/status code when the gateway gave one (Boom `output.statusCode`, Evolution `statusReason`).
    pub code: Option<u16>,
    /// Human text from the gateway (Boom `output.payload.message`, native `reason`, ...).
    pub message: Option<String>,
}

/// The kind of a Down observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownKind {
    /// The session's socket closed (Baileys/Evolution `close`). Terminal or transient is decided by
    /// the debounce policy from the code and message, not by the parser.
    Closed,
    /// The session is (re)connecting: Baileys `connecting`, WAHA `STARTING`, Evolution `connecting`.
    Connecting,
    /// A QR code is shown: the session is not linked (Baileys `qr`, WAHA `SCAN_QR_CODE`). Terminal.
    QrShown,
    /// The gateway says the session is over: WAHA `FAILED`/`STOPPED`, Evolution `refused`,
    /// native `disconnected`. Terminal.
    Ended,
}

/// One frame, parsed but not merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The tenant the frame names, if any. Shared-mode links route on it; per-tenant links
    /// already know their tenant.
    pub(crate) tenant: Option<String>,
    /// What the frame says.
    pub update: Update,
}

/// What a frame says about its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A Baileys `connection.update`: partial, merge it into the session's [`SessionView`].
    Baileys(BaileysUpdate),
    /// A shape that states the whole session state at once (native, WAHA, Evolution).
    State(Observation),
}

/// The parts of one Baileys `connection.update` that concern the link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaileysUpdate {
    /// `connection`: `open` | `connecting` | `close`.
    pub(crate) connection: Option<Connection>,
    /// From `lastDisconnect.error`; `None` when the frame had no (or a `null`) `lastDisconnect`.
    pub(crate) last_disconnect: Option<CloseInfo>,
    /// A non-empty `qr` string was present: the session waits for a QR scan.
    pub qr: bool,
}

/// Baileys' `connection` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connection {
    Open,
    Connecting,
    Close,
}

/// What `lastDisconnect` said about a close.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CloseInfo {
    /// Boom `output.statusCode` (or a plain error's `statusCode`/`status`).
    pub(crate) code: Option<u16>,
    /// Boom `output.payload.message` (or a plain error's `message`, or the error string itself).
    pub(crate) message: Option<String>,
}

/// Why a frame was ignored; [`Ignored::as_str`] gives a stable snake_case metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A binary WebSocket message. [`parse`] takes text and never returns this; the link uses it
    /// to count binary frames under the same metric.
    Binary,
    /// Not valid JSON (syntax, truncation, trailing data, lone surrogate, number overflow).
    NotJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// An `event` this parser does not handle (e.g. `messages.upsert`).
    UnknownEvent,
    /// An object of no recognised shape, or an unknown value of an enumerated key.
    UnknownShape,
    /// A recognised key holds the wrong JSON type (or is duplicated).
    WrongType,
    /// A recognised event that carries no state (e.g. `session.status` without `payload.status`).
    NoState,
}

impl Ignored {
    /// Every kind, so metrics can register all labels up front.
    pub(crate) const ALL: [Ignored; 7] = [
        Ignored::Binary,
        Ignored::NotJson,
        Ignored::NotAnObject,
        Ignored::UnknownEvent,
        Ignored::UnknownShape,
        Ignored::WrongType,
        Ignored::NoState,
    ];

    /// A stable snake_case label for metrics and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Ignored::Binary => "binary",
            Ignored::NotJson => "not_json",
            Ignored::NotAnObject => "not_an_object",
            Ignored::UnknownEvent => "unknown_event",
            Ignored::UnknownShape => "unknown_shape",
            Ignored::WrongType => "wrong_type",
            Ignored::NoState => "no_state",
        }
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses one text frame. It never panics; an unusable frame is an `Err` naming why.
pub fn parse(text: &str) -> Result<Frame, Ignored> {
    let root: Json<'_, Root<'_>> = serde_json::from_str(text).map_err(|e| match e.classify() {
        // The only data errors our lenient types can raise are duplicate keys.
        serde_json::error::Category::Data => Ignored::WrongType,
        _ => Ignored::NotJson,
    })?;
    let Json::Object(root) = root else {
        return Err(Ignored::NotAnObject);
    };
    match string(&root.event)? {
        Some(event) if is_connection_update(event) => connection_update(&root),
        Some(event) if event.eq_ignore_ascii_case("session.status") => waha(&root),
        Some(_) => Err(Ignored::UnknownEvent),
        None if has_baileys_keys(&root) => Ok(Frame {
            tenant: tenant(&root)?,
            update: Update::Baileys(baileys(&root)?),
        }),
        None if root.status.is_some() => native(&root),
        None => Err(Ignored::UnknownShape),
    }
}

/// The merged view of one session's Baileys updates (one per tenant; reset when the link
/// reconnects, since a new gateway connection starts a new story).
#[derive(Debug, Default, Clone)]
pub struct SessionView {
    /// The last `connection` value seen.
    connection: Option<Connection>,
    /// The last `lastDisconnect` seen since the link was last open.
    last_disconnect: Option<CloseInfo>,
    /// A QR code was shown since the link was last open.
    qr: bool,
}

impl SessionView {
    /// Merges the update; returns the observation it implies, or `None` when it says nothing about
    /// the link (e.g. only `isOnline` / `receivedPendingNotifications` / `isNewLogin`).
    pub fn apply(&mut self, update: Update) -> Option<Observation> {
        let update = match update {
            Update::State(observation) => {
                // A whole-state Up (e.g. a native `state_url` snapshot) means the link is open, so
                // a later bare Baileys close must not reuse a stale close reason.
                if observation == Observation::Up {
                    self.opened();
                }
                return Some(observation);
            }
            Update::Baileys(update) => update,
        };
        if let Some(info) = update.last_disconnect {
            self.last_disconnect = Some(info);
        }
        if update.connection.is_some() {
            self.connection = update.connection;
        }
        if update.qr {
            // A QR wins even over `open` in the same frame: a snapshot holding both means the
            // session is not linked (SPEC section 3).
            self.qr = true;
            return Some(down(DownKind::QrShown, None, None));
        }
        match update.connection? {
            Connection::Open => {
                self.opened();
                Some(Observation::Up)
            }
            Connection::Connecting => Some(down(DownKind::Connecting, None, None)),
            Connection::Close => {
                // Baileys' event buffer may split a close from its reason; use the last one merged.
                let info = self.last_disconnect.clone().unwrap_or_default();
                Some(down(DownKind::Closed, info.code, info.message))
            }
        }
    }

    /// Forgets everything merged so far.
    pub(crate) fn reset(&mut self) {
        *self = SessionView::default();
    }

    /// The last `connection` value merged.
    #[cfg(test)]
    pub(crate) fn connection(&self) -> Option<Connection> {
        self.connection
    }

    /// The `lastDisconnect` a bare close would report now.
    #[cfg(test)]
    pub(crate) fn last_disconnect(&self) -> Option<&CloseInfo> {
        self.last_disconnect.as_ref()
    }

    /// Whether a QR code was shown since the session was last open.
    #[cfg(test)]
    pub(crate) fn qr_shown(&self) -> bool {
        self.qr
    }

    fn opened(&mut self) {
        self.connection = Some(Connection::Open);
        self.last_disconnect = None;
        self.qr = false;
    }
}

fn down(kind: DownKind, code: Option<u16>, message: Option<String>) -> Observation {
    Observation::Down(DownCause {
        kind,
        code,
        message,
    })
}

fn is_connection_update(event: &str) -> bool {
    event.eq_ignore_ascii_case("connection.update")
        || event.eq_ignore_ascii_case("connection_update")
}

/// A `connection.update` event: Evolution when its data has `state`, Baileys otherwise.
fn connection_update(root: &Root<'_>) -> Result<Frame, Ignored> {
    let mut tenant = tenant(root)?;
    let update = match &root.data {
        Some(Json::Object(data)) => {
            if tenant.is_none() {
                tenant = self::tenant(data)?;
            }
            state_update(data)?
        }
        Some(_) => return Err(Ignored::WrongType),
        // Some gateways flatten the update into the event object itself.
        None => state_update(root)?,
    };
    Ok(Frame { tenant, update })
}

fn state_update<D>(fields: &Fields<'_, D>) -> Result<Update, Ignored> {
    if fields.state.is_some() {
        evolution(fields)
    } else if has_baileys_keys(fields) {
        baileys(fields).map(Update::Baileys)
    } else {
        Err(Ignored::NoState)
    }
}

fn has_baileys_keys<D>(f: &Fields<'_, D>) -> bool {
    f.connection.is_some()
        || f.last_disconnect.is_some()
        || f.qr.is_some()
        || f.is_online.is_some()
        || f.received_pending_notifications.is_some()
        || f.is_new_login.is_some()
}

fn baileys<D>(f: &Fields<'_, D>) -> Result<BaileysUpdate, Ignored> {
    let connection = match string(&f.connection)? {
        None => None,
        Some(s) if s.eq_ignore_ascii_case("open") => Some(Connection::Open),
        Some(s) if s.eq_ignore_ascii_case("connecting") => Some(Connection::Connecting),
        Some(s) if s.eq_ignore_ascii_case("close") => Some(Connection::Close),
        Some(_) => return Err(Ignored::UnknownShape),
    };
    let qr = match string(&f.qr)? {
        None => false,
        Some(qr) => !qr.is_empty(),
    };
    Ok(BaileysUpdate {
        connection,
        last_disconnect: f.last_disconnect.as_ref().map(close_info),
        qr,
    })
}

/// Reads `lastDisconnect`, which never fails: its shape depends on the gateway's serializer.
fn close_info(last_disconnect: &Json<'_, LastDisconnect<'_>>) -> CloseInfo {
    match last_disconnect {
        Json::Object(LastDisconnect {
            error: Some(Json::Object(error)),
        }) => {
            let output = error.output.as_ref().and_then(Json::object);
            let payload = output
                .and_then(|o| o.payload.as_ref())
                .and_then(Json::object);
            CloseInfo {
                code: output
                    .and_then(|o| code(&o.status_code))
                    .or_else(|| payload.and_then(|p| code(&p.status_code)))
                    .or_else(|| code(&error.status_code))
                    .or_else(|| code(&error.status)),
                message: payload
                    .and_then(|p| message(&p.message))
                    .or_else(|| message(&error.message)),
            }
        }
        Json::Object(LastDisconnect {
            error: Some(Json::Str(text)),
        })
        | Json::Str(text) => CloseInfo {
            code: None,
            message: non_empty(text),
        },
        _ => CloseInfo::default(),
    }
}

fn evolution<D>(f: &Fields<'_, D>) -> Result<Update, Ignored> {
    let Some(state) = string(&f.state)? else {
        return Err(Ignored::NoState);
    };
    evolution_state(state, code(&f.status_reason))
}

/// An Evolution API connection state, with its `statusReason` code if any.
fn evolution_state(state: &str, status_reason: Option<u16>) -> Result<Update, Ignored> {
    let observation = if state.eq_ignore_ascii_case("open") {
        Observation::Up
    } else if state.eq_ignore_ascii_case("connecting") {
        down(DownKind::Connecting, None, None)
    } else if state.eq_ignore_ascii_case("close") {
        down(DownKind::Closed, status_reason, None)
    } else if state.eq_ignore_ascii_case("refused") {
        down(
            DownKind::Ended,
            status_reason,
            Some("connection refused".to_owned()),
        )
    } else {
        return Err(Ignored::UnknownShape);
    };
    Ok(Update::State(observation))
}

fn waha(root: &Root<'_>) -> Result<Frame, Ignored> {
    let payload = match &root.payload {
        None => return Err(Ignored::NoState),
        Some(Json::Object(payload)) => payload,
        Some(_) => return Err(Ignored::WrongType),
    };
    let Some(status) = string(&payload.status)? else {
        return Err(Ignored::NoState);
    };
    let observation = waha_status(status)?;
    Ok(Frame {
        tenant: tenant(root)?,
        update: Update::State(observation),
    })
}

/// A WAHA session status (`session.status` events, `GET /api/sessions/{session}` bodies).
fn waha_status(status: &str) -> Result<Observation, Ignored> {
    let ended = |status: &str| {
        down(
            DownKind::Ended,
            None,
            Some(format!("WAHA session status {status}")),
        )
    };
    Ok(if status.eq_ignore_ascii_case("WORKING") {
        Observation::Up
    } else if status.eq_ignore_ascii_case("STARTING") {
        down(DownKind::Connecting, None, None)
    } else if status.eq_ignore_ascii_case("SCAN_QR_CODE") {
        down(DownKind::QrShown, None, None)
    } else if status.eq_ignore_ascii_case("FAILED") {
        ended("FAILED")
    } else if status.eq_ignore_ascii_case("STOPPED") {
        ended("STOPPED")
    } else {
        return Err(Ignored::UnknownShape);
    })
}

/// Parses the body of a `gateway.state_url` answer (SPEC 3 rev 12): any frame shape [`parse`]
/// knows (the native body, a Baileys snapshot), WAHA's `GET /api/sessions/{session}`
/// (`{"name": ..., "status": "WORKING", ...}`) or Evolution's
/// `GET /instance/connectionState/{instance}` (`{"instance": {"instanceName": ..., "state": "open"}}`).
pub(crate) fn parse_state(text: &str) -> Result<Frame, Ignored> {
    let first = match parse(text) {
        Ok(frame) => return Ok(frame),
        Err(e) => e,
    };
    let Ok(Json::Object(body)) = serde_json::from_str::<Json<'_, StateBody<'_>>>(text) else {
        return Err(first);
    };
    if let Some(Json::Object(instance)) = &body.instance {
        if let Ok(Some(state)) = string(&instance.state) {
            let update = evolution_state(state, None)?;
            let tenant = string(&instance.instance_name)?.and_then(tenant_text);
            return Ok(Frame { tenant, update });
        }
    }
    if let Ok(Some(status)) = string(&body.status) {
        if let Ok(observation) = waha_status(status) {
            let tenant = string(&body.name)?.and_then(tenant_text);
            return Ok(Frame {
                tenant,
                update: Update::State(observation),
            });
        }
    }
    Err(first)
}

/// The keys of a WAHA or Evolution state body that [`parse`] does not read.
#[derive(serde::Deserialize)]
struct StateBody<'a> {
    #[serde(borrow)]
    status: Option<Scalar<'a>>,
    #[serde(borrow)]
    name: Option<Scalar<'a>>,
    #[serde(borrow)]
    instance: Option<Json<'a, EvolutionInstance<'a>>>,
}

#[derive(serde::Deserialize)]
struct EvolutionInstance<'a> {
    #[serde(borrow, rename = "instanceName")]
    instance_name: Option<Scalar<'a>>,
    #[serde(borrow)]
    state: Option<Scalar<'a>>,
}

fn native(root: &Root<'_>) -> Result<Frame, Ignored> {
    let Some(status) = string(&root.status)? else {
        return Err(Ignored::NoState);
    };
    let reason = match string(&root.reason)? {
        None => None,
        Some(reason) => non_empty(reason),
    };
    let observation = if status.eq_ignore_ascii_case("connected") {
        Observation::Up
    } else if status.eq_ignore_ascii_case("disconnected") {
        down(DownKind::Ended, None, reason)
    } else {
        return Err(Ignored::UnknownShape);
    };
    Ok(Frame {
        tenant: tenant(root)?,
        update: Update::State(observation),
    })
}

fn tenant<D>(f: &Fields<'_, D>) -> Result<Option<String>, Ignored> {
    for key in [&f.tenant_id, &f.tenant, &f.session, &f.instance] {
        if let Some(tenant) = string(key)?.and_then(tenant_text) {
            return Ok(Some(tenant));
        }
    }
    Ok(None)
}

/// The tenant a frame names, kept only as long as a tenant id can be (128 bytes) plus one
/// character, so a longer name still differs from every configured id but a hostile gateway
/// cannot make us keep a megabyte of it. None when empty.
fn tenant_text(name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let end = name
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|end| *end <= MAX_TENANT_BYTES + 4)
        .last()
        .unwrap_or(0);
    Some(name[..end].to_owned())
}

/// The longest tenant id (SPEC 3 rev 12).
const MAX_TENANT_BYTES: usize = 128;

/// The longest text kept from a frame (SPEC 3 rev 12): a reason or message longer than this is
/// cut, so whatever a gateway sends, a tenant's memory stays bounded.
pub(crate) const MAX_TEXT_CHARS: usize = 256;

/// The string value of a key: missing or `null` is `Ok(None)`, another type is `WrongType`.
fn string<'r>(value: &'r Option<Scalar<'_>>) -> Result<Option<&'r str>, Ignored> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Str(s)) => Ok(Some(s)),
        Some(_) => Err(Ignored::WrongType),
    }
}

/// A lenient status code: an integer or decimal string in `u16` range, else `None`.
fn code(value: &Option<Scalar<'_>>) -> Option<u16> {
    match value {
        Some(Json::Number(code)) => *code,
        Some(Json::Str(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A lenient message: a non-empty string, else `None`.
fn message(value: &Option<Scalar<'_>>) -> Option<String> {
    match value {
        Some(Json::Str(s)) => non_empty(s),
        _ => None,
    }
}

/// A non-empty text, cut at [`MAX_TEXT_CHARS`] characters.
fn non_empty(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    Some(match s.char_indices().nth(MAX_TEXT_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    })
}

/// A whole frame: the top level, whose `data` has the same keys one level down.
type Root<'a> = Fields<'a, Fields<'a, IgnoredAny>>;

/// A JSON value whose contents we do not look into, only its type and scalar value.
type Scalar<'a> = Json<'a, IgnoredAny>;

/// Every key read at the top level of a frame or in its `data`, across all shapes. Keeping one
/// struct for both levels lets bare and wrapped Baileys frames share one code path. Each value is
/// a [`Json`] so a wrong type never fails deserialization; the code decides what it means.
#[derive(serde::Deserialize)]
struct Fields<'a, D> {
    #[serde(borrow)]
    event: Option<Scalar<'a>>,
    #[serde(borrow)]
    data: Option<Json<'a, D>>,
    #[serde(borrow)]
    payload: Option<Json<'a, WahaPayload<'a>>>,
    #[serde(borrow)]
    tenant_id: Option<Scalar<'a>>,
    #[serde(borrow)]
    tenant: Option<Scalar<'a>>,
    #[serde(borrow)]
    session: Option<Scalar<'a>>,
    #[serde(borrow)]
    instance: Option<Scalar<'a>>,
    /// Native shape.
    #[serde(borrow)]
    status: Option<Scalar<'a>>,
    #[serde(borrow)]
    reason: Option<Scalar<'a>>,
    /// Baileys keys.
    #[serde(borrow)]
    connection: Option<Scalar<'a>>,
    #[serde(borrow, rename = "lastDisconnect")]
    last_disconnect: Option<Json<'a, LastDisconnect<'a>>>,
    #[serde(borrow)]
    qr: Option<Scalar<'a>>,
    /// Only the presence of these matters: they mark a Baileys update that says nothing of the link.
    #[serde(rename = "isOnline")]
    is_online: Option<IgnoredAny>,
    #[serde(rename = "receivedPendingNotifications")]
    received_pending_notifications: Option<IgnoredAny>,
    #[serde(rename = "isNewLogin")]
    is_new_login: Option<IgnoredAny>,
    /// Evolution keys.
    #[serde(borrow)]
    state: Option<Scalar<'a>>,
    #[serde(borrow, rename = "statusReason")]
    status_reason: Option<Scalar<'a>>,
}

#[derive(serde::Deserialize)]
struct WahaPayload<'a> {
    #[serde(borrow)]
    status: Option<Scalar<'a>>,
}

#[derive(serde::Deserialize)]
struct LastDisconnect<'a> {
    #[serde(borrow)]
    error: Option<Json<'a, BoomError<'a>>>,
}

/// `JSON.stringify` of a Boom error, or a plain `{statusCode|status, message}` object.
#[derive(serde::Deserialize)]
struct BoomError<'a> {
    #[serde(borrow)]
    output: Option<Json<'a, BoomOutput<'a>>>,
    #[serde(borrow, rename = "statusCode")]
    status_code: Option<Scalar<'a>>,
    #[serde(borrow)]
    status: Option<Scalar<'a>>,
    #[serde(borrow)]
    message: Option<Scalar<'a>>,
}

#[derive(serde::Deserialize)]
struct BoomOutput<'a> {
    #[serde(borrow, rename = "statusCode")]
    status_code: Option<Scalar<'a>>,
    #[serde(borrow)]
    payload: Option<Json<'a, BoomPayload<'a>>>,
}

#[derive(serde::Deserialize)]
struct BoomPayload<'a> {
    #[serde(borrow, rename = "statusCode")]
    status_code: Option<Scalar<'a>>,
    #[serde(borrow)]
    message: Option<Scalar<'a>>,
}

/// Any JSON value, classified by type. Deserializing it succeeds for every valid JSON value, so a
/// key with an unexpected type becomes our decision rather than a serde error; objects go into `T`,
/// arrays are skipped, and strings borrow from the frame unless they hold escapes.
enum Json<'a, T> {
    Object(T),
    Str(Cow<'a, str>),
    /// An integer that fits a `u16`, or `None` for any other number.
    Number(Option<u16>),
    Null,
    /// A boolean or an array.
    Other,
}

impl<T> Json<'_, T> {
    fn object(&self) -> Option<&T> {
        match self {
            Json::Object(object) => Some(object),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for Json<'a, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor(PhantomData))
    }
}

struct JsonVisitor<'a, T>(PhantomData<(Cow<'a, str>, T)>);

impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for JsonVisitor<'a, T> {
    type Value = Json<'a, T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Json::Other)
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(u16::try_from(n).ok()))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(u16::try_from(n).ok()))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Json::Number(None))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // serde_json skips ignored values iteratively, so even a deeply nested array is safe.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Json::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Json::Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/baileys-connection-update.jsonl"
    ));

    fn closed(code: Option<u16>, message: Option<&str>) -> Observation {
        down(DownKind::Closed, code, message.map(str::to_owned))
    }

    fn kind(kind: DownKind) -> Observation {
        down(kind, None, None)
    }

    /// Parses a frame that must parse and applies it to `view`.
    fn observe(view: &mut SessionView, text: &str) -> Option<Observation> {
        let frame = parse(text).unwrap_or_else(|e| panic!("{text}: ignored as {e}"));
        view.apply(frame.update)
    }

    /// Parses a frame that must parse and applies it to a fresh view.
    fn observe_fresh(text: &str) -> Option<Observation> {
        observe(&mut SessionView::default(), text)
    }

    fn fixture_expectations() -> Vec<Option<Observation>> {
        let getaddrinfo = "WebSocket Error (getaddrinfo ENOTFOUND web.whatsapp.com)";
        vec![
            Some(kind(DownKind::Connecting)),
            Some(closed(Some(408), Some(getaddrinfo))),
            Some(kind(DownKind::QrShown)),
            None,
            Some(closed(Some(515), Some("Stream Errored (restart required)"))),
            Some(closed(Some(401), Some("Connection Failure"))),
            Some(closed(Some(440), Some("Stream Errored (conflict)"))),
            Some(closed(Some(428), Some("Connection Closed"))),
            Some(closed(Some(408), Some("QR refs attempts ended"))),
            Some(Observation::Up),
            None,
            None,
        ]
    }

    #[test]
    fn fixture_lines_each_in_a_fresh_view() {
        let lines: Vec<&str> = FIXTURE.lines().filter(|l| !l.trim().is_empty()).collect();
        let expected = fixture_expectations();
        assert_eq!(lines.len(), expected.len());
        for (number, (line, want)) in lines.iter().zip(expected).enumerate() {
            let frame = parse(line).unwrap_or_else(|e| panic!("line {}: {e}", number + 1));
            assert_eq!(frame.tenant, None, "line {}", number + 1);
            let got = SessionView::default().apply(frame.update);
            assert_eq!(got, want, "line {}", number + 1);
        }
    }

    #[test]
    fn fixture_lines_in_one_view_give_the_same_results() {
        // Every close in the fixture carries its own lastDisconnect, so merging changes nothing.
        let mut view = SessionView::default();
        let got: Vec<_> = FIXTURE
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| observe(&mut view, line))
            .collect();
        assert_eq!(got, fixture_expectations());
        assert_eq!(view.last_disconnect(), None, "open clears it");
        assert!(!view.qr_shown(), "open clears it");
    }

    #[test]
    fn fixture_line_2_is_a_baileys_update_with_boom_close_info() {
        let line = FIXTURE.lines().nth(1).unwrap();
        let want = BaileysUpdate {
            connection: Some(Connection::Close),
            last_disconnect: Some(CloseInfo {
                code: Some(408),
                message: Some("WebSocket Error (getaddrinfo ENOTFOUND web.whatsapp.com)".into()),
            }),
            qr: false,
        };
        assert_eq!(
            parse(line),
            Ok(Frame {
                tenant: None,
                update: Update::Baileys(want)
            })
        );
    }

    #[test]
    fn baileys_bare_frames() {
        assert_eq!(
            observe_fresh(r#"{"connection":"open"}"#),
            Some(Observation::Up)
        );
        assert_eq!(
            observe_fresh(r#"{"connection":"connecting"}"#),
            Some(kind(DownKind::Connecting))
        );
        assert_eq!(
            observe_fresh(
                r#"{"connection":"close","lastDisconnect":{"error":{"output":{"statusCode":428,"payload":{"message":"Connection Closed"}}}}}"#
            ),
            Some(closed(Some(428), Some("Connection Closed")))
        );
        assert_eq!(
            observe_fresh(r#"{"qr":"2@abc"}"#),
            Some(kind(DownKind::QrShown))
        );
        for nothing in [
            r#"{"isOnline":true}"#,
            r#"{"receivedPendingNotifications":true}"#,
            r#"{"isNewLogin":true}"#,
            r#"{"isOnline":false,"date":"2026-11-25T10:00:00.000Z"}"#,
        ] {
            assert_eq!(observe_fresh(nothing), None, "{nothing}");
        }
    }

    #[test]
    fn wrapped_frames_carry_the_tenant_from_any_tenant_key() {
        for key in ["tenant_id", "tenant", "session", "instance"] {
            let text = format!(
                r#"{{"event":"connection.update","{key}":"b1","data":{{"connection":"open"}}}}"#
            );
            let frame = parse(&text).unwrap();
            assert_eq!(frame.tenant.as_deref(), Some("b1"), "{key}");
        }
        // The first non-empty string wins, in the documented order.
        let frame = parse(
            r#"{"event":"connection.update","instance":"i","tenant_id":"t","data":{"qr":"x"}}"#,
        )
        .unwrap();
        assert_eq!(frame.tenant.as_deref(), Some("t"));
        let frame = parse(
            r#"{"event":"connection.update","tenant_id":"","session":"s","data":{"qr":"x"}}"#,
        )
        .unwrap();
        assert_eq!(frame.tenant.as_deref(), Some("s"));
        // Escaped strings are decoded rather than borrowed.
        let frame = parse(r#"{"tenant":"b\u00e9\n","connection":"open"}"#).unwrap();
        assert_eq!(frame.tenant.as_deref(), Some("bé\n"));
    }

    #[test]
    fn qr_with_open_in_one_frame_is_not_linked() {
        assert_eq!(
            observe_fresh(
                r#"{"event":"connection.update","data":{"connection":"open","qr":"2@x"}}"#
            ),
            Some(kind(DownKind::QrShown))
        );
        // An empty qr is no QR.
        assert_eq!(
            observe_fresh(r#"{"connection":"open","qr":""}"#),
            Some(Observation::Up)
        );
    }

    #[test]
    fn close_without_last_disconnect_reuses_the_merged_one() {
        let mut view = SessionView::default();
        let with = r#"{"connection":"close","lastDisconnect":{"error":{"output":{"statusCode":440,"payload":{"message":"Stream Errored (conflict)"}}}}}"#;
        let conflict = closed(Some(440), Some("Stream Errored (conflict)"));
        assert_eq!(observe(&mut view, with), Some(conflict.clone()));
        assert_eq!(
            observe(&mut view, r#"{"connection":"connecting"}"#),
            Some(kind(DownKind::Connecting))
        );
        assert_eq!(
            observe(&mut view, r#"{"connection":"close"}"#),
            Some(conflict.clone())
        );
        // A lastDisconnect on its own merges but says nothing yet.
        let reason_only = r#"{"lastDisconnect":{"error":{"output":{"statusCode":515}}}}"#;
        assert_eq!(observe(&mut view, reason_only), None);
        assert_eq!(
            observe(&mut view, r#"{"connection":"close"}"#),
            Some(closed(Some(515), None))
        );
        // Open clears it, so the next bare close has no reason.
        assert_eq!(
            observe(&mut view, r#"{"connection":"open"}"#),
            Some(Observation::Up)
        );
        assert_eq!(
            observe(&mut view, r#"{"connection":"close"}"#),
            Some(closed(None, None))
        );
    }

    #[test]
    fn qr_then_open_in_separate_frames_is_linked() {
        let mut view = SessionView::default();
        assert_eq!(
            observe(&mut view, r#"{"qr":"2@a"}"#),
            Some(kind(DownKind::QrShown))
        );
        assert!(view.qr_shown());
        assert_eq!(
            observe(&mut view, r#"{"connection":"open"}"#),
            Some(Observation::Up)
        );
        assert!(!view.qr_shown());
        assert_eq!(view.connection(), Some(Connection::Open));
    }

    #[test]
    fn reset_forgets_the_merged_close() {
        let mut view = SessionView::default();
        observe(&mut view, r#"{"lastDisconnect":{"error":"boom"}}"#);
        assert_eq!(
            observe(&mut view.clone(), r#"{"connection":"close"}"#),
            Some(closed(None, Some("boom")))
        );
        view.reset();
        assert_eq!(view.connection(), None);
        assert_eq!(
            observe(&mut view, r#"{"connection":"close"}"#),
            Some(closed(None, None))
        );
    }

    #[test]
    fn a_whole_state_up_clears_the_merged_close() {
        let mut view = SessionView::default();
        observe(&mut view, r#"{"lastDisconnect":{"error":"old"}}"#);
        assert_eq!(
            observe(&mut view, r#"{"status":"connected"}"#),
            Some(Observation::Up)
        );
        assert_eq!(
            observe(&mut view, r#"{"connection":"close"}"#),
            Some(closed(None, None))
        );
    }

    #[test]
    fn last_disconnect_is_read_leniently() {
        let cases: &[(&str, CloseInfo)] = &[
            (r#"null"#, CloseInfo::default()),
            (r#"{}"#, CloseInfo::default()),
            (r#"{"error":null,"date":"x"}"#, CloseInfo::default()),
            (r#"{"error":{}}"#, CloseInfo::default()),
            (r#"{"error":{"output":null}}"#, CloseInfo::default()),
            (
                r#"{"error":{"output":{"payload":{}}}}"#,
                CloseInfo::default(),
            ),
            (
                r#"{"error":{"statusCode":503,"message":"down"}}"#,
                info(Some(503), Some("down")),
            ),
            (r#"{"error":{"status":500}}"#, info(Some(500), None)),
            (
                r#"{"error":"Connection Closed"}"#,
                info(None, Some("Connection Closed")),
            ),
            (r#"{"error":""}"#, CloseInfo::default()),
            (r#""just text""#, info(None, Some("just text"))),
            (r#"42"#, CloseInfo::default()),
            (r#"[1,2]"#, CloseInfo::default()),
            (
                r#"{"error":{"output":{"statusCode":"428"}}}"#,
                info(Some(428), None),
            ),
            (
                r#"{"error":{"output":{"statusCode":70000}}}"#,
                CloseInfo::default(),
            ),
            (
                r#"{"error":{"output":{"statusCode":-1}}}"#,
                CloseInfo::default(),
            ),
            (
                r#"{"error":{"output":{"statusCode":408.5}}}"#,
                CloseInfo::default(),
            ),
            (
                r#"{"error":{"output":{"statusCode":true,"payload":{"statusCode":408}}}}"#,
                info(Some(408), None),
            ),
            (
                r#"{"error":{"output":{"payload":{"message":5}},"message":"own"}}"#,
                info(None, Some("own")),
            ),
            (
                r#"{"error":{"output":[],"statusCode":401}}"#,
                info(Some(401), None),
            ),
            (
                r#"{"error":{"output":{"statusCode":401,"payload":{"message":"Connection Failure"}},"statusCode":1,"message":"other"}}"#,
                info(Some(401), Some("Connection Failure")),
            ),
        ];
        for (last_disconnect, want) in cases {
            let text = format!(r#"{{"connection":"close","lastDisconnect":{last_disconnect}}}"#);
            let frame = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let Update::Baileys(update) = frame.update else {
                panic!("{text}: not Baileys");
            };
            // A null lastDisconnect is the same as none at all.
            let want = (*last_disconnect != "null").then(|| want.clone());
            assert_eq!(update.last_disconnect, want, "{text}");
        }
    }

    fn info(code: Option<u16>, message: Option<&str>) -> CloseInfo {
        CloseInfo {
            code,
            message: message.map(str::to_owned),
        }
    }

    #[test]
    fn native_frames() {
        let frame =
            parse(r#"{"tenant_id":"business_1","status":"connected","reason":null}"#).unwrap();
        assert_eq!(frame.tenant.as_deref(), Some("business_1"));
        assert_eq!(frame.update, Update::State(Observation::Up));
        let frame =
            parse(r#"{"tenant_id":"b1","status":"disconnected","reason":"logged out"}"#).unwrap();
        assert_eq!(
            frame.update,
            Update::State(down(DownKind::Ended, None, Some("logged out".into())))
        );
        assert_eq!(
            observe_fresh(r#"{"status":"disconnected"}"#),
            Some(kind(DownKind::Ended))
        );
        assert_eq!(
            observe_fresh(r#"{"status":"disconnected","reason":""}"#),
            Some(kind(DownKind::Ended))
        );
    }

    #[test]
    fn waha_frames() {
        let cases = [
            ("WORKING", Observation::Up),
            ("STARTING", kind(DownKind::Connecting)),
            ("SCAN_QR_CODE", kind(DownKind::QrShown)),
            (
                "FAILED",
                down(
                    DownKind::Ended,
                    None,
                    Some("WAHA session status FAILED".into()),
                ),
            ),
            (
                "STOPPED",
                down(
                    DownKind::Ended,
                    None,
                    Some("WAHA session status STOPPED".into()),
                ),
            ),
            ("working", Observation::Up),
        ];
        for (status, want) in cases {
            let text = format!(
                r#"{{"event":"session.status","session":"b1","me":{{"id":"1@c.us"}},"payload":{{"status":"{status}"}}}}"#
            );
            let frame = parse(&text).unwrap();
            assert_eq!(frame.tenant.as_deref(), Some("b1"), "{status}");
            assert_eq!(frame.update, Update::State(want), "{status}");
        }
    }

    #[test]
    fn evolution_frames() {
        let cases = [
            (r#""open","statusReason":200"#, Observation::Up),
            (r#""connecting""#, kind(DownKind::Connecting)),
            (r#""close","statusReason":428"#, closed(Some(428), None)),
            (r#""close""#, closed(None, None)),
            (
                r#""refused","statusReason":401"#,
                down(
                    DownKind::Ended,
                    Some(401),
                    Some("connection refused".into()),
                ),
            ),
        ];
        for event in [
            "connection.update",
            "CONNECTION_UPDATE",
            "connection_update",
        ] {
            for (data, want) in &cases {
                let text =
                    format!(r#"{{"event":"{event}","instance":"b1","data":{{"state":{data}}}}}"#);
                let frame = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(frame.tenant.as_deref(), Some("b1"), "{text}");
                assert_eq!(frame.update, Update::State(want.clone()), "{text}");
            }
        }
        // Evolution repeats the instance inside data; it is used when the top level has none.
        let frame =
            parse(r#"{"event":"CONNECTION_UPDATE","data":{"instance":"b2","state":"open"}}"#)
                .unwrap();
        assert_eq!(frame.tenant.as_deref(), Some("b2"));
        // A Baileys update under an Evolution spelling is still a Baileys update.
        let frame = parse(r#"{"event":"CONNECTION_UPDATE","data":{"connection":"open"}}"#).unwrap();
        assert!(matches!(frame.update, Update::Baileys(_)));
    }

    #[test]
    fn flattened_connection_update_is_read_from_the_top_level() {
        assert_eq!(
            observe_fresh(r#"{"event":"connection.update","connection":"connecting"}"#),
            Some(kind(DownKind::Connecting))
        );
    }

    #[test]
    fn unknown_keys_and_deep_nesting_are_skipped() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"{{"junk":{deep},"connection":"open","extra":{{"a":{deep}}}}}"#);
        assert_eq!(observe_fresh(&text), Some(Observation::Up));
        assert_eq!(parse(&deep), Err(Ignored::NotAnObject));
        assert_eq!(parse(&"[".repeat(100_000)), Err(Ignored::NotJson));
        assert_eq!(parse(&r#"{"a":"#.repeat(100_000)), Err(Ignored::NotJson));
    }

    #[test]
    fn malformed_frames_are_ignored_with_their_kind() {
        use Ignored::*;
        let cases: &[(&str, Ignored)] = &[
            ("", NotJson),
            ("   ", NotJson),
            ("{", NotJson),
            ("nul", NotJson),
            ("{'connection':'open'}", NotJson),
            (r#"{"connection":"open""#, NotJson),
            (r#"{"connection":"open",}"#, NotJson),
            (r#"{"connection":"open"} {}"#, NotJson),
            (r#"{"connection":"\ud800"}"#, NotJson),
            (r#"{"statusReason":1e999,"connection":"open"}"#, NotJson),
            ("null", NotAnObject),
            ("42", NotAnObject),
            ("true", NotAnObject),
            (r#""connection.update""#, NotAnObject),
            (r#"[{"connection":"open"}]"#, NotAnObject),
            (
                r#"{"event":"messages.upsert","data":{"connection":"open"}}"#,
                UnknownEvent,
            ),
            (r#"{"event":"","data":{}}"#, UnknownEvent),
            (
                r#"{"event":"session.status.extra","payload":{"status":"WORKING"}}"#,
                UnknownEvent,
            ),
            ("{}", UnknownShape),
            (r#"{"hello":"world"}"#, UnknownShape),
            (r#"{"date":"2026-11-25T10:00:00.000Z"}"#, UnknownShape),
            (r#"{"status":"ok"}"#, UnknownShape),
            (r#"{"connection":"sideways"}"#, UnknownShape),
            (
                r#"{"event":"session.status","payload":{"status":"EXPLODED"}}"#,
                UnknownShape,
            ),
            (
                r#"{"event":"connection.update","data":{"state":"melted"}}"#,
                UnknownShape,
            ),
            (r#"{"event":42,"data":{"connection":"open"}}"#, WrongType),
            (r#"{"connection":1}"#, WrongType),
            (r#"{"connection":["open"]}"#, WrongType),
            (r#"{"qr":true}"#, WrongType),
            (r#"{"event":"connection.update","data":"open"}"#, WrongType),
            (r#"{"event":"connection.update","data":[]}"#, WrongType),
            (
                r#"{"event":"connection.update","data":{"state":false}}"#,
                WrongType,
            ),
            (r#"{"status":true}"#, WrongType),
            (r#"{"status":"disconnected","reason":5}"#, WrongType),
            (r#"{"tenant_id":5,"status":"connected"}"#, WrongType),
            (r#"{"tenant":{"id":"b1"},"connection":"open"}"#, WrongType),
            (
                r#"{"event":"session.status","payload":"WORKING"}"#,
                WrongType,
            ),
            (
                r#"{"event":"session.status","payload":{"status":1}}"#,
                WrongType,
            ),
            (r#"{"connection":"open","connection":"close"}"#, WrongType),
            (r#"{"event":"connection.update"}"#, NoState),
            (r#"{"event":"connection.update","data":null}"#, NoState),
            (r#"{"event":"connection.update","data":{}}"#, NoState),
            (
                r#"{"event":"connection.update","data":{"date":"x","state":null}}"#,
                NoState,
            ),
            (r#"{"event":"session.status","session":"b1"}"#, NoState),
            (
                r#"{"event":"session.status","payload":{"status":null}}"#,
                NoState,
            ),
        ];
        assert!(cases.len() >= 20);
        for (text, want) in cases {
            assert_eq!(parse(text), Err(*want), "{text}");
        }
    }

    #[test]
    fn ignored_labels_are_distinct_snake_case() {
        let labels: Vec<&str> = Ignored::ALL.iter().map(|i| i.as_str()).collect();
        for (i, label) in labels.iter().enumerate() {
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
            assert!(!labels[..i].contains(label), "{label} twice");
        }
        assert_eq!(Ignored::NotJson.to_string(), "not_json");
    }

    /// A tiny linear congruential generator (Knuth's MMIX constants), so the fuzz loop is
    /// deterministic and needs no `rand` crate.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as usize
        }
    }

    #[test]
    fn no_input_panics() {
        const FRAGMENTS: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            " ",
            "\\",
            "null",
            "true",
            "false",
            "0",
            "-1",
            "408",
            "70000",
            "1e999",
            "4.5",
            "\"event\"",
            "\"connection.update\"",
            "\"CONNECTION_UPDATE\"",
            "\"session.status\"",
            "\"data\"",
            "\"payload\"",
            "\"status\"",
            "\"state\"",
            "\"statusReason\"",
            "\"connection\"",
            "\"open\"",
            "\"close\"",
            "\"connecting\"",
            "\"refused\"",
            "\"WORKING\"",
            "\"FAILED\"",
            "\"connected\"",
            "\"disconnected\"",
            "\"reason\"",
            "\"qr\"",
            "\"2@abc\"",
            "\"\"",
            "\"lastDisconnect\"",
            "\"error\"",
            "\"output\"",
            "\"statusCode\"",
            "\"message\"",
            "\"isOnline\"",
            "\"tenant_id\"",
            "\"instance\"",
            "\"session\"",
            "\"b1\"",
            "\"\\u00e9\"",
            "\"\\ud800\"",
            "\"é\u{1F600}\"",
            "{\"connection\":\"close\",",
            "{\"event\":\"connection.update\",\"data\":",
            "{\"lastDisconnect\":{\"error\":{\"output\":{\"statusCode\":",
        ];
        let lines: Vec<&str> = FIXTURE.lines().collect();
        let mut rng = Lcg(0x5eed);
        let mut view = SessionView::default();
        let mut parsed = 0;
        for round in 0..20_000 {
            let mut text = String::new();
            let line = lines[rng.next() % lines.len()];
            match round % 8 {
                // A whole real frame, so the merge path runs on real updates between the noise.
                0 => text.push_str(line),
                // A cut real frame: the fixture is ASCII, so any cut is a char boundary.
                1 | 2 => text.push_str(&line[..rng.next() % (line.len() + 1)]),
                _ => {}
            }
            if round % 8 != 0 {
                for _ in 0..rng.next() % 24 {
                    text.push_str(FRAGMENTS[rng.next() % FRAGMENTS.len()]);
                }
            }
            if let Ok(frame) = parse(&text) {
                parsed += 1;
                view.apply(frame.update);
            }
        }
        // Some random inputs must get through the parser, or this loop tests only the error path.
        assert!(parsed > 0);
    }
}
