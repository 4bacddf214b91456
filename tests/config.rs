//! Configuration as an operator meets it: built-in defaults that are safe,
//! files that name only what they change, `HERALD_<SECTION>__<KEY>`
//! variables beside other `HERALD_*` variables, and `herald config`.

mod common;

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use common::{HeraldProcess, read_json, read_until};
use herald::{
    config::{keys_in_file, known_keys},
    tokens::DeviceTokens,
};
use herald_actors::DeviceId;
use serde_json::json;

const SECRET: &str = "a-device-secret-of-at-least-32-bytes!!";
/// All digits: it must stay text, not become a number.
const DIGIT_TOKEN: &str = "12345678901234567890";

/// The herald binary in an empty directory (so no `./config.toml`), with
/// none of the test process's `HERALD_*` variables and logging at info.
fn herald_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .current_dir(dir)
        .env_clear()
        .env("RUST_LOG", "info")
        .args(args)
        .envs(env.iter().copied());
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[actix_web::test]
async fn from_an_empty_directory_with_two_secrets_it_serves_token_streams_on_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("HERALD_ADMIN__TOKENS", DIGIT_TOKEN),
        ("HERALD_AUTH__SECRET", SECRET),
    ];
    let herald =
        HeraldProcess::spawn(herald_in(dir.path(), &["--bind", "127.0.0.1:0"], &env)).await;
    let started = herald.log_lines().last().expect("the server.started line");
    assert!(
        started.contains("config=defaults,env:HERALD_ADMIN__TOKENS+HERALD_AUTH__SECRET"),
        "the startup line names its sources: {started}"
    );
    let http = reqwest::Client::new();
    let stream_url = herald.url("/v1/devices/edge-1/events");

    // Built in, device streams need a token.
    let refused = http.get(&stream_url).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    let device = DeviceId::parse("edge-1").unwrap();
    let token = DeviceTokens::new(SECRET).mint(&device, Duration::from_secs(60));
    let response = http
        .get(&stream_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    read_until(&mut body, "event: hello").await;

    // The all-digit admin token from the environment is the admin token.
    let publish = http
        .post(herald.url("/v1/devices/edge-1/events"))
        .bearer_auth(DIGIT_TOKEN)
        .json(&json!({"event": "config", "data": {"mode": "eco"}}));
    let (status, reply) = read_json(publish).await;
    assert_eq!(status, 202, "{reply}");
    read_until(&mut body, "data: {\"mode\":\"eco\"}").await;
    herald.terminate().await;
}

#[test]
fn without_an_admin_token_or_a_device_secret_it_refuses_with_one_line_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    // What is set, and the key and variable the refusal must name.
    let cases = [
        (
            ("HERALD_AUTH__SECRET", SECRET),
            ("admin.tokens", "HERALD_ADMIN__TOKENS"),
        ),
        (
            ("HERALD_ADMIN__TOKENS", DIGIT_TOKEN),
            ("auth.secret", "HERALD_AUTH__SECRET"),
        ),
    ];
    for (set, (key, variable)) in cases {
        let output = herald_in(dir.path(), &[], &[set]).output().unwrap();
        assert!(!output.status.success());
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(key) && err.contains(variable), "{err}");
    }
}

#[test]
fn herald_token_needs_only_the_device_secret() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["token", "--device", "edge-1"];
    let output = herald_in(dir.path(), &args, &[("HERALD_AUTH__SECRET", SECRET)])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let token = String::from_utf8(output.stdout).unwrap();
    assert_eq!(token.trim_end().split('.').count(), 3, "a JWT: {token}");

    let output = herald_in(dir.path(), &args, &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("HERALD_AUTH__SECRET"));
}

#[actix_web::test]
async fn other_herald_variables_are_ignored_with_one_warning_each_never_their_value() {
    let herald = HeraldProcess::start(&[
        ("HERALD_URL", "http://value-of-herald-url.invalid"),
        ("HERALD_LOG", "value-of-herald-log"),
    ])
    .await;
    let log = herald.terminate().await;
    for variable in ["HERALD_URL", "HERALD_LOG"] {
        let warnings: Vec<&str> = log
            .lines()
            .filter(|line| line.contains(&format!("config.variable_ignored variable={variable}")))
            .collect();
        assert_eq!(warnings.len(), 1, "one warning for {variable}:\n{log}");
        assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    }
    assert!(
        !log.contains("value-of-herald"),
        "no value is logged:\n{log}"
    );
}

#[test]
fn a_variable_naming_an_unknown_section_or_key_stops_herald_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for variable in ["HERALD_NOPE__KEY", "HERALD_SERVER__NOPE"] {
        let env = [
            ("HERALD_ADMIN__TOKENS", DIGIT_TOKEN),
            ("HERALD_AUTH__SECRET", SECRET),
            (variable, "1"),
        ];
        let output = herald_in(dir.path(), &[], &env).output().unwrap();
        assert!(!output.status.success());
        assert!(stderr(&output).contains(variable), "{}", stderr(&output));
    }
}

#[test]
fn config_check_exits_0_on_a_valid_configuration_and_1_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        ("HERALD_ADMIN__TOKENS", DIGIT_TOKEN),
        ("HERALD_AUTH__SECRET", SECRET),
    ];
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["config", "check"];
        all.extend_from_slice(args);
        herald_in(dir.path(), &all, env).output().unwrap()
    };
    assert_eq!(check(&[], &secrets).status.code(), Some(0));

    let missing = check(&[], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("HERALD_ADMIN__TOKENS"));

    // A partial file: what it names, over the defaults.
    let partial = dir.path().join("partial.toml");
    std::fs::write(&partial, "[session]\nttl = \"10m\"\n").unwrap();
    let partial = partial.to_str().unwrap();
    assert_eq!(
        check(&["--config", partial], &secrets).status.code(),
        Some(0)
    );
    // A typo in a file names the key's path.
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[session]\nttll = \"10m\"\n").unwrap();
    let output = check(&["--config", typo.to_str().unwrap()], &secrets);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("session.ttll"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn config_show_prints_the_effective_configuration_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("partial.toml");
    std::fs::write(&partial, "[session]\nttl = \"10m\"\n").unwrap();
    let env = [
        (
            "HERALD_ADMIN__TOKENS",
            "first-admin-token-0001,second-admin-token-002",
        ),
        ("HERALD_AUTH__SECRET", SECRET),
        ("HERALD_SERVER__WORKERS", "3"),
    ];
    let args = ["config", "show", "--config", partial.to_str().unwrap()];
    let output = herald_in(dir.path(), &args, &env).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let shown = String::from_utf8(output.stdout).unwrap();
    for secret in ["first-admin-token-0001", "second-admin-token-002", SECRET] {
        assert!(!shown.contains(secret), "{shown}");
    }
    let shown: toml::Table = toml::from_str(&shown).unwrap();
    assert_eq!(
        shown["admin"]["tokens"].as_array().unwrap().len(),
        2,
        "{shown}"
    );
    assert_eq!(shown["auth"]["secret"].as_str(), Some("<redacted>"));
    assert_eq!(
        shown["session"]["ttl"].as_str(),
        Some("10m"),
        "from the file"
    );
    assert_eq!(
        shown["server"]["workers"].as_integer(),
        Some(3),
        "from the env"
    );
    assert_eq!(
        shown["server"]["bind"].as_str(),
        Some("127.0.0.1:8080"),
        "built in"
    );
}

#[test]
fn the_shipped_config_toml_names_every_key_the_server_knows_and_no_other() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let in_file: BTreeSet<String> = keys_in_file(&path).unwrap().into_keys().collect();
    let known: BTreeSet<String> = known_keys().into_keys().collect();
    assert_eq!(in_file, known);
}
