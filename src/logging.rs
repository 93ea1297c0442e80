//! Logging set-up: `tracing` to stderr, as text (one line per event) or JSON.
//!
//! Text from the gateway (close reasons, frames) and from the backend (error bodies) reaches log
//! fields. In the text format a newline in it would forge a log line and an escape sequence would
//! drive the operator's terminal, so [`EscapedFields`] writes every field and message with its
//! control characters escaped (`\n`, `\u{1b}`); printable text, Hebrew included, is kept as is.
//! The JSON format escapes them already (JSON strings cannot hold a raw control character).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::Level;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TENANT_PLACEHOLDER};

/// Installs the global subscriber: `RUST_LOG` if set, else `default_filter`; colour only for a
/// person at a terminal, never into journald or a file. Whatever `RUST_LOG` says, no other
/// crate's TRACE line is written ([`own_trace_only`]).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let own_trace_only = filter_fn(|meta| own_trace_only(meta.level(), meta.target()));
    match format {
        LogFormat::Json => builder.json().finish().with(own_trace_only).init(),
        LogFormat::Text => (builder.fmt_fields(EscapedFields).finish())
            .with(own_trace_only)
            .init(),
    }
}

/// Whether an event may be written: any but another crate's TRACE. Those carry the bytes of
/// requests: tungstenite's prints the whole WebSocket handshake, the gateway token and the
/// `[gateway.headers]` values in it, which no log line may show (SPEC section 3).
fn own_trace_only(level: &Level, target: &str) -> bool {
    *level < Level::TRACE || target.starts_with(env!("CARGO_CRATE_NAME"))
}

/// The text format's field formatter: tracing-subscriber's layout (the message, then
/// `name=value` pairs, `&str` values quoted), with control characters escaped everywhere.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        // tracing-log's metadata fields, as the default formatter skips them.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        let written = if name == "message" {
            write!(self.writer, "{separator}")
        } else {
            write!(self.writer, "{separator}{name}=")
        };
        self.result = written.and_then(|()| fmt::write(&mut Escaping(&mut self.writer), value));
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field, format_args!("{value}"));
        } else {
            // Quoted, as the default formatter writes a `&str` value.
            self.field(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format_args!("{value:?}"));
    }
}

/// Writes through, escaping what could break the line or drive a terminal: C0 and C1 control
/// characters (newline, carriage return, escape), the Unicode line and paragraph separators, the
/// bidirectional overrides, isolates and marks that reorder how a line reads, and the invisible
/// characters (zero-width space and joiners, word joiner, byte-order mark) that make two
/// different ids look the same.
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found a char at `at`");
            for escaped in c.escape_debug() {
                self.0.write_char(escaped)?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// `text` escaped as the text log escapes it, for text from a peer shown to a person elsewhere
/// (the `status` table, config messages, the registry's log fields).
pub(crate) fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Writing to a String cannot fail.
    let _ = fmt::Write::write_str(&mut Escaping(&mut out), text);
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}')
        || matches!(c, '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// A URL fit for a log line, a reason or a summary: the password of `user:password@` and every
/// query value (`?api_key=...`) replaced by `<redacted>`. Works on text that does not parse as a
/// URL too, since that is exactly what error messages echo.
pub(crate) fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (head, rest) = url.split_at(start);
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:<redacted>@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let (before_fragment, fragment) = tail.split_at(tail.find('#').unwrap_or(tail.len()));
    let Some((path, query)) = before_fragment.split_once('?') else {
        return format!("{head}{authority}{tail}");
    };
    let pairs: Vec<String> = (query.split('&'))
        .map(|pair| match pair.split_once('=') {
            Some((key, TENANT_PLACEHOLDER)) => format!("{key}={TENANT_PLACEHOLDER}"),
            Some((key, _)) => format!("{key}=<redacted>"),
            None if pair.is_empty() || pair == TENANT_PLACEHOLDER => pair.to_string(),
            None => "<redacted>".to_string(),
        })
        .collect();
    format!("{head}{authority}{path}?{}{fragment}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn only_the_sidecars_own_trace_lines_are_written() {
        assert!(own_trace_only(&Level::TRACE, "wa_status_sidecar::link"));
        assert!(own_trace_only(
            &Level::DEBUG,
            "tungstenite::handshake::client"
        ));
        assert!(!own_trace_only(
            &Level::TRACE,
            "tungstenite::handshake::client"
        ));
        assert!(!own_trace_only(&Level::TRACE, "hyper_util::client"));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text_log(event: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn control_characters_in_any_field_or_message_are_escaped() {
        let hostile = "bye\nINFO forged line\x1b[31mred\u{202e}txt\r";
        let log = text_log(|| {
            tracing::warn!(
                reason = %hostile,
                body = hostile,
                debug = ?hostile,
                code = 428,
                "closed: {hostile}"
            )
        });
        assert_eq!(log.matches('\n').count(), 1, "one line: {log:?}");
        assert!(!log.contains('\x1b') && !log.contains('\r') && !log.contains('\u{202e}'));
        assert!(
            log.contains(r"closed: bye\nINFO forged line\u{1b}[31mred\u{202e}txt\r"),
            "{log}"
        );
        assert!(
            log.contains(r"reason=bye\nINFO forged line\u{1b}[31mred\u{202e}txt\r "),
            "{log}"
        );
        assert!(log.contains(r#"body="bye\nINFO"#), "{log}");
        assert!(log.contains(" code=428"), "{log}");
    }

    /// Two ids that differ only by an invisible character, or by a mark that reorders the text,
    /// read differently once escaped.
    #[test]
    fn invisible_and_reordering_characters_are_escaped() {
        for c in [
            '\u{200b}', '\u{200d}', '\u{200f}', '\u{061c}', '\u{2060}', '\u{feff}',
        ] {
            let id = format!("business{c}_1");
            let shown = escaped(&id);
            assert!(
                !shown.contains(c) && shown != "business_1",
                "{c:?}: {shown}"
            );
            assert_eq!(shown, format!("business{}_1", c.escape_debug()));
        }
        assert_eq!(escaped("החיבור נותק"), "החיבור נותק");
    }

    #[test]
    fn printable_text_is_kept_as_is() {
        let log = text_log(
            || tracing::info!(tenant = %"business_1", reason = "החיבור נותק", "gateway link down"),
        );
        assert!(
            log.ends_with(
                "INFO wa_status_sidecar::logging::tests: gateway link down tenant=business_1 reason=\"החיבור נותק\"\n"
            ),
            "{log}"
        );
    }
}
