//! Log output. herald's lines are `event key=value …` (README, "Logs"); in
//! `json` format each becomes one JSON object — `ts`, `level`, `event` and
//! the fields — so a pipeline can parse them without regexes. Lines from
//! libraries, which follow no such convention, become `event: "log"` with
//! their text in `message`.

use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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
            let line = record.args().to_string();
            if record.target().starts_with("herald") {
                object.extend(fields(&line));
            } else {
                object.insert("event".into(), "log".into());
                object.insert("message".into(), line.into());
            }
            writeln!(buf, "{}", Value::Object(object))
        });
    }
    builder.init();
}

/// Keys whose values are numbers, and keys whose values are booleans; every
/// other value stays a string (a device id of digits is still an id).
const NUMBERS: [&str; 21] = [
    "port",
    "status",
    "duration_ms",
    "replayed",
    "window_ms",
    "events",
    "held",
    "buffered",
    "queue",
    "streams",
    "sessions",
    "buffered_events",
    "buffered_bytes",
    "published",
    "delivered",
    "kicks",
    "slow_consumers",
    "heartbeats",
    "exit_code",
    "replayed_events",
    "resets",
];
const BOOLEANS: [&str; 2] = ["resumed", "reconnect"];

/// herald's `event k=v k="quoted v" …` as JSON fields; a line of any other
/// shape as a message.
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
        if key.contains(' ') {
            fields.insert("message".into(), line.into());
            break;
        }
        let (value, remaining) = value(key, after);
        fields.insert(key.into(), value);
        rest = remaining;
    }
    fields
}

/// One value and what follows it. Quoted values are JSON strings (herald
/// quotes client text with serde_json); the values of [`NUMBERS`] and
/// [`BOOLEANS`] keys keep their type.
fn value<'a>(key: &str, text: &'a str) -> (Value, &'a str) {
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
    let typed = if NUMBERS.contains(&key) || key.starts_with("resets_") {
        raw.parse::<u64>().ok().map(Value::from)
    } else if BOOLEANS.contains(&key) {
        raw.parse::<bool>().ok().map(Value::from)
    } else {
        None
    };
    (typed.unwrap_or_else(|| Value::from(raw)), rest)
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
    fn ids_that_look_like_numbers_stay_strings() {
        let fields = Value::Object(fields("device.connected device=007 conn=true replayed=2"));
        assert_eq!(
            fields,
            json!({"event": "device.connected", "device": "007", "conn": "true", "replayed": 2})
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
