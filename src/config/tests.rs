//! The config's unit tests.

use super::*;
use std::collections::BTreeSet;

const SECRET: &str = "s3cret-value-4f9a";
const ENV: [(&str, &str); 1] = [(ENV_SHARED_SECRET, SECRET)];
const MINIMAL: &str = r#"
    [gateway]
    url = "ws://gw:3001/ws/{tenant}"
    [backend]
    url = "https://backend:8000"
    [tenants]
    ids = ["t1"]
"#;

fn load_with(text: &str, env: &dyn Env) -> Config {
    Config::from_toml_str(text, Path::new("/nonexistent"), env).unwrap_or_else(|e| panic!("{e}"))
}

fn load(text: &str) -> Config {
    load_with(text, &ENV)
}

fn fail_with(text: &str, env: &dyn Env) -> ConfigError {
    match Config::from_toml_str(text, Path::new("/nonexistent"), env) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(err) => err,
    }
}

fn fail(text: &str) -> ConfigError {
    fail_with(text, &ENV)
}

fn paths(err: &ConfigError) -> BTreeSet<&str> {
    err.problems.iter().map(|p| p.path.as_str()).collect()
}

/// The message of the one problem at `path`.
fn message<'e>(err: &'e ConfigError, path: &str) -> &'e str {
    match err.problems.iter().find(|p| p.path == path) {
        Some(problem) => &problem.message,
        None => panic!("no problem at {path}: {err}"),
    }
}

#[test]
fn example_file_loads_and_documents_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidecar.toml");
    let config = Config::load(&path, &ENV).unwrap_or_else(|e| panic!("{e}"));
    let defaults = load(MINIMAL);
    // The example spells out the defaults; it must not drift from the code.
    assert_eq!(config.gateway.mode, defaults.gateway.mode);
    assert_eq!(config.gateway.ping_interval, DEFAULT_PING_INTERVAL);
    assert_eq!(config.gateway.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    assert_eq!(config.gateway.max_frame_size, DEFAULT_MAX_FRAME_SIZE);
    assert_eq!(
        config.gateway.handshake_concurrency,
        DEFAULT_HANDSHAKE_CONCURRENCY
    );
    assert_eq!(config.backend.path, DEFAULT_BACKEND_PATH);
    assert_eq!(config.backend.timeout, DEFAULT_BACKEND_TIMEOUT);
    assert_eq!(
        config.backend.connect_timeout,
        DEFAULT_BACKEND_CONNECT_TIMEOUT
    );
    assert_eq!(config.backend.max_in_flight, DEFAULT_BACKEND_MAX_IN_FLIGHT);
    assert_eq!(config.debounce, Policy::default());
    assert_eq!(config.admin.listen, DEFAULT_ADMIN_LISTEN);
    assert_eq!(config.log.format, DEFAULT_LOG_FORMAT);
    assert_eq!(config.state.dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(config.tenants.ids, ["business_1", "business_2"]);
    assert_eq!(config.backend.secret_source, SecretSource::Env);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(
        config.webhook_url(),
        "http://127.0.0.1:8000/api/internal/whatsapp/status-webhook"
    );
}

#[test]
fn omitted_keys_take_their_defaults() {
    let config = load(MINIMAL);
    let g = &config.gateway;
    assert_eq!(g.mode, GatewayMode::PerTenant);
    assert_eq!(
        (g.state_url.as_ref(), g.token.as_ref(), g.token_env.as_ref()),
        (None, None, None)
    );
    assert!(g.headers.map.is_empty());
    assert_eq!(g.ping_interval, Duration::from_secs(20));
    assert_eq!(g.idle_timeout, Duration::from_secs(45));
    assert_eq!(g.max_frame_size, 1_048_576);
    assert_eq!(g.handshake_concurrency, 64);
    let b = &config.backend;
    assert_eq!(b.path, "/api/internal/whatsapp/status-webhook");
    assert_eq!(b.secret.expose(), SECRET);
    assert_eq!(
        (b.timeout, b.connect_timeout),
        (Duration::from_secs(10), Duration::from_secs(5))
    );
    assert_eq!(b.max_in_flight, 16);
    assert_eq!(config.debounce, Policy::default());
    assert_eq!(
        config.tenants,
        TenantsConfig {
            ids: vec!["t1".into()],
            file: None,
            urls: BTreeMap::new()
        }
    );
    assert_eq!(config.state.dir, Path::new("/var/lib/wa-status-sidecar"));
    assert_eq!(config.admin.listen, "127.0.0.1:9464".parse().unwrap());
    assert_eq!(config.log.format, LogFormat::Text);
    assert!(config.warnings.is_empty());
}

#[test]
fn no_tenants_is_allowed_with_a_warning() {
    let config = load("[gateway]\nurl = \"ws://gw/{tenant}\"\n[backend]\nurl = \"https://b\"");
    assert!(config.tenants.ids.is_empty());
    assert!(
        config.warnings.iter().any(|w| w.contains("no tenants")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn env_overrides_backend_url_and_state_dir() {
    let env = [
        (ENV_SHARED_SECRET, SECRET),
        (ENV_BACKEND_URL, "https://internal.example:9443/app/"),
        (ENV_STATE_DIRECTORY, "/var/lib/sidecar-a:/var/lib/other"),
    ];
    let config = load_with(MINIMAL, &env);
    assert_eq!(
        config.backend.url.as_str(),
        "https://internal.example:9443/app/"
    );
    assert_eq!(
        config.webhook_url(),
        "https://internal.example:9443/app/api/internal/whatsapp/status-webhook"
    );
    assert_eq!(config.state.dir, Path::new("/var/lib/sidecar-a"));

    // backend.url may then be omitted; state.dir in the file beats STATE_DIRECTORY.
    let text = "[gateway]\nurl = \"ws://gw/{tenant}\"\n[state]\ndir = \"/srv/state\"";
    let config = load_with(text, &env);
    assert_eq!(config.backend.url.host_str(), Some("internal.example"));
    assert_eq!(config.state.dir, Path::new("/srv/state"));

    // A bad override is reported against the env var, which is where the fix goes.
    let env = [
        (ENV_SHARED_SECRET, SECRET),
        (ENV_BACKEND_URL, "backend:8000"),
    ];
    assert_eq!(
        paths(&fail_with(MINIMAL, &env)),
        BTreeSet::from(["env BACKEND_INTERNAL_URL"])
    );
}

#[test]
fn secret_sources_in_order_of_precedence() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "  from-file\n").unwrap();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join(CREDENTIAL_NAME), "from-credential\n").unwrap();
    let creds_dir = creds.path().to_str().unwrap();
    let with_file = MINIMAL.replace("[backend]", "[backend]\nsecret_file = \"secret.txt\"");
    let parse = |text: &str, env: &dyn Env| {
        Config::from_toml_str(text, dir.path(), env).unwrap_or_else(|e| panic!("{e}"))
    };

    // 1. The env var wins over everything.
    let env = [
        (ENV_SHARED_SECRET, " from-env "),
        (ENV_CREDENTIALS_DIRECTORY, creds_dir),
    ];
    let config = parse(&with_file, &env);
    assert_eq!(
        (
            config.backend.secret.expose(),
            &config.backend.secret_source
        ),
        ("from-env", &SecretSource::Env)
    );

    // 2. Then secret_file, relative to the config's directory, trimmed. An empty env var is unset.
    let env = [
        (ENV_SHARED_SECRET, ""),
        (ENV_CREDENTIALS_DIRECTORY, creds_dir),
    ];
    let config = parse(&with_file, &env);
    assert_eq!(config.backend.secret.expose(), "from-file");
    assert_eq!(
        config.backend.secret_source,
        SecretSource::File(dir.path().join("secret.txt"))
    );

    // 3. Then the systemd credential.
    let env = [(ENV_CREDENTIALS_DIRECTORY, creds_dir)];
    let config = parse(MINIMAL, &env);
    assert_eq!(config.backend.secret.expose(), "from-credential");
    assert_eq!(
        config.backend.secret_source,
        SecretSource::Credential(creds.path().join(CREDENTIAL_NAME))
    );
    assert!(config
        .summary()
        .contains("<redacted> (from systemd credential"));

    // A named secret_file that cannot be read is its own problem, not a silent fallback.
    let missing = with_file.replace("secret.txt", "nope.txt");
    let err = Config::from_toml_str(&missing, dir.path(), &env).unwrap_err();
    assert_eq!(paths(&err), BTreeSet::from(["backend.secret_file"]));
    assert!(message(&err, "backend.secret_file").contains("nope.txt"));
}

#[test]
fn missing_secret_names_the_three_ways() {
    let creds = tempfile::tempdir().unwrap(); // exists, but holds no credential
    let env = [(ENV_CREDENTIALS_DIRECTORY, creds.path().to_str().unwrap())];
    for env in [&env as &dyn Env, &[("X", "y")]] {
        let err = fail_with(MINIMAL, env);
        assert_eq!(paths(&err), BTreeSet::from(["backend.secret"]));
        let msg = message(&err, "backend.secret");
        for way in [
            ENV_SHARED_SECRET,
            "backend.secret_file",
            "CREDENTIALS_DIRECTORY",
            "internal-secret",
        ] {
            assert!(msg.contains(way), "{msg}");
        }
    }
    let blank = std::fs::write(creds.path().join(CREDENTIAL_NAME), " \n");
    blank.unwrap();
    let err = fail_with(MINIMAL, &env);
    assert!(
        message(&err, "backend.secret").contains("is empty"),
        "{err}"
    );
}

#[test]
fn every_mistake_is_reported_with_its_path() {
    let text = r#"
        [gateway]
        mode = "sharded"
        urll = "ws://gw/{tenant}"
        ping_interval = 20
        idle_timeout = "abc"
        max_frame_size = 10
        handshake_concurrency = "many"
        headers = { "bad header" = "x", Upgrade = "h2c" }
        [backend]
        path = "api/webhook"
        timeout = "0s"
        max_in_flight = 0
        secret = "hunter2"
        [debounce]
        connect_grace = true
        flap_suppress = 500
        flap_reuse = 750
        terminal_codes = [401, 42, "x"]
        [tenants]
        ids = ["ok", "has space", ""]
        [tenants.urls]
        ghost = "ws://gw-2/ws/ghost"
        [state]
        dir = 5
        [admin]
        listen = "localhost"
        [log]
        format = "xml"
        level = "debug"
        [extra]
    "#;
    let err = fail_with(text, &[("X", "y")]);
    let expected = BTreeSet::from([
        "gateway.mode",
        "gateway.url",
        "gateway.urll",
        "gateway.ping_interval",
        "gateway.idle_timeout",
        "gateway.max_frame_size",
        "gateway.handshake_concurrency",
        "gateway.headers.\"bad header\"",
        "gateway.headers.Upgrade",
        "backend.url",
        "backend.path",
        "backend.timeout",
        "backend.max_in_flight",
        "backend.secret",
        "debounce.connect_grace",
        "debounce.flap_reuse",
        "debounce.terminal_codes[1]",
        "debounce.terminal_codes[2]",
        "tenants.ids[1]",
        "tenants.ids[2]",
        "tenants.urls.ghost",
        "state.dir",
        "admin.listen",
        "log.format",
        "log.level",
        "extra",
    ]);
    assert_eq!(paths(&err), expected, "{err}");
    // backend.secret appears twice: the unknown key, and no secret found.
    assert_eq!(err.problems.len(), expected.len() + 1, "{err}");
    // Grouped by section in file order, and the Display lists them all.
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!(
            "<inline config>: {} problems:\n  - gateway.",
            expected.len() + 1
        )),
        "{shown}"
    );
    assert!(
        shown.contains("\n  - log.level: unknown key; the log level comes from env RUST_LOG"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}

/// A refused value stands in as its key's default for the rest of the pass; a rule relating it
/// to another key must not then report a second, misleading problem about that other key.
#[test]
fn a_refused_value_is_not_held_against_the_keys_it_relates_to() {
    let text = MINIMAL
        .replace("ws://gw:3001/ws/{tenant}", "ws://gw/ws")
        .replace("https://backend:8000", "http://10.0.0.5")
        .replace(
            "[gateway]",
            "[gateway]\nmode = \"sharded\"\nping_interval = \"abc\"\nidle_timeout = \"10s\"\ntoken = \"t\"\ntoken_env = 5",
        )
        .replace(
            "[backend]",
            "[backend]\nallow_plain_http = \"yes\"\nsecret_file = 5",
        )
        + "\n[debounce]\nflap_suppress = \"x\"\nflap_reuse = 5000\nflap_half_life = \"soon\"\nflap_max_suppress = \"10m\"";
    // Without the guard: the URL would be checked against per-tenant mode, idle_timeout against
    // the default ping_interval, the token against token_env, the plain http:// URL against
    // allow_plain_http = false, the missing secret reported, and flap_reuse and
    // flap_max_suppress against the defaults of flap_suppress and flap_half_life.
    let err = fail_with(&text, &[("X", "y")]);
    let expected = BTreeSet::from([
        "gateway.mode",
        "gateway.ping_interval",
        "gateway.token_env",
        "backend.allow_plain_http",
        "backend.secret_file",
        "debounce.flap_suppress",
        "debounce.flap_half_life",
    ]);
    assert_eq!(paths(&err), expected, "{err}");
    assert_eq!(err.problems.len(), expected.len(), "{err}");
}

#[test]
fn unknown_keys_get_hints() {
    let text = format!("{MINIMAL}\n[gatway]\nurl = \"x\"\n[admin]\nlisen = \"127.0.0.1:1\"\nsecret_file = \"/s\"\n");
    let err = fail(&text);
    assert_eq!(
        paths(&err),
        BTreeSet::from(["gatway", "admin.lisen", "admin.secret_file"])
    );
    assert_eq!(
        message(&err, "gatway"),
        "unknown section; did you mean `[gateway]`?"
    );
    assert_eq!(
        message(&err, "admin.lisen"),
        "unknown key; did you mean `listen`?"
    );
    assert!(
        message(&err, "admin.secret_file").contains("`backend.secret_file`"),
        "{err}"
    );

    let err = fail(&MINIMAL.replace("url = \"ws", "urll = \"ws"));
    assert_eq!(
        message(&err, "gateway.urll"),
        "unknown key; did you mean `url`?"
    );
    assert!(message(&err, "gateway.url").starts_with("missing"));

    let err = fail(&format!("{MINIMAL}\n[log]\ncolour = true"));
    assert_eq!(
        message(&err, "log.colour"),
        "unknown key; [log] takes: format"
    );
}

#[test]
fn durations_are_humane_strings() {
    let config = load(&format!(
        "{MINIMAL}\n[debounce]\ndisconnect_grace = \"1h 30m\"\nconnect_grace = \"0s\"\ngateway_down_grace = \"0s\"\nflap_half_life = \"500ms\""
    ));
    assert_eq!(
        config.debounce.disconnect_grace,
        Duration::from_secs(90 * 60)
    );
    assert_eq!(config.debounce.connect_grace, Duration::ZERO);
    assert_eq!(config.debounce.gateway_down_grace, None);
    assert_eq!(config.debounce.flap_half_life, Duration::from_millis(500));

    let text = format!(
        "{MINIMAL}\n[debounce]\ndisconnect_grace = 60\nconnect_grace = \"ten seconds\"\nflap_half_life = \"0s\"\nflap_max_suppress = 1.5"
    );
    let err = fail(&text);
    assert!(
        message(&err, "debounce.disconnect_grace").contains("e.g. \"60s\" or \"60ms\""),
        "{err}"
    );
    assert!(
        message(&err, "debounce.connect_grace").contains("not a duration"),
        "{err}"
    );
    assert!(
        message(&err, "debounce.flap_half_life").contains("longer than 0s"),
        "{err}"
    );
    assert!(
        message(&err, "debounce.flap_max_suppress").contains("duration string"),
        "{err}"
    );
    assert_eq!(err.problems.len(), 4, "{err}");

    let err = fail(&MINIMAL.replace(
        "[backend]",
        "ping_interval = \"30s\"\nidle_timeout = \"30s\"\n[backend]",
    ));
    assert!(
        message(&err, "gateway.idle_timeout").contains("longer than ping_interval"),
        "{err}"
    );

    // A ping interval short enough to flood the gateway is refused; 100 ms is the least.
    for short in ["1ns", "1ms", "99ms"] {
        let err = fail(&MINIMAL.replace(
            "[backend]",
            &format!("ping_interval = \"{short}\"\n[backend]"),
        ));
        assert_eq!(
            paths(&err),
            BTreeSet::from(["gateway.ping_interval"]),
            "{err}"
        );
        assert!(
            message(&err, "gateway.ping_interval").contains("the minimum is 100ms"),
            "{err}"
        );
    }
    let least = load(&MINIMAL.replace("[backend]", "ping_interval = \"100ms\"\n[backend]"));
    assert_eq!(least.gateway.ping_interval, MIN_PING_INTERVAL);
}

#[test]
fn debounce_values_are_checked() {
    let config = load(&format!(
        "{MINIMAL}\n[debounce]\nterminal_codes = []\nflap_suppress = 2500.5"
    ));
    assert!(config.debounce.terminal_codes.is_empty());
    assert_eq!(config.debounce.flap_suppress, 2500.5);

    let err = fail(&format!(
        "{MINIMAL}\n[debounce]\nflap_reuse = 3000\nterminal_codes = [1000]"
    ));
    assert_eq!(
        paths(&err),
        BTreeSet::from(["debounce.flap_reuse", "debounce.terminal_codes[0]"])
    );
    // A penalty cap below flap_suppress would make flapping undetectable.
    let err = fail(&format!(
        "{MINIMAL}\n[debounce]\nflap_max_suppress = \"10m\""
    ));
    assert!(
        message(&err, "debounce.flap_max_suppress").contains("never be detected"),
        "{err}"
    );
}

#[test]
fn tenants_file_is_merged_after_ids() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tenants.txt"),
        "# the fleet\n\nt2\n  t1  \nt3 # trailing comment\nt2\n",
    )
    .unwrap();
    let text = MINIMAL.replace(
        "ids = [\"t1\"]",
        "ids = [\"t0\", \"t1\"]\nfile = \"tenants.txt\"",
    );
    let config = Config::from_toml_str(&text, dir.path(), &ENV).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.tenants.ids, ["t0", "t1", "t2", "t3"]);
    assert_eq!(
        config.tenants.file.as_deref(),
        Some(dir.path().join("tenants.txt").as_path())
    );

    std::fs::write(dir.path().join("tenants.txt"), "ok\nbad id here\n").unwrap();
    let err = Config::from_toml_str(&text, dir.path(), &ENV).unwrap_err();
    assert!(message(&err, "tenants.file").contains("line 2"), "{err}");

    let err = Config::from_toml_str(
        &text.replace("tenants.txt", "missing.txt"),
        dir.path(),
        &ENV,
    )
    .unwrap_err();
    assert!(
        message(&err, "tenants.file").contains("missing.txt")
            && message(&err, "tenants.file").contains("create it"),
        "{err}"
    );

    let long = "x".repeat(129);
    let err = fail(&MINIMAL.replace("\"t1\"", &format!("\"t1\", \"{long}\", \"a\\tb\"")));
    assert_eq!(
        paths(&err),
        BTreeSet::from(["tenants.ids[1]", "tenants.ids[2]"])
    );
}

#[test]
fn url_overrides_must_name_configured_tenants() {
    let err = fail(&format!(
        "{MINIMAL}\n[tenants.urls]\nghost = \"ws://gw-2/ws/ghost\"\nt1 = \"http://x\""
    ));
    assert_eq!(
        paths(&err),
        BTreeSet::from(["tenants.urls.ghost", "tenants.urls.t1"])
    );
    assert!(message(&err, "tenants.urls.ghost").contains("not a configured tenant"));

    let config = load(&format!(
        "{MINIMAL}\n[tenants.urls]\nt1 = \"wss://gw-2/ws/special\""
    ));
    assert_eq!(config.gateway_url("t1"), "wss://gw-2/ws/special");
    assert_eq!(config.gateway_url("t2"), "ws://gw:3001/ws/t2");
}

#[test]
fn gateway_url_template_rules() {
    // Per-tenant mode needs {tenant} ...
    let no_placeholder = MINIMAL.replace("/ws/{tenant}", "/ws");
    let err = fail(&no_placeholder);
    assert_eq!(paths(&err), BTreeSet::from(["gateway.url"]));
    assert!(message(&err, "gateway.url").contains("{tenant}"), "{err}");
    // ... unless every tenant has an override.
    let config = load(&format!(
        "{no_placeholder}\n[tenants.urls]\nt1 = \"ws://gw-2/t1\""
    ));
    assert_eq!(config.gateway_url("t1"), "ws://gw-2/t1");

    // Shared mode must not have it, takes the URL as is, and has no overrides.
    let shared = MINIMAL.replace("[gateway]", "[gateway]\nmode = \"shared\"");
    assert!(message(&fail(&shared), "gateway.url").contains("shared mode"));
    let shared = shared.replace("/ws/{tenant}", "/ws?session=*&events=session.status");
    let config = load(&shared);
    assert_eq!(config.gateway.mode, GatewayMode::Shared);
    assert_eq!(
        config.gateway_url("t1"),
        "ws://gw:3001/ws?session=*&events=session.status"
    );
    let err = fail(&format!("{shared}\n[tenants.urls]\nt1 = \"ws://x/\""));
    assert_eq!(paths(&err), BTreeSet::from(["tenants.urls"]));

    // Wrong scheme, unknown placeholder.
    let err = fail(&MINIMAL.replace("ws://gw:3001/ws/{tenant}", "http://gw/{tenant_id}"));
    assert!(
        message(&err, "gateway.url").contains("only one is `{tenant}`"),
        "{err}"
    );
    let err = fail(&MINIMAL.replace("ws://gw:3001", "https://gw"));
    assert!(
        message(&err, "gateway.url").contains("ws:// or wss://"),
        "{err}"
    );
}

#[test]
fn tenant_ids_are_percent_encoded() {
    let text = MINIMAL.replace(
        "[backend]",
        "state_url = \"https://gw/sessions/{tenant}/status?t={tenant}\"\n[backend]",
    );
    let config = load(&text);
    assert_eq!(config.gateway_url("a/b"), "ws://gw:3001/ws/a%2Fb");
    assert_eq!(
        config.gateway_url("ü?#%"),
        "ws://gw:3001/ws/%C3%BC%3F%23%25"
    );
    assert_eq!(
        config.gateway_url("Biz-1_x.y~z"),
        "ws://gw:3001/ws/Biz-1_x.y~z"
    );
    assert_eq!(
        config.state_url("a&b").as_deref(),
        Some("https://gw/sessions/a%26b/status?t=a%26b")
    );
    assert_eq!(load(MINIMAL).state_url("t1"), None);
}

#[test]
fn gateway_token_and_headers() {
    let text = MINIMAL.replace(
        "[backend]",
        "token_env = \"GW_TOKEN\"\n[gateway.headers]\nX-Api-Key = \"header-secret-77\"\n[backend]",
    );
    let env = [
        (ENV_SHARED_SECRET, SECRET),
        ("GW_TOKEN", " token-secret-99 "),
    ];
    let config = load_with(&text, &env);
    assert_eq!(
        config.gateway.token.as_ref().map(Secret::expose),
        Some("token-secret-99")
    );
    assert_eq!(config.gateway.token_env.as_deref(), Some("GW_TOKEN"));
    assert_eq!(config.gateway.headers.map.len(), 1);
    assert_eq!(config.gateway.headers.map["X-Api-Key"], "header-secret-77");

    let err = fail(&text);
    assert!(
        message(&err, "gateway.token_env").contains("GW_TOKEN is not set"),
        "{err}"
    );

    let both = text.replace(
        "token_env = \"GW_TOKEN\"",
        "token_env = \"GW_TOKEN\"\ntoken = \"abc\"",
    );
    assert!(message(&fail_with(&both, &env), "gateway.token_env").contains("not both"));

    let clash = text.replace("X-Api-Key", "Authorization");
    assert_eq!(
        paths(&fail_with(&clash, &env)),
        BTreeSet::from(["gateway.headers.Authorization"])
    );
    let bad_value = text.replace("header-secret-77", "a\\nb");
    assert_eq!(
        paths(&fail_with(&bad_value, &env)),
        BTreeSet::from(["gateway.headers.X-Api-Key"])
    );
}

#[test]
fn summary_and_debug_never_show_secrets() {
    let text = MINIMAL.replace(
        "[backend]",
        "token = \"token-secret-99\"\nheaders = { X-Api-Key = \"header-secret-77\" }\n[backend]",
    );
    let text = text.replace("ws://gw:3001", "ws://user:url-pass-55@gw:3001");
    let config = load(&text);
    let summary = config.summary();
    let debug = format!("{config:?}");
    for shown in [&summary, &debug] {
        for secret in [SECRET, "token-secret-99", "header-secret-77"] {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
    }
    assert!(!summary.contains("url-pass-55"), "{summary}");
    assert!(
        summary.contains("<redacted> (from INTERNAL_SHARED_SECRET)"),
        "{summary}"
    );
    assert!(
        summary.contains("<redacted> (from gateway.token)"),
        "{summary}"
    );
    assert!(summary.contains("X-Api-Key: <redacted>"), "{summary}");
    assert!(summary.contains("count                   1"), "{summary}");
    assert!(
        summary.contains("ws://user:<redacted>@gw:3001/ws/"),
        "{summary}"
    );
}

/// The webhook client refuses a backend URL with a user or password (the shared secret is the
/// backend's credential), so `check` refuses it too, shown redacted, from the file or the env.
#[test]
fn a_backend_url_with_a_user_or_password_is_refused() {
    for url in [
        "https://user:url-pass-56@backend:8000",
        "https://user@backend:8000",
    ] {
        let err = fail(&MINIMAL.replace("https://backend:8000", url));
        let refused = message(&err, "backend.url");
        assert!(refused.contains("carries a user or password"), "{err}");
        assert!(!refused.contains("url-pass-56"), "{err}");
        let env = [
            ("INTERNAL_SHARED_SECRET", SECRET),
            ("BACKEND_INTERNAL_URL", url),
        ];
        let err = fail_with(MINIMAL, &env);
        let refused = message(&err, "env BACKEND_INTERNAL_URL");
        assert!(refused.contains("carries a user or password"), "{err}");
    }
}

#[test]
fn summary_lists_the_first_tenants() {
    let ids: Vec<String> = (0..25).map(|i| format!("\"b{i}\"")).collect();
    let config = load(&MINIMAL.replace("[\"t1\"]", &format!("[{}]", ids.join(", "))));
    let summary = config.summary();
    assert!(summary.contains("count                   25"), "{summary}");
    assert!(summary.contains("b0, b1,"), "{summary}");
    assert!(
        summary.contains("(15 more)") && !summary.contains("b10"),
        "{summary}"
    );
}

#[test]
fn file_level_problems() {
    let err = fail("[gateway]\nurl = \"ws://x/{tenant}\"\nping_interval = \n");
    assert_eq!(err.problems.len(), 1);
    assert!(
        err.problems[0]
            .message
            .starts_with("invalid TOML at line 3, column 17"),
        "{err}"
    );

    let err = Config::load(Path::new("/nonexistent/sidecar.toml"), &ENV).unwrap_err();
    assert_eq!(err.source_name, "/nonexistent/sidecar.toml");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/sidecar.toml: 1 problem:\n  - cannot read"),
        "{err}"
    );

    let err = fail(&format!("log = \"json\"\n{MINIMAL}"));
    assert_eq!(paths(&err), BTreeSet::from(["log"]));
}

#[test]
fn other_checks() {
    let config = load(&format!(
        "{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9464\"\n[log]\nformat = \"json\""
    ));
    assert_eq!(config.log.format, LogFormat::Json);
    assert!(config.warnings.iter().any(|w| w.contains("not a loopback")));

    let config = load(&MINIMAL.replace("https://backend:8000", "https://backend:8000/"));
    assert_eq!(
        config.webhook_url(),
        "https://backend:8000/api/internal/whatsapp/status-webhook"
    );

    let err = fail(&MINIMAL.replace("https://backend:8000", "https://backend:8000/?x=1"));
    assert!(message(&err, "backend.url").contains("query"), "{err}");

    let err = fail(&MINIMAL.replace(
        "[backend]",
        "max_frame_size = 1023\nhandshake_concurrency = 0\n[backend]",
    ));
    assert_eq!(
        paths(&err),
        BTreeSet::from(["gateway.max_frame_size", "gateway.handshake_concurrency"])
    );
}

// ---------------------------------------------------------------------------------------------
// SPEC rev 12: bounds, tenant ids, credentials from files and the environment, redaction, TLS,
// plain http, signing secrets, the mass-outage hold.

/// The problem messages of `err`, joined, for "no secret leaked" checks.
fn shown(err: &ConfigError) -> String {
    err.to_string()
}

#[test]
fn every_number_and_duration_has_a_stated_range() {
    // The largest values allowed are accepted ...
    let config = load(&MINIMAL.replace(
        "[backend]",
        "ping_interval = \"29d\"\nidle_timeout = \"30d\"\nmax_frame_size = 16777216\nhandshake_concurrency = 4096\n[backend]\nmax_in_flight = 1024\ntimeout = \"30d\"",
    ));
    assert_eq!(config.gateway.idle_timeout, MAX_DURATION);
    assert_eq!(
        (
            config.gateway.max_frame_size,
            config.gateway.handshake_concurrency
        ),
        (16 << 20, 4096)
    );
    assert_eq!(config.backend.max_in_flight, 1024);

    // ... and one step beyond each is a problem that states the range.
    let text = MINIMAL.replace(
        "[backend]",
        "ping_interval = \"400000000000y\"\nidle_timeout = \"30d 1s\"\nmax_frame_size = 16777217\nhandshake_concurrency = 4097\n[backend]\nmax_in_flight = 1025\nconnect_timeout = \"31d\"",
    ) + "\n[debounce]\nflap_half_life = \"10000h\"\nstorm_fraction = 1.5\nstorm_min_tenants = 0\nstorm_window = \"0s\"\nstorm_hold = \"31d\"\nflap_suppress = inf\nterminal_codes = [65937, -1]";
    let err = fail(&text);
    for (path, range) in [
        ("gateway.ping_interval", "at most 30 days"),
        ("gateway.idle_timeout", "at most 30 days"),
        ("gateway.max_frame_size", "allowed 1024 to 16777216"),
        ("gateway.handshake_concurrency", "allowed 1 to 4096"),
        ("backend.max_in_flight", "allowed 1 to 1024"),
        ("backend.connect_timeout", "at most 30 days"),
        ("debounce.flap_half_life", "at most 30 days"),
        ("debounce.storm_fraction", "from 0 to 1"),
        ("debounce.storm_min_tenants", "the minimum is 1"),
        ("debounce.storm_window", "longer than 0s"),
        ("debounce.storm_hold", "at most 30 days"),
        ("debounce.flap_suppress", "above 0"),
        ("debounce.terminal_codes[0]", "100..=999"),
        ("debounce.terminal_codes[1]", "100..=999"),
    ] {
        assert!(message(&err, path).contains(range), "{path}: {err}");
    }
    assert_eq!(err.problems.len(), 14, "{err}");

    for fraction in ["-0.1", "nan", "\"0.2\""] {
        let err = fail(&format!(
            "{MINIMAL}\n[debounce]\nstorm_fraction = {fraction}"
        ));
        assert_eq!(paths(&err), BTreeSet::from(["debounce.storm_fraction"]));
    }
}

#[test]
fn deeply_nested_or_huge_values_are_problems_not_crashes() {
    let deep = format!(
        "{MINIMAL}\n[debounce]\nterminal_codes = {}1{}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(Config::from_toml_str(&deep, Path::new("/nonexistent"), &ENV).is_err());
    let long_key = format!("{MINIMAL}\n[log]\n{} = 1", "k".repeat(100_000));
    assert!(
        message(&fail(&long_key), &format!("log.{}", "k".repeat(100_000))).contains("[log] takes")
    );
    // A device that never ends is refused, not read for ever; so is a file too large.
    let err = fail(&MINIMAL.replace("ids = [\"t1\"]", "ids = [\"t1\"]\nfile = \"/dev/zero\""));
    assert!(
        message(&err, "tenants.file").contains("not a regular file"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("tenants.txt");
    std::fs::File::create(&large)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let text = MINIMAL.replace("ids = [\"t1\"]", "ids = [\"t1\"]\nfile = \"tenants.txt\"");
    let large_err = Config::from_toml_str(&text, dir.path(), &ENV).unwrap_err();
    assert!(
        message(&large_err, "tenants.file").contains("larger than 16777216 bytes"),
        "{large_err}"
    );
    // Only a file that is not there is to be created.
    assert!(
        !message(&err, "tenants.file").contains("create it"),
        "{err}"
    );
}

#[test]
fn tenant_ids_follow_the_spec_rules() {
    for ok in ["business_1", "ü-кафе", "a.b", "...", &"x".repeat(128)] {
        assert_eq!(validate_tenant_id(ok), Ok(()), "{ok}");
    }
    for (bad, says) in [
        ("", "empty"),
        ("a/b", "`/`"),
        ("/", "`/`"),
        (".", "not allowed"),
        ("..", "not allowed"),
        ("a b", "whitespace"),
        ("a\u{1b}[2Jb", "control"),
    ] {
        let err = validate_tenant_id(bad).unwrap_err();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    assert!(validate_tenant_id(&"x".repeat(129))
        .unwrap_err()
        .contains("129 bytes"));

    // The same rule for tenants.ids, tenants.file and [tenants.urls] keys; the offending id is
    // named, escaped, so a control character cannot reach the terminal.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.txt"),
        "ok\n..\nx/y # comment\n\u{1b}]0;pwned\u{7}\n",
    )
    .unwrap();
    let text = MINIMAL.replace(
        "ids = [\"t1\"]",
        "ids = [\"t1\", \".\", \"a/b\", \"\\u001b[2J\"]\nfile = \"t.txt\"\n[tenants.urls]\n\"..\" = \"ws://x/\"\n\"t/1\" = \"ws://x/\"",
    );
    let err = Config::from_toml_str(&text, dir.path(), &ENV).unwrap_err();
    let shown = shown(&err);
    for named in [
        "\".\"",
        "\"a/b\"",
        "\\u{1b}[2J",
        "line 2",
        "\"..\"",
        "line 3",
        "\"x/y\"",
        "line 4",
        "\"t/1\"",
    ] {
        assert!(shown.contains(named), "{named} not in {shown}");
    }
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert_eq!(
        paths(&err),
        BTreeSet::from([
            "tenants.ids[1]",
            "tenants.ids[2]",
            "tenants.ids[3]",
            "tenants.file",
            "tenants.urls.\"..\"",
            "tenants.urls.\"t/1\""
        ])
    );
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn gateway_token_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("token"), " file-token-31\n", 0o600);
    let text = MINIMAL.replace("[backend]", "token_file = \"token\"\n[backend]");
    let config = Config::from_toml_str(&text, dir.path(), &ENV).unwrap();
    let g = &config.gateway;
    assert_eq!(g.token.as_ref().map(Secret::expose), Some("file-token-31"));
    assert_eq!(
        g.token_file.as_deref(),
        Some(dir.path().join("token").as_path())
    );
    assert_eq!(g.token_env, None);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let summary = config.summary();
    assert!(
        summary.contains("<redacted> (from gateway.token_file"),
        "{summary}"
    );
    assert!(!summary.contains("file-token-31") && !format!("{config:?}").contains("file-token-31"));
    let auth = g
        .request_headers()
        .remove(http::header::AUTHORIZATION)
        .unwrap();
    assert_eq!(auth, "Bearer file-token-31");
    assert!(auth.is_sensitive());

    // Readable by everyone: allowed, with a warning.
    write_private(&dir.path().join("token"), "file-token-31", 0o644);
    let config = Config::from_toml_str(&text, dir.path(), &ENV).unwrap();
    assert!(config
        .warnings
        .iter()
        .any(|w| w.contains("gateway.token_file") && w.contains("chmod 600")));

    // Empty, missing, or given together with another source.
    write_private(&dir.path().join("token"), " \n", 0o600);
    let err = Config::from_toml_str(&text, dir.path(), &ENV).unwrap_err();
    assert!(
        message(&err, "gateway.token_file").contains("is empty"),
        "{err}"
    );
    let err = fail(&text);
    assert!(
        message(&err, "gateway.token_file").contains("cannot read"),
        "{err}"
    );
    let env = [(ENV_SHARED_SECRET, SECRET), ("GW", "x")];
    let two = text.replace("token_file", "token_env = \"GW\"\ntoken_file");
    assert_eq!(
        message(&fail_with(&two, &env), "gateway.token_file"),
        "set either gateway.token_env or gateway.token_file, not both"
    );
    let three = two.replace("token_env", "token = \"t\"\ntoken_env");
    assert!(message(&fail_with(&three, &env), "gateway.token_file").contains("only one of"));
}

#[test]
fn gateway_headers_from_the_environment() {
    let text = MINIMAL.replace(
        "[backend]",
        "[gateway.headers]\nX-Plain = \"plain-77\"\n[gateway.headers_env]\nX-Api-Key = \"WAHA_KEY\"\n[backend]",
    );
    let env = [(ENV_SHARED_SECRET, SECRET), ("WAHA_KEY", " env-key-88 ")];
    let config = load_with(&text, &env);
    let headers = config.gateway.request_headers();
    assert_eq!(headers.len(), 2);
    assert_eq!(headers["x-api-key"], "env-key-88");
    assert_eq!(headers["x-plain"], "plain-77");
    assert!(headers.values().all(HeaderValue::is_sensitive));
    let summary = config.summary();
    assert!(
        summary.contains("X-Plain: <redacted>, X-Api-Key: <redacted> (from env WAHA_KEY)"),
        "{summary}"
    );
    for shown in [summary, format!("{config:?}")] {
        assert!(
            !shown.contains("env-key-88") && !shown.contains("plain-77"),
            "{shown}"
        );
    }

    // A missing variable is named; a bad value, a clash and a wrong type are refused.
    let err = fail(&text);
    assert!(
        message(&err, "gateway.headers_env.X-Api-Key").contains("WAHA_KEY is not set"),
        "{err}"
    );
    let err = fail_with(&text, &[(ENV_SHARED_SECRET, SECRET), ("WAHA_KEY", "a\nb")]);
    assert!(
        message(&err, "gateway.headers_env.X-Api-Key").contains("printable ASCII"),
        "{err}"
    );
    let err = fail_with(&text.replace("X-Plain", "x-api-key"), &env);
    assert!(
        message(&err, "gateway.headers_env.X-Api-Key").contains("given twice"),
        "{err}"
    );
    let err = fail_with(&text.replace("\"WAHA_KEY\"", "1"), &env);
    assert!(
        message(&err, "gateway.headers_env.X-Api-Key").contains("name of an env var"),
        "{err}"
    );
    let err = fail_with(&text.replace("X-Api-Key =", "Sec-WebSocket-Key ="), &env);
    assert_eq!(
        paths(&err),
        BTreeSet::from(["gateway.headers_env.Sec-WebSocket-Key"])
    );
}

#[test]
fn redact_url_hides_passwords_and_query_values() {
    for (url, redacted) in [
        ("https://b:8000/x", "https://b:8000/x"),
        ("http://user:pw@b:8000/x", "http://user:<redacted>@b:8000/x"),
        ("http://user@b/", "http://user@b/"),
        (
            "wss://gw/ws?api_key=k1&session=*",
            "wss://gw/ws?api_key=<redacted>&session=<redacted>",
        ),
        (
            "ws://gw/ws/{tenant}?t={tenant}&token",
            "ws://gw/ws/{tenant}?t={tenant}&<redacted>",
        ),
        ("http://a:b@c?d=e#f", "http://a:<redacted>@c?d=<redacted>#f"),
        (
            "not a url:pw@x?key=v",
            "not a url:<redacted>@x?key=<redacted>",
        ),
        ("", ""),
    ] {
        assert_eq!(redact_url(url), redacted, "{url}");
    }
}

#[test]
fn credentials_in_urls_never_reach_a_message_the_summary_or_debug() {
    let secrets = ["pw-41", "k-42", "k-43", "pw-44", "k-45"];
    let text = MINIMAL
        .replace(
            "ws://gw:3001/ws/{tenant}",
            "wss://u:pw-41@gw/ws/{tenant}?apikey=k-42",
        )
        .replace(
            "[backend]",
            "state_url = \"https://gw/s/{tenant}?key=k-43\"\n[backend]",
        )
        + "\n[tenants.urls]\nt1 = \"wss://u:pw-44@gw-2/ws/t1?k=k-45\"";
    let config = load(&text);
    for shown in [config.summary(), format!("{config:?}")] {
        for secret in secrets {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
    }
    // Error messages echo the URL redacted, whichever rule refused it.
    let bad = text
        .replace(
            "https://backend:8000",
            "https://u:pw-41@backend:8000/?k=k-42",
        )
        .replace("https://gw/s/", "ftp://u:pw-44@gw/s/")
        .replace("wss://u:pw-44@gw-2", "https://u:pw-44@gw-2");
    let err = fail(&bad);
    assert_eq!(
        paths(&err),
        BTreeSet::from(["backend.url", "gateway.state_url", "tenants.urls.t1"])
    );
    let env = [
        (ENV_SHARED_SECRET, SECRET),
        (ENV_BACKEND_URL, "http://u:pw-41@remote?k=k-45"),
    ];
    for shown in [shown(&err), shown(&fail_with(&text, &env))] {
        for secret in secrets {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
    }
}

/// A PEM block around a minimal DER SEQUENCE: base64 that decodes, but no certificate.
const NOT_A_CERTIFICATE: &str =
    "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";

/// `check` refuses every CA file the TLS clients would refuse at start or reload.
#[test]
fn ca_files_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca".to_string()]).unwrap();
    let ca = ca.cert.pem();
    std::fs::write(dir.path().join("ca.pem"), format!("# private CA\n{ca}")).unwrap();
    std::fs::write(dir.path().join("fake.pem"), NOT_A_CERTIFICATE).unwrap();
    std::fs::write(
        dir.path().join("mixed.pem"),
        format!("{ca}{NOT_A_CERTIFICATE}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nMAMCAQE=\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let text = MINIMAL.replace(
        "[backend]",
        "ca_file = \"ca.pem\"\n[backend]\nca_file = \"/abs/ca.pem\"",
    );
    let parse = |text: &str| Config::from_toml_str(text, dir.path(), &ENV);
    let err = parse(&text).unwrap_err();
    assert_eq!(paths(&err), BTreeSet::from(["backend.ca_file"]));
    assert!(
        message(&err, "backend.ca_file").contains("cannot read /abs/ca.pem"),
        "{err}"
    );

    let config = parse(&text.replace("/abs/ca.pem", "ca.pem")).unwrap();
    assert_eq!(config.gateway.ca_file, Some(dir.path().join("ca.pem")));
    assert_eq!(config.backend.ca_file, Some(dir.path().join("ca.pem")));
    assert!(config.summary().contains(&format!(
        "ca_file                 {}",
        dir.path().join("ca.pem").display()
    )));
    assert!(load(MINIMAL)
        .summary()
        .contains("ca_file                 (system roots only)"));

    let err = parse(&text.replace("/abs/ca.pem", "key.pem")).unwrap_err();
    assert!(
        message(&err, "backend.ca_file").contains("holds no PEM certificate"),
        "{err}"
    );
    // A block that is not base64, a block that is no certificate, and one of those after a good
    // certificate: each is refused naming its file, as the TLS client would refuse it.
    for file in ["junk.pem", "fake.pem", "mixed.pem"] {
        let err = parse(&text.replace("/abs/ca.pem", file)).unwrap_err();
        let message = message(&err, "backend.ca_file");
        assert!(
            message.contains(file) && message.contains("cannot be used as a trust anchor"),
            "{err}"
        );
    }
}

#[test]
fn plain_http_to_a_remote_backend_needs_allow_plain_http() {
    for local in [
        "http://127.0.0.1:8000",
        "http://127.9.9.9",
        "http://[::1]:8000",
        "http://LOCALHOST:1",
        "https://remote",
    ] {
        let config = load(&MINIMAL.replace("https://backend:8000", local));
        assert!(!config.backend.allow_plain_http);
        assert!(config.warnings.is_empty(), "{local}: {:?}", config.warnings);
    }
    // (A user or password in the URL is refused before this rule: see
    // `a_backend_url_with_a_user_or_password_is_refused`.)
    let remote = MINIMAL.replace("https://backend:8000", "http://10.0.0.5:8000");
    let err = fail(&remote);
    assert_eq!(paths(&err), BTreeSet::from(["backend.url"]));
    let said = message(&err, "backend.url");
    assert!(
        said.contains("allow_plain_http = true") && said.contains("https://"),
        "{said}"
    );
    // The override is refused where it was set.
    let env = [
        (ENV_SHARED_SECRET, SECRET),
        (ENV_BACKEND_URL, "http://backend.internal"),
    ];
    assert_eq!(
        paths(&fail_with(MINIMAL, &env)),
        BTreeSet::from(["env BACKEND_INTERNAL_URL"])
    );

    let allowed = remote.replace("[backend]", "[backend]\nallow_plain_http = true");
    let config = load(&allowed);
    assert!(config.backend.allow_plain_http);
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].contains("in clear") && !config.warnings[0].contains("pw-9"));
    assert!(config.summary().contains("allow_plain_http        true"));
    let err = fail(&allowed.replace("= true", "= \"yes\""));
    assert!(
        message(&err, "backend.allow_plain_http").contains("true or false"),
        "{err}"
    );
}

/// Standard Webhooks' own example secret, and a second one (24 and 32 key bytes).
const WHSEC_1: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_2: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[test]
fn signing_secrets_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signing");
    std::fs::write(
        &file,
        format!("# rotated 2026-12\n\n  {WHSEC_1}  \n{WHSEC_2}\n"),
    )
    .unwrap();
    let text = MINIMAL.replace("[backend]", "[backend]\nsigning_secret_file = \"signing\"");
    let parse = |text: &str, env: &dyn Env| Config::from_toml_str(text, dir.path(), env);

    let config = parse(&text, &ENV).unwrap();
    let b = &config.backend;
    assert_eq!(b.signing_secrets.len(), 2);
    assert_eq!(b.signing_secrets[0].key().len(), 24);
    assert_eq!(b.signing_secrets[1].key(), (0u8..32).collect::<Vec<u8>>());
    assert_eq!(b.signing_source, Some(SigningSource::File(file.clone())));
    let summary = config.summary();
    assert!(
        summary.contains("2 secret(s) <redacted> (from backend.signing_secret_file"),
        "{summary}"
    );
    for shown in [summary, format!("{config:?}")] {
        assert!(
            !shown.contains("MfKQ9r8") && !shown.contains("AAECAwQ"),
            "{shown}"
        );
    }
    assert!(load(MINIMAL)
        .summary()
        .contains("signing_secrets         (none: requests are not signed)"));
    assert!(load(MINIMAL).backend.signing_secrets.is_empty());

    // The environment wins, whitespace-separated.
    let env = [(ENV_SHARED_SECRET, SECRET), (ENV_SIGNING_SECRET, WHSEC_2)];
    let config = parse(&text, &env).unwrap();
    assert_eq!(config.backend.signing_secrets.len(), 1);
    assert_eq!(config.backend.signing_source, Some(SigningSource::Env));
    let env = [
        (ENV_SHARED_SECRET, SECRET),
        (ENV_SIGNING_SECRET, "whsec_MfKQ9r8GKYqrTwjU!! whsec_x"),
    ];
    let err = parse(MINIMAL, &env).unwrap_err();
    assert_eq!(paths(&err), BTreeSet::from(["env WEBHOOK_SIGNING_SECRET"]));
    assert!(
        shown(&err).contains("secret 1 of 2") && shown(&err).contains("secret 2 of 2"),
        "{err}"
    );
    assert!(!shown(&err).contains("MfKQ9r8"), "{err}");

    // A malformed line is named, never shown; a file without a secret is refused.
    std::fs::write(
        &file,
        format!("{WHSEC_1}\nMfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"),
    )
    .unwrap();
    let err = parse(&text, &ENV).unwrap_err();
    let said = message(&err, "backend.signing_secret_file");
    assert!(
        said.contains("line 2") && said.contains("whsec_") && !said.contains("MfKQ9r8"),
        "{said}"
    );
    std::fs::write(&file, "# none yet\n").unwrap();
    let err = parse(&text, &ENV).unwrap_err();
    assert!(
        message(&err, "backend.signing_secret_file").contains("holds no secret"),
        "{err}"
    );
    assert!(SigningSecret::parse("whsec_").is_err());
}

#[test]
fn storm_settings_go_to_the_storm_policy() {
    assert_eq!(load(MINIMAL).storm, StormPolicy::default());
    let config = load(&format!(
        "{MINIMAL}\n[debounce]\nstorm_fraction = 0.5\nstorm_min_tenants = 3\nstorm_window = \"2m\"\nstorm_hold = \"1h\""
    ));
    assert_eq!(
        config.storm,
        StormPolicy {
            fraction: 0.5,
            min_tenants: 3,
            window: Duration::from_secs(120),
            hold: Duration::from_secs(3600)
        }
    );
    let summary = config.summary();
    for line in [
        "storm_fraction          0.5",
        "storm_min_tenants       3",
        "storm_window            2m",
        "storm_hold              1h",
    ] {
        assert!(summary.contains(line), "{line} not in {summary}");
    }
    let off = load(&format!("{MINIMAL}\n[debounce]\nstorm_fraction = 0"));
    assert_eq!(off.storm.fraction, 0.0);
    assert!(off.summary().contains("storm_fraction          0 (off"));
}

#[test]
fn the_example_file_documents_every_key() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidecar.toml"))
            .unwrap();
    for section in raw::sections() {
        assert!(
            text.contains(&format!("[{section}]")),
            "[{section}] not documented"
        );
        for key in raw::section_keys(section) {
            let written = [
                format!("\n{key} = "),
                format!("\n# {key} = "),
                format!("\n# [{section}.{key}]"),
            ];
            assert!(
                written.iter().any(|w| text.contains(w.as_str())),
                "{section}.{key} not documented"
            );
        }
    }
    assert_eq!(
        Config::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidecar.toml"),
            &ENV
        )
        .unwrap()
        .storm,
        StormPolicy::default()
    );
}

/// Whatever the text, loading it returns (never panics), and what it returns shows no control
/// character but line breaks.
fn loads_without_panic(text: &str) {
    let env = [(ENV_SHARED_SECRET, SECRET), ("T", "tok")];
    let shown = match Config::from_toml_str(text, Path::new("/nonexistent"), &env) {
        Ok(config) => config.summary() + &format!("{config:?}"),
        Err(err) => err.to_string(),
    };
    assert!(
        !shown.chars().any(|c| c.is_control() && c != '\n'),
        "{shown:?}"
    );
}

/// Values that have broken config loaders: overflows, non-numbers, odd types, hostile text.
const HOSTILE: &[&str] = &[
    "\"400000000000y\"",
    "\"18446744073709551615s\"",
    "\"30d\"",
    "\"31d\"",
    "\"0s\"",
    "\"1ns\"",
    "-1",
    "0",
    "1",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "-1e308",
    "inf",
    "nan",
    "-inf",
    "0.5",
    "\"\"",
    "\"\\u0000\\u001b[2J\"",
    "\"/dev/zero\"",
    "\"/\"",
    "[]",
    "{}",
    "[[1]]",
    "[1, \"a\"]",
    "true",
    "\"..\"",
    "\"a/b\"",
    "\"ws://{tenant}\"",
    "\"http://u:p@x/?k=v\"",
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
    "\"whsec_\"",
    "\"{tenant}{tenant}\"",
    "\"ws://[::1\"",
    "1e-300",
    "4096",
    "1024",
    "\"10s\"",
    "\"5m\"",
    "\"29d 23h\"",
    "\"T\"",
    "{ X-A = \"T\" }",
];

proptest::proptest! {
    /// Configs made of every known key, a random few of them set to hostile values.
    #[test]
    fn no_hostile_value_panics_the_loader(
        edits in proptest::collection::vec((0usize..1000, 0usize..HOSTILE.len()), 0..24),
    ) {
        let keys: Vec<(&str, &str)> = (raw::sections().iter())
            .flat_map(|s| raw::section_keys(s).iter().map(move |k| (*s, *k)))
            .collect();
        let mut chosen = BTreeMap::from([
            (("gateway", "url"), "\"ws://gw/{tenant}\""),
            (("backend", "url"), "\"https://b\""),
            (("tenants", "ids"), "[\"t1\"]"),
        ]);
        for (key, value) in edits {
            chosen.insert(keys[key % keys.len()], HOSTILE[value]);
        }
        let mut text = String::new();
        for section in raw::sections() {
            text += &format!("[{section}]\n");
            for ((_, key), value) in chosen.iter().filter(|((s, _), _)| s == section) {
                text += &format!("{key} = {value}\n");
            }
        }
        loads_without_panic(&text);
    }

    #[test]
    fn no_text_panics_the_loader(text in ".{0,400}") {
        loads_without_panic(&text);
    }

    /// The example file with some lines uncommented and some values replaced by hostile ones.
    #[test]
    fn no_mutated_config_panics_the_loader(
        edits in proptest::collection::vec((0usize..400, 0usize..HOSTILE.len(), 0u8..4), 1..12),
    ) {
        let example = include_str!("../../config/sidecar.toml");
        let mut lines: Vec<String> = example.lines().map(str::to_string).collect();
        for (line, value, how) in edits {
            let line = line % lines.len();
            let uncommented = lines[line].trim_start_matches(['#', ' ']).to_string();
            lines[line] = match (how, uncommented.split_once(" = ")) {
                (0, _) => uncommented,
                (1 | 2, Some((key, _))) => format!("{key} = {}", HOSTILE[value]),
                (3, _) => format!("{}{}", lines[line], HOSTILE[value]),
                _ => String::new(),
            };
        }
        loads_without_panic(&lines.join("\n"));
    }
}

/// A config file that cannot be read says why, and names a fix only where there is one.
#[test]
fn an_unreadable_config_file_names_the_fix_that_applies() {
    let missing = Config::load(Path::new("/nonexistent/sidecar.toml"), &ENV).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("pass an existing file with --config"),
        "{missing}"
    );
    let endless = Config::load(Path::new("/dev/zero"), &ENV).unwrap_err();
    let said = endless.to_string();
    assert!(
        said.contains("not a regular file") && !said.contains("pass an existing file"),
        "{said}"
    );
    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("sidecar.toml");
    std::fs::File::create(&large)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let said = Config::load(&large, &ENV).unwrap_err().to_string();
    assert!(
        said.contains("larger than") && !said.contains("pass an existing file"),
        "{said}"
    );
}

/// A FIFO put where the config names a file is refused at once, naming the key: opening it
/// waited for ever for a writer (`check` hung; a reload blocked the signal loop, SIGTERM too).
#[test]
fn a_fifo_in_place_of_a_named_file_is_refused_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no memory effects.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let cases = [
        ("backend.secret_file", "[backend]\nsecret_file = \"pipe\""),
        (
            "backend.signing_secret_file",
            "[backend]\nsigning_secret_file = \"pipe\"",
        ),
        ("backend.ca_file", "[backend]\nca_file = \"pipe\""),
        ("gateway.ca_file", "[gateway]\nca_file = \"pipe\""),
        ("gateway.token_file", "[gateway]\ntoken_file = \"pipe\""),
        ("tenants.file", "[tenants]\nfile = \"pipe\""),
    ];
    let within = |f: Box<dyn FnOnce() -> Result<Config, ConfigError> + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f().map(|_| ()).map_err(|e| e.to_string()));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("returns without a writer")
            .expect_err("a FIFO is refused")
    };
    for (key, section) in cases {
        let (table, rest) = section.split_once('\n').unwrap();
        let text = MINIMAL.replace(table, &format!("{table}\n{rest}"));
        let base = dir.path().to_path_buf();
        // The secret file is read only when the environment gives no secret.
        let env = match key {
            "backend.secret_file" => [("", "")],
            _ => ENV,
        };
        let error = within(Box::new(move || Config::from_toml_str(&text, &base, &env)));
        let line = error
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("{key} not named: {error}"));
        assert!(line.contains("not a regular file"), "{key}: {error}");
    }
    let error = within(Box::new(move || Config::load(&fifo, &ENV)));
    assert!(error.contains("not a regular file"), "{error}");
}

/// A shared secret that `run` would refuse to send (not printable ASCII) is a config problem,
/// named at its source, whichever source gives it; `check` passed it before.
#[test]
fn a_shared_secret_that_cannot_be_a_header_is_refused_at_its_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "S\u{e9}KRIT-value\n").unwrap();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join(CREDENTIAL_NAME), "tab\there").unwrap();
    let creds_dir = creds.path().to_str().unwrap();
    let with_file = MINIMAL.replace("[backend]", "[backend]\nsecret_file = \"secret.txt\"");
    let cases: [(&str, &dyn Env, &str, &str); 3] = [
        (
            MINIMAL,
            &[(ENV_SHARED_SECRET, "caf\u{e9}")],
            "backend.secret",
            "env INTERNAL_SHARED_SECRET",
        ),
        (&with_file, &[("", "")], "backend.secret_file", "secret.txt"),
        (
            MINIMAL,
            &[(ENV_CREDENTIALS_DIRECTORY, creds_dir)],
            "backend.secret",
            CREDENTIAL_NAME,
        ),
    ];
    for (text, env, key, source) in cases {
        let err = Config::from_toml_str(text, dir.path(), env).unwrap_err();
        assert_eq!(paths(&err), BTreeSet::from([key]), "{err}");
        let message = message(&err, key);
        assert!(
            message.contains(source) && message.contains("printable ASCII"),
            "{message}"
        );
        assert!(
            !message.contains("KRIT") && !message.contains("caf"),
            "{message}"
        );
    }
}
