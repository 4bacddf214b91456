//! Log output. herald's lines are `event key=value …` (README, "Logs"); in
//! `json` format each becomes one JSON object — `ts`, `level`, `event` and
//! the fields — so a pipeline can parse them without regexes. Lines from
//! libraries, which follow no such convention, become `event: "log"` with
//! their text in `message`.

use std::io::Write as _;

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs env_logger with `level` as the default filter (`RUST_LOG` wins).
pub fn init(level: &str, format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let mut object = Map::new();
            object.insert("ts".into(), buf.timestamp_millis().to_string().into());
            object.insert("level".into(), record.level().as_str().into());
            object.insert("target".into(), record.target().into());
            object.extend(fields(&record.args().to_string()));
            writeln!(buf, "{}", Value::Object(object))
        });
    }
    builder.init();
}

/// `event k=v k="quoted v" …` as JSON fields; anything else as a message.
fn fields(line: &str) -> Map<String, Value> {
    let mut fields = Map::new();
    let (event, mut rest) = line.split_once(' ').unwrap_or((line, ""));
    let is_event = !event.is_empty() && event.contains('.') && !event.contains('=');
    if !is_event {
        fields.insert("event".into(), "log".into());
        fields.insert("message".into(), line.into());
        return fields;
    }
    fields.insert("event".into(), event.into());
    while let Some((key, after)) = rest.trim_start().split_once('=') {
        let (value, remaining) = value(after);
        fields.insert(key.into(), value);
        rest = remaining;
    }
    fields
}

/// One value and what follows it. Quoted values are Rust `{:?}` strings;
/// numbers and booleans keep their type.
fn value(text: &str) -> (Value, &str) {
    if text.starts_with('"') {
        let mut escaped = false;
        let end = text
            .char_indices()
            .skip(1)
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(text.len(), |(i, _)| i + 1);
        let quoted = &text[..end];
        let value =
            serde_json::from_str(quoted).unwrap_or_else(|_| Value::from(quoted.trim_matches('"')));
        return (value, &text[end..]);
    }
    let (raw, rest) = text.split_once(' ').unwrap_or((text, ""));
    let value = raw
        .parse::<u64>()
        .map(Value::from)
        .or_else(|_| raw.parse::<bool>().map(Value::from))
        .unwrap_or_else(|_| Value::from(raw));
    (value, rest)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn herald_lines_become_typed_fields() {
        let line = r#"session.reset device=edge-1 conn=c1 reason=invalid last_event_id="a \"b\" c" replayed=3 resumed=false"#;
        assert_eq!(
            Value::Object(fields(line)),
            json!({"event": "session.reset", "device": "edge-1", "conn": "c1", "reason": "invalid",
                   "last_event_id": "a \"b\" c", "replayed": 3, "resumed": false})
        );
    }

    #[test]
    fn other_lines_keep_their_text() {
        assert_eq!(
            Value::Object(fields("starting 2 workers")),
            json!({"event": "log", "message": "starting 2 workers"})
        );
        assert_eq!(
            Value::Object(fields("server.stopped")),
            json!({"event": "server.stopped"})
        );
    }
}
