//! Runs the real `ringproxy` binary with `--check-config` (and `--help`) on good and bad
//! configurations: exit codes, the effective-configuration summary, and error messages that name
//! the offending key; and the process options of MySQL Proxy's wrappers run for real (--keepalive,
//! --daemon, --pid-file, --basedir, --log-file).

use std::io::Write;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ringproxy");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("ringproxy runs")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file.flush().expect("flush temp file");
    file
}

fn path_of(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().expect("utf-8 temp path")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the run was refused as a configuration error and returns stderr.
fn refused(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("ringproxy: "), "stderr: {err}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", stdout(out));
    err
}

const GOOD: &str = r#"
[proxy]
listen = ["127.0.0.1:16033"]
pooled_listen = ["127.0.0.1:16034", "127.0.0.1:16035"]
backends = ["127.0.0.1:13306", "127.0.0.1:13307"]
max_connections = 500
max_packet_size = "16MiB"
connect_timeout_ms = 1500
drain_timeout_ms = 2500
backend_source = "127.0.0.1"
max_connections_per_source = 20
max_memory = "512MiB"
handshake_timeout_ms = 3000
idle_timeout_ms = 600000
linger_timeout_ms = 1000
prewarm = 4
prewarm_max_age_ms = 1500
backend_handshake_timeout_ms = 5000
max_backend_connections = 50
pool_idle_timeout_ms = 30000
pool_min_idle = 1
autocommit_off_pins = false
pool_max_age_ms = 600000
pool_ping_after_ms = 2000
pool_wait_timeout_ms = 4000
auth_failure_delay_ms = 250

[runtime]
workers = 2
pin_cpus = false
ring_entries = 1024
buffer_size = "32KiB"
buffer_count = 256
send_high_water = "2MiB"

[log]
level = "warn"

[monitor]
user = "ringproxy_monitor"
password = "monitor secret"
users_refresh_ms = 2000

[[users]]
name = "app"
password = "app secret"
default_schema = "app"
max_connections = 100

[[users]]
name = "reporting"
password = "*5bcb3e6ac345b435c7c2e6b7949a04ce6f6563d3"
active = false

[[users]]
name = "analyst"
password = "$A$005$0123456789abcdefghijX/EGRYgh0z0TXlVoCCMHLQ2mp80BoDTZpoxr6Bcy/m6"
default_hostgroup = 0
"#;

/// The keys of pooled mode in GOOD's `[proxy]` table.
const POOLED_PROXY_KEYS: &[&str] = &[
    "pooled_listen",
    "max_backend_connections",
    "pool_idle_timeout_ms",
    "pool_min_idle",
    "autocommit_off_pins",
    "pool_max_age_ms",
    "pool_ping_after_ms",
    "pool_wait_timeout_ms",
    "auth_failure_delay_ms",
];

/// GOOD without pooled mode: its pass-through keys only (no pooled keys, `[monitor]` or users).
fn good_pass_through() -> String {
    let before_monitor = GOOD.split("\n[monitor]").next().unwrap();
    let lines = before_monitor.lines().filter(|line| {
        !POOLED_PROXY_KEYS
            .iter()
            .any(|key| line.starts_with(&format!("{key} = ")))
    });
    lines.map(|line| format!("{line}\n")).collect()
}

#[test]
fn good_file_prints_the_effective_configuration() {
    let file = config_file(GOOD);
    let out = run(&["--config", path_of(&file), "--check-config"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let summary = stdout(&out);
    for line in [
        "listen = [\"127.0.0.1:16033\"]",
        "backends = [\"127.0.0.1:13306\", \"127.0.0.1:13307\"]",
        "max_connections = 500",
        "max_packet_size = \"16MiB\"",
        "connect_timeout_ms = 1500",
        "drain_timeout_ms = 2500",
        "backend_source = \"127.0.0.1\"",
        "max_connections_per_source = 20",
        "max_memory = \"512MiB\"",
        "handshake_timeout_ms = 3000",
        "idle_timeout_ms = 600000",
        "linger_timeout_ms = 1000",
        "prewarm = 4",
        "prewarm_max_age_ms = 1500",
        "backend_handshake_timeout_ms = 5000",
        "workers = 2",
        "pin_cpus = false",
        "ring_entries = 1024",
        "buffer_size = \"32KiB\"",
        "buffer_count = 256",
        "send_high_water = \"2MiB\"",
        "level = \"warn\"",
        "pooled_listen = [\"127.0.0.1:16034\", \"127.0.0.1:16035\"]",
        "max_backend_connections = 50",
        "pool_idle_timeout_ms = 30000",
        "pool_min_idle = 1",
        "autocommit_off_pins = false",
        "pool_max_age_ms = 600000",
        "pool_ping_after_ms = 2000",
        "pool_wait_timeout_ms = 4000",
        "auth_failure_delay_ms = 250",
        "monitor.user = \"ringproxy_monitor\"",
        "monitor.password = \"monitor secret\"",
        "users_refresh_ms = 2000",
        "\n[[users]]\nname = \"app\"\npassword = \"app secret\"\ndefault_schema = \"app\"\n\
         max_connections = 100\nactive = true\ndefault_hostgroup = 0\n",
        "\n[[users]]\nname = \"reporting\"\npassword = \"*5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3\"\n\
         max_connections = 0\nactive = false\ndefault_hostgroup = 0\n",
        // A caching_sha2_password hash is printed as it was written.
        "\n[[users]]\nname = \"analyst\"\n\
         password = \"$A$005$0123456789abcdefghijX/EGRYgh0z0TXlVoCCMHLQ2mp80BoDTZpoxr6Bcy/m6\"\n\
         max_connections = 0\nactive = true\ndefault_hostgroup = 0\n",
    ] {
        assert!(summary.contains(line), "missing {line:?} in:\n{summary}");
    }
    // One line per key (the pass-through keys fit one 24-line screen, see
    // `pass_through_summary_fits_one_screen`; pooled mode adds its 12), then the users.
    let (keys, users) = summary
        .split_once("\n\n[[users]]")
        .expect("users at the end");
    assert!(
        keys.lines().count() <= 24 + 12,
        "one line per key:\n{summary}"
    );
    assert_eq!(users.matches("[[users]]").count(), 2, "{summary}");
}

#[test]
fn pass_through_summary_fits_one_screen() {
    let file = config_file(&good_pass_through());
    let out = run(&["--config", path_of(&file), "--check-config"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let summary = stdout(&out);
    assert!(
        summary.contains("listen = [\"127.0.0.1:16033\"]"),
        "{summary}"
    );
    assert!(summary.lines().count() <= 24, "one screen:\n{summary}");
    // Pooled mode's keys stay out while they hold their defaults and no pooled listener is set.
    for key in POOLED_PROXY_KEYS
        .iter()
        .chain(&["monitor", "users", "pool"])
    {
        assert!(!summary.contains(key), "{key} in:\n{summary}");
    }
}

#[test]
fn pooled_listen_alone_means_no_pass_through_listener() {
    let out = run(&[
        "--pooled-listen",
        "127.0.0.1:6034",
        "--backend=127.0.0.1:3306",
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let summary = stdout(&out);
    for line in [
        "\nproxy.listen = []\n",
        "\nproxy.pooled_listen = [\"127.0.0.1:6034\"]\n",
        "\nproxy.max_backend_connections = 100\n",
        "\nproxy.pool_idle_timeout_ms = 60000\n",
        "\nproxy.pool_max_age_ms = 3600000\n",
        "\nproxy.pool_ping_after_ms = 10000\n",
        "\nproxy.pool_wait_timeout_ms = 10000\n",
        "\nproxy.auth_failure_delay_ms = 1000\n",
        "\nmonitor.users_refresh_ms = 5000\n",
    ] {
        assert!(summary.contains(line), "missing {line:?} in:\n{summary}");
    }
    assert!(!summary.contains("monitor.user ="), "unset: {summary}");
    assert!(!summary.contains("monitor.password ="), "unset: {summary}");
    // And it feeds back.
    let again = config_file(&summary);
    let second = run(&["--config", path_of(&again), "--check-config"]);
    assert_eq!(second.status.code(), Some(0), "stderr: {}", stderr(&second));
    assert_eq!(stdout(&second), summary);
}

#[test]
fn listener_rules_name_the_keys() {
    let err = refused(&run(&[
        "--backend=127.0.0.1:3306",
        "--listen=127.0.0.1:6033,127.0.0.1:6034",
        "--pooled-listen=127.0.0.1:6034",
        "--check-config",
    ]));
    assert!(
        err.contains("--pooled-listen: 127.0.0.1:6034 is also in --listen"),
        "{err}"
    );
    let file = config_file("[proxy]\nlisten = []\n");
    let err = refused(&run(&[
        "--config",
        path_of(&file),
        "--backend=127.0.0.1:3306",
        "--check-config",
    ]));
    assert!(
        err.contains("proxy.listen: at least one address is required (IP:PORT), here or in proxy.pooled_listen"),
        "{err}"
    );
}

#[test]
fn users_and_the_monitor_account_are_checked() {
    let err = refused(&run(&[
        "--backend=127.0.0.1:3306",
        "--monitor-user=monitor",
        "--check-config",
    ]));
    assert!(
        err.contains("monitor.password: missing: --monitor-user is set"),
        "{err}"
    );
    let user = "[[users]]\nname = \"a\"\npassword = \"x\"\n";
    for (users, expected) in [
        (
            format!("{user}[[users]]\nname = \"b\"\npasword = \"x\"\n"),
            "unknown key \"users[1].pasword\" in ",
        ),
        (
            format!("{user}{user}"),
            "users[1].name: \"a\" is already the name of users[0]",
        ),
        (
            "[[users]]\nname = \"a\"\npassword = \"*ABCDEF\"\n".to_owned(),
            "users[0].password: starts with \"*\" but is not a mysql_native_password hash",
        ),
        (
            "[[users]]\nname = \"a\"\npassword = \"x\"\nmax_connections = \"ten\"\n".to_owned(),
            "users[0].max_connections: ",
        ),
        (
            "[[users]]\nname = \"a\"\npassword = \"$A$005$ABCDEF\"\n".to_owned(),
            "users[0].password: starts with \"$A$\" but is not a caching_sha2_password hash",
        ),
        (
            "[[users]]\nname = \"a\"\npassword = \"x\"\ndefault_hostgroup = 2\n".to_owned(),
            "users[0].default_hostgroup: 2 is not a hostgroup: only hostgroup 0 (all backends, \
             proxy.backends) exists yet",
        ),
    ] {
        let file = config_file(&users);
        let err = refused(&run(&[
            "--config",
            path_of(&file),
            "--backend=127.0.0.1:3306",
            "--pooled-listen=127.0.0.1:6034",
            "--check-config",
        ]));
        assert!(err.contains(expected), "{users}: {err}");
        assert!(!err.contains("ABCDEF"), "a password is never echoed: {err}");
    }
}

#[test]
fn command_line_overrides_the_file() {
    let file = config_file(GOOD);
    let out = run(&[
        "--config",
        path_of(&file),
        "--listen=127.0.0.1:1,127.0.0.1:2",
        "--workers=1",
        "--pin-cpus",
        "--max-packet-size=1M",
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let summary = stdout(&out);
    assert!(
        summary.contains("listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]"),
        "{summary}"
    );
    assert!(summary.contains("workers = 1"), "{summary}");
    assert!(summary.contains("pin_cpus = true"), "{summary}");
    assert!(summary.contains("max_packet_size = \"1MiB\""), "{summary}");
    // Untouched keys keep the file's values.
    assert!(summary.contains("ring_entries = 1024"), "{summary}");
}

#[test]
fn mysql_proxy_spellings_work() {
    let file = config_file("[runtime]\nworkers = 1\n[proxy]\nmax_connections = 10\n");
    let out = run(&[
        "--defaults-file",
        path_of(&file),
        "--proxy-address=127.0.0.1:4040",
        "--proxy-backend-addresses=127.0.0.1:3306,127.0.0.1:3307",
        "--event-threads=3",
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let summary = stdout(&out);
    assert!(
        summary.contains("listen = [\"127.0.0.1:4040\"]"),
        "{summary}"
    );
    assert!(
        summary.contains("backends = [\"127.0.0.1:3306\", \"127.0.0.1:3307\"]"),
        "{summary}"
    );
    assert!(summary.contains("workers = 3"), "{summary}");
}

#[test]
fn summary_feeds_back_as_a_config_file() {
    let file = config_file(GOOD);
    let first = run(&["--config", path_of(&file), "--check-config"]);
    assert_eq!(first.status.code(), Some(0), "stderr: {}", stderr(&first));
    let again = config_file(&stdout(&first));
    let second = run(&["--config", path_of(&again), "--check-config"]);
    assert_eq!(second.status.code(), Some(0), "stderr: {}", stderr(&second));
    assert_eq!(stdout(&first), stdout(&second));
}

#[test]
fn unknown_key_is_named_with_the_file() {
    let file = config_file("[proxy]\nlisen = [\"127.0.0.1:1\"]\nbackends = [\"127.0.0.1:2\"]\n");
    let err = refused(&run(&["--config", path_of(&file), "--check-config"]));
    assert!(
        err.contains(&format!(
            "unknown key \"proxy.lisen\" in {}",
            path_of(&file)
        )),
        "{err}"
    );
}

#[test]
fn bad_address_in_the_file_names_the_key() {
    let file =
        config_file("[proxy]\nlisten = [\"127.0.0.1:99999\"]\nbackends = [\"127.0.0.1:2\"]\n");
    let err = refused(&run(&["--config", path_of(&file), "--check-config"]));
    assert!(
        err.contains("proxy.listen: \"127.0.0.1:99999\" is not a valid address (expected IP:PORT)"),
        "{err}"
    );
}

#[test]
fn bad_address_on_the_command_line_names_the_flag() {
    let err = refused(&run(&["--backend=db.example:3306", "--check-config"]));
    assert!(
        err.contains("--backend: \"db.example:3306\" is not a valid address"),
        "{err}"
    );
}

#[test]
fn missing_backends_are_refused() {
    let err = refused(&run(&["--check-config"]));
    assert!(err.contains("proxy.backends"), "{err}");
}

#[test]
fn wrong_type_names_the_key() {
    let file =
        config_file("[proxy]\nbackends = [\"127.0.0.1:2\"]\n[runtime]\nring_entries = \"big\"\n");
    let err = refused(&run(&["--config", path_of(&file), "--check-config"]));
    assert!(err.contains("runtime.ring_entries"), "{err}");
}

#[test]
fn out_of_range_values_name_the_key() {
    for (toml, key) in [
        ("[runtime]\nring_entries = 100\n", "runtime.ring_entries"),
        ("[runtime]\nbuffer_count = 65536\n", "runtime.buffer_count"),
        ("[runtime]\nbuffer_size = \"2MiB\"\n", "runtime.buffer_size"),
        (
            "[runtime]\nsend_high_water = \"1KiB\"\n",
            "runtime.send_high_water",
        ),
        ("[runtime]\nworkers = 2000\n", "runtime.workers"),
        ("[log]\nlevel = \"chatty\"\n", "log.level"),
        ("[proxy]\nmax_connections = 0\n", "proxy.max_connections"),
        ("[proxy]\nmax_memory = \"8MiB\"\n", "proxy.max_memory"),
        (
            "[proxy]\nhandshake_timeout_ms = 0\n",
            "proxy.handshake_timeout_ms",
        ),
        (
            "[proxy]\nidle_timeout_ms = 86400001\n",
            "proxy.idle_timeout_ms",
        ),
        (
            "[proxy]\nlinger_timeout_ms = 0\n",
            "proxy.linger_timeout_ms",
        ),
        ("[proxy]\nprewarm = 1025\n", "proxy.prewarm"),
        (
            "[proxy]\nprewarm_max_age_ms = 99\n",
            "proxy.prewarm_max_age_ms",
        ),
        (
            "[proxy]\nbackend_handshake_timeout_ms = 999\n",
            "proxy.backend_handshake_timeout_ms",
        ),
        (
            "[proxy]\nbackend_source = \"127.0.0.2:3306\"\n",
            "proxy.backend_source",
        ),
        // Only the age was set, so the cross-key check names it.
        (
            "[proxy]\nprewarm_max_age_ms = 9000\n",
            "proxy.prewarm_max_age_ms",
        ),
        (
            "[proxy]\npooled_listen = [\"127.0.0.1:99999\"]\n",
            "proxy.pooled_listen",
        ),
        (
            "[proxy]\nmax_backend_connections = 0\n",
            "proxy.max_backend_connections",
        ),
        (
            "[proxy]\nmax_backend_connections = 100001\n",
            "proxy.max_backend_connections",
        ),
        (
            "[proxy]\npool_idle_timeout_ms = 86400001\n",
            "proxy.pool_idle_timeout_ms",
        ),
        (
            "[proxy]\npool_max_age_ms = 86400001\n",
            "proxy.pool_max_age_ms",
        ),
        (
            "[proxy]\npool_ping_after_ms = 86400001\n",
            "proxy.pool_ping_after_ms",
        ),
        (
            "[proxy]\npool_wait_timeout_ms = 0\n",
            "proxy.pool_wait_timeout_ms",
        ),
        (
            "[proxy]\nauth_failure_delay_ms = 60001\n",
            "proxy.auth_failure_delay_ms",
        ),
        (
            "[monitor]\nusers_refresh_ms = 99\n",
            "monitor.users_refresh_ms",
        ),
        ("[monitor]\nuser = \"\"\npassword = \"x\"\n", "monitor.user"),
        ("[monitor]\nuser = \"m\"\n", "monitor.password"),
        (
            "[[users]]\nname = \"a\"\npassword = \"*XYZ\"\n",
            "users[0].password",
        ),
        (
            "[[users]]\nname = \"a\"\npassword = \"$A$005$XYZ\"\n",
            "users[0].password",
        ),
        (
            "[[users]]\nname = \"a\"\npassword = \"x\"\ndefault_hostgroup = 1\n",
            "users[0].default_hostgroup",
        ),
    ] {
        let file = config_file(toml);
        let out = run(&[
            "--config",
            path_of(&file),
            "--backend=127.0.0.1:3306",
            "--check-config",
        ]);
        let err = refused(&out);
        assert!(err.contains(&format!("{key}: ")), "{key}: {err}");
    }
}

#[test]
fn new_options_on_the_command_line_name_the_flag() {
    let err = refused(&run(&[
        "--backend=127.0.0.1:3306",
        "--prewarm-max-age-ms=2000",
        "--backend-handshake-timeout-ms=1500",
        "--check-config",
    ]));
    assert!(
        err.contains(
            "--backend-handshake-timeout-ms: 1500 is not above --prewarm-max-age-ms (2000)"
        ),
        "{err}"
    );
    let err = refused(&run(&[
        "--backend=127.0.0.1:3306",
        "--backend-source=localhost",
        "--check-config",
    ]));
    assert!(
        err.contains("--backend-source: \"localhost\" is not a valid IP address"),
        "{err}"
    );
    let out = run(&[
        "--backend=127.0.0.1:3306",
        "--max-memory=0",
        "--idle-timeout-ms=30000",
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let summary = stdout(&out);
    assert!(summary.contains("max_memory = 0  # no limit"), "{summary}");
    assert!(summary.contains("idle_timeout_ms = 30000"), "{summary}");
    assert!(summary.contains("max_packet_size = \"1GiB\""), "{summary}");
}

#[test]
fn too_many_connections_explains_the_fixed_file_ceiling() {
    // One worker can never hold a million clients: the table is capped at 2^20 slots.
    let err = refused(&run(&[
        "--backend=127.0.0.1:3306",
        "--workers=1",
        "--max-connections=1000000",
        "--check-config",
    ]));
    assert!(err.contains("--max-connections"), "{err}");
    assert!(
        err.contains("the ceiling is 1 workers * (RLIMIT_NOFILE "),
        "{err}"
    );
    // Left to choose (workers = 0), the proxy runs as many workers as the tables need.
    let out = run(&[
        "--pooled-listen=127.0.0.1:6999",
        "--backend=127.0.0.1:3306",
        "--max-connections=1000000",
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let summary = stdout(&out);
    // Whatever this host's RLIMIT_NOFILE, the workers chosen hold the million.
    let ceiling: u64 = summary
        .lines()
        .find(|l| l.starts_with("proxy.max_connections = "))
        .and_then(|l| l.rsplit("= ").next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no max_connections ceiling in {summary}"));
    assert!(ceiling >= 1_000_000, "{summary}");
}

#[test]
fn missing_config_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let err = refused(&run(&[
        "--config",
        missing.to_str().unwrap(),
        "--check-config",
    ]));
    assert!(err.contains("absent.toml"), "{err}");
}

#[test]
fn usage_errors_exit_with_two() {
    let out = run(&["--workers=many", "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--workers"), "{}", stderr(&out));
}

#[test]
fn help_lists_the_mysql_proxy_aliases() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for alias in [
        "--defaults-file",
        "--proxy-address",
        "--proxy-backend-addresses",
        "--event-threads",
    ] {
        assert!(help.contains(alias), "{alias} missing from --help:\n{help}");
    }
    for flag in [
        "--config",
        "--listen",
        "--backend",
        "--workers",
        "--no-pin-cpus",
        "--handshake-timeout-ms",
        "--idle-timeout-ms",
        "--max-connections-per-source",
        "--linger-timeout-ms",
        "--max-memory",
        "--prewarm",
        "--prewarm-max-age-ms",
        "--backend-handshake-timeout-ms",
        "--backend-source",
        "--pooled-listen",
        "--max-backend-connections",
        "--pool-idle-timeout-ms",
        "--pool-max-age-ms",
        "--pool-ping-after-ms",
        "--pool-wait-timeout-ms",
        "--auth-failure-delay-ms",
        "--monitor-user",
        "--monitor-password",
        "--users-refresh-ms",
        "--check-config",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn mysql_proxy_wrapper_options_are_accepted() {
    let out = run(&[
        "--proxy-address=127.0.0.1:4040",
        "--proxy-backend-addresses=127.0.0.1:3306",
        "--proxy-read-only-backend-addresses=127.0.0.1:3307",
        "--proxy-read-only-backend-addresses=127.0.0.1:3308",
        "--proxy-lua-script=/etc/mysql-proxy/rw.lua",
        "--plugin-dir=/usr/lib/mysql-proxy/plugins",
        "--plugins=proxy",
        "--proxy-skip-profiling",
        "--log-level=message",
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let summary = stdout(&out);
    for line in [
        "proxy.read_only_backends = [\"127.0.0.1:3307\", \"127.0.0.1:3308\"]\n",
        "script.lua_script = \"/etc/mysql-proxy/rw.lua\"\n",
        "script.lua_executor_thread = false\n",
        "script.lua_max_instructions = 10000000\n",
        "log.level = \"info\"\n",
    ] {
        assert!(summary.contains(line), "{line:?} missing:\n{summary}");
    }
}

#[test]
fn mysql_proxy_options_ringproxy_cannot_honour_are_refused() {
    for (args, expect) in [
        (&["--plugins=proxy,admin"][..], "\"admin\" is not available"),
        (&["--plugins=debug"][..], "only the proxy plugin exists"),
        (
            &["--no-proxy"][..],
            "--no-proxy: ringproxy has no module to run",
        ),
        (&["--proxy-pool-no-change-user"][..], "unexpected argument"),
    ] {
        let mut all = vec!["--backend=127.0.0.1:3306", "--check-config"];
        all.extend_from_slice(args);
        let out = run(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind")
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The children of process `pid` (from /proc/*/stat).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid this test started; at worst it is gone (ESRCH).
    unsafe { libc::kill(pid, sig) };
}

#[test]
fn keepalive_restarts_the_proxy_and_basedir_pid_file_log_file_work() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut supervisor = Command::new(BIN)
        .args(["--basedir", dir.path().to_str().unwrap()])
        .args([
            "--pid-file",
            "rp.pid",
            "--log-file",
            "rp.log",
            "--keepalive",
        ])
        .args([
            &format!("--listen=127.0.0.1:{port}"),
            "--backend=127.0.0.1:1",
        ])
        .args(["--workers", "1"])
        .spawn()
        .unwrap();
    let (pid_file, log_file) = (dir.path().join("rp.pid"), dir.path().join("rp.log"));
    wait_until("the pid file", || read_pid(&pid_file).is_some());
    assert_eq!(read_pid(&pid_file), Some(supervisor.id() as i32));
    wait_until("the proxy listening", || accepts(port));
    let first = children(supervisor.id() as i32);
    assert_eq!(first.len(), 1, "{first:?}");
    signal(first[0], libc::SIGKILL);
    wait_until("another proxy", || {
        let now = children(supervisor.id() as i32);
        now.len() == 1 && now[0] != first[0] && accepts(port)
    });
    signal(supervisor.id() as i32, libc::SIGTERM);
    let status = supervisor.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!pid_file.exists(), "the pid file stays");
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("--keepalive: the proxy died"), "{log}");
    assert_eq!(log.matches("ringproxy listening on").count(), 2, "{log}");
}

#[test]
fn daemon_detaches_and_writes_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pid_file = dir.path().join("rp.pid");
    let out = Command::new(BIN)
        .args(["--daemon", "--pid-file", pid_file.to_str().unwrap()])
        .args([
            &format!("--listen=127.0.0.1:{port}"),
            "--backend=127.0.0.1:1",
        ])
        .args(["--workers", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("the daemon's pid file", || read_pid(&pid_file).is_some());
    let pid = read_pid(&pid_file).unwrap();
    wait_until("the daemon listening", || accepts(port));
    signal(pid, libc::SIGTERM);
    wait_until("the daemon gone and its pid file removed", || {
        !pid_file.exists() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
}
