//! `wa-status-sidecar status`: a table of tenants from a running sidecar's admin API, for a
//! person at a terminal.

use std::time::Duration;

use crate::debounce::Status;
use crate::registry::TenantView;

/// Largest `/tenants` answer read: 10,000 tenants take about 4 MiB; four times that for margin.
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Longest wait for the whole answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the admin API at `url`: never follows a redirect (SPEC 2 rev 12), gives up
/// after `timeout`.
fn client(url: &str, timeout: Duration) -> Result<reqwest::Client, String> {
    let tls =
        crate::tls::client_config(None, url.starts_with("https:")).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
        .build()
        .map_err(|e| e.to_string())
}

/// `wa-status-sidecar healthcheck`: whether `/livez` at `admin` answers 2xx within 3 s. The
/// error names the URL with any password redacted (container engines keep this output).
pub async fn healthcheck(admin: &str) -> Result<(), String> {
    let url = format!("{}/livez", admin.trim_end_matches('/'));
    let shown = crate::logging::redact_url(&url);
    let response = client(&url, Duration::from_secs(3))?
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("cannot reach {shown}: {}", e.without_url()))?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => Err(format!("{shown} answered {status}")),
    }
}

/// Fetches `/tenants` from the admin API at `admin` (e.g. `http://127.0.0.1:9464`). A redirect
/// is not followed and at most [`BODY_LIMIT`] bytes are read (SPEC 2 rev 12): whatever answers
/// on that address cannot send this command elsewhere or fill its memory.
pub async fn fetch(admin: &str) -> Result<Vec<TenantView>, String> {
    let url = format!("{}/tenants", admin.trim_end_matches('/'));
    let shown = crate::logging::redact_url(&url);
    let mut response = client(&url, TIMEOUT)?.get(&url).send().await.map_err(|e| {
        format!("cannot reach the sidecar's admin API at {shown}: {}\n(is it running? pass --admin or set WA_SIDECAR_ADMIN to its admin.listen address)", e.without_url())
    })?;
    let status = response.status();
    if status.is_redirection() {
        return Err(format!(
            "{shown} answered {status}, a redirect, which is not followed: pass the sidecar's own admin.listen address"
        ));
    }
    if !status.is_success() {
        return Err(format!("{shown} answered {status}"));
    }
    let too_large = || {
        format!(
            "the answer from {shown} is larger than {} MiB",
            BODY_LIMIT >> 20
        )
    };
    if response
        .content_length()
        .is_some_and(|n| n > BODY_LIMIT as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer from {shown}: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from {shown}: {e}"))
}

/// Longest reason shown in the table; the admin API has the whole text.
const REASON_WIDTH: usize = 60;

/// Renders the rows as an aligned text table with a summary line.
pub fn table(rows: &[TenantView]) -> String {
    let mut lines = vec![[
        "TENANT".to_string(),
        "STATE".to_string(),
        "SINCE".to_string(),
        "LINK".to_string(),
        "OWED".to_string(),
        "REASON".to_string(),
    ]];
    for row in rows {
        let state = match (row.stable, row.flapping) {
            (Some(Status::Disconnected), true) => "flapping".to_string(),
            (Some(s), _) => s.as_str().to_string(),
            (None, _) => "unknown".to_string(),
        };
        let (since, reason) = match (&row.owed, &row.reported) {
            (Some(o), _) => (o.changed_at.clone(), o.reason.clone()),
            (None, Some(r)) => (r.at.clone(), r.reason.clone()),
            (None, None) => ("-".to_string(), None),
        };
        let owed = match &row.owed {
            Some(o) if row.delivery_attempts > 0 => format!(
                "{} ({} tries{})",
                o.status.as_str(),
                row.delivery_attempts,
                row.last_error
                    .as_deref()
                    .map(|e| format!(", {}", shorten(e, 30)))
                    .unwrap_or_default()
            ),
            Some(o) => o.status.as_str().to_string(),
            None => "-".to_string(),
        };
        // Every cell is what the admin API answered: escaped, so whatever answers on that
        // address cannot move the cursor or recolour the operator's terminal.
        lines.push(
            [
                row.tenant.clone(),
                state,
                since,
                row.link.clone(),
                owed,
                shorten(reason.as_deref().unwrap_or("-"), REASON_WIDTH),
            ]
            .map(|cell| crate::logging::escaped(&cell)),
        );
    }
    let mut widths = [0usize; 6];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let count = |s| rows.iter().filter(|r| r.stable == Some(s)).count();
    out.push_str(&format!(
        "{} tenants: {} connected, {} disconnected, {} unknown; {} deliveries owed\n",
        rows.len(),
        count(Status::Connected),
        count(Status::Disconnected),
        rows.iter().filter(|r| r.stable.is_none()).count(),
        rows.iter().filter(|r| r.owed.is_some()).count(),
    ));
    out
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let cut: String = text.chars().take(width - 1).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_state_since_reason_and_owed_delivery() {
        let rows: Vec<TenantView> = serde_json::from_str(
            r#"[
            {"tenant":"b1","link":"up","stable":"connected","reported":{"status":"connected","reason":null,"at":"2026-11-25T10:00:00.000Z"},"owed":null,"delivery_attempts":0,"last_error":null,"flapping":false},
            {"tenant":"b2","link":"up","stable":"disconnected","reported":{"status":"connected","reason":null,"at":"2026-11-25T10:00:00.000Z"},"owed":{"status":"disconnected","reason":"logged out (code 401): Connection Failure","changed_at":"2026-11-25T10:05:00.000Z"},"delivery_attempts":3,"last_error":"backend answered 503","flapping":false},
            {"tenant":"b3","link":"down","stable":null,"reported":null,"owed":null,"flapping":false}
        ]"#,
        )
        .unwrap();
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TENANT"));
        assert!(lines[1].contains("connected") && lines[1].contains("2026-11-25T10:00:00.000Z"));
        assert!(lines[2].contains("disconnected (3 tries, backend answered 503)"));
        assert!(lines[2].contains("logged out (code 401): Connection Failure"));
        assert!(lines[2].contains("2026-11-25T10:05:00.000Z"));
        assert!(lines[3].contains("unknown") && lines[3].contains("down"));
        assert_eq!(
            lines[4],
            "3 tenants: 1 connected, 1 disconnected, 1 unknown; 1 deliveries owed"
        );
        // Columns line up: every row's STATE column starts at the same offset.
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 9], "connected");
    }

    #[test]
    fn what_the_admin_api_answers_cannot_drive_the_terminal() {
        let rows: Vec<TenantView> = serde_json::from_str(
            r#"[{"tenant":"b1\u001b]0;owned\u0007","link":"up\r\nfake line","stable":"disconnected",
                "reported":{"status":"disconnected","reason":"\u001b[2Jgone \u202eevil","at":"t"}}]"#,
        )
        .unwrap();
        let table = table(&rows);
        assert!(!table
            .chars()
            .any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\r'));
        assert!(!table.contains('\u{202e}'));
        assert_eq!(table.lines().count(), 3, "no forged line: {table}");
        assert!(table.contains(r"b1\u{1b}]0;owned\u{7}"), "{table}");
        assert!(table.contains(r"\u{1b}[2Jgone \u{202e}evil"), "{table}");
    }

    #[test]
    fn long_reasons_are_shortened() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
