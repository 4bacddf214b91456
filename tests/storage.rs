//! Durable storage (the embedded backend, `herald.redb` under
//! `storage.path`) with real herald processes on real files: what a
//! publish's `202` promises survives SIGKILL; a SIGTERM restart keeps
//! buffers, retained events, TTL deadlines and reconnect blocks; and a store
//! herald cannot trust, share or write is refused out loud, never silently
//! lost.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use common::{
    ADMIN_TOKEN, EventStream, HeraldProcess, PATIENCE, data_json, herald_command, run_to_exit,
    sample, seq_of,
};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sse_stream::Sse;

const STORE_FILE: &str = "herald.redb";

/// Publishes and expects `202`; answers the event's id.
async fn publish_ok(
    herald: &HeraldProcess,
    device: &str,
    event: &str,
    data: Value,
    retain: bool,
) -> String {
    let body = json!({"event": event, "data": data, "retain": retain});
    let (status, reply) = herald.publish(device, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "publish to {device}: {reply}");
    reply["id"].as_str().expect("an event id").to_owned()
}

/// Reads `stream` up to the event with id `last` (published by the test to
/// end what it reads); answers the events before it.
async fn events_until(stream: &mut EventStream, last: &str) -> Vec<Sse> {
    let mut events = Vec::new();
    loop {
        let event = stream.next_event().await;
        if event.id.as_deref() == Some(last) {
            return events;
        }
        events.push(event);
    }
}

/// The `id` with its sequence number replaced by `seq` (same epoch).
fn id_at(id: &str, seq: u64) -> String {
    let (epoch, _) = id.rsplit_once('-').expect("an event id");
    format!("{epoch}-{seq}")
}

/// `(event, data)` of each event, for comparing sequences.
fn named(events: &[Sse]) -> Vec<(Option<&str>, Option<&str>)> {
    events
        .iter()
        .map(|e| (e.event.as_deref(), e.data.as_deref()))
        .collect()
}

/// Publisher `k`'s `n`th event: its name for itself, then 4 KiB, so a
/// commit has work to do while the next publishes queue behind it.
fn burst_data(k: usize, n: u64) -> String {
    format!("p{k}-{n}:{}", "x".repeat(4096))
}

/// The publisher and number of an intact [`burst_data`].
fn parse_burst(data: &str) -> Option<(usize, u64)> {
    let (k, n) = data.strip_prefix('p')?.split_once(':')?.0.split_once('-')?;
    let (k, n) = (k.parse().ok()?, n.parse().ok()?);
    (data == burst_data(k, n)).then_some((k, n))
}

/// A publish answered `202` was committed to disk before the answer: SIGKILL
/// in the middle of a burst of concurrent publishes loses none of them.
/// Started again on the same data, a device resuming from a position it had
/// before the burst gets every acknowledged event exactly once, in each
/// publisher's order, with the data it was acknowledged with, at consecutive
/// ids (an event whose publish was in flight at the kill may be there too,
/// after its publisher's acknowledged ones, or not at all). An event
/// published after the restart gets the next id: no id is given twice.
#[actix_web::test]
async fn after_sigkill_mid_burst_every_acknowledged_event_is_replayed_once_in_order() {
    const PUBLISHERS: usize = 8;
    const KILL_AFTER: usize = 150;
    let devices = ["burst-0", "burst-1"];
    let data = tempfile::tempdir().unwrap();
    let herald = HeraldProcess::start_on(data.path(), &[]).await;
    let mut positions = Vec::new();
    for device in devices {
        positions.push(publish_ok(&herald, device, "before", json!("before"), false).await);
    }

    // Publisher k publishes burst_data(k, 0), (k, 1), … to devices[k % 2],
    // each once the previous one was answered, until the process is gone.
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let publishers = (0..PUBLISHERS).map(|k| {
        let url = herald.url(&format!("/v1/devices/{}/events", devices[k % 2]));
        let (acknowledged, enough) = (acknowledged.clone(), enough.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acks = Vec::new();
            for n in 0_u64.. {
                let body = json!({"event": "burst", "data": burst_data(k, n)});
                let request = http.post(&url).bearer_auth(ADMIN_TOKEN).json(&body);
                // Without a whole answer, the publish is not acknowledged.
                let Ok(response) = request.send().await else {
                    break;
                };
                let status = response.status();
                let Ok(reply) = response.json::<Value>().await else {
                    break;
                };
                assert_eq!(status, StatusCode::ACCEPTED, "publisher {k}: {reply}");
                acks.push((reply["id"].as_str().expect("an id").to_owned(), n));
                if acknowledged.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                    enough.notify_one();
                }
            }
            acks
        })
    });
    let publishers: Vec<_> = publishers.collect();
    tokio::time::timeout(PATIENCE, enough.notified())
        .await
        .expect("the burst gets its acknowledgements");
    herald.kill().await;
    let acks: Vec<Vec<(String, u64)>> = join_all(publishers)
        .await
        .into_iter()
        .map(|publisher| publisher.expect("a publisher"))
        .collect();
    let total: usize = acks.iter().map(Vec::len).sum();
    assert!(total >= KILL_AFTER, "{total} publishes acknowledged");

    let herald = HeraldProcess::start_on(data.path(), &[]).await;
    for (d, device) in devices.into_iter().enumerate() {
        let position = &positions[d];
        let mut stream = herald.open(device, Some(position)).await;
        assert_eq!(
            stream.hello().await["resumed"],
            true,
            "{device}'s position survived the kill"
        );
        let marker = publish_ok(&herald, device, "marker", json!("after"), false).await;
        let replay = events_until(&mut stream, &marker).await;

        // Consecutive ids after the position, and the marker's right after
        // the last replayed one.
        let mut ids: Vec<&str> = replay
            .iter()
            .map(|e| e.id.as_deref().expect("a replayed event has an id"))
            .collect();
        ids.push(&marker);
        let consecutive: Vec<String> = (seq_of(position) + 1..)
            .take(ids.len())
            .map(|seq| id_at(position, seq))
            .collect();
        assert_eq!(ids, consecutive, "{device}: ids without gaps or reuse");

        // Every replayed event is one a publisher of this device sent, intact.
        let mut by_id = BTreeMap::new();
        let mut replayed: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for event in &replay {
            let data = event.data.as_deref().unwrap_or("");
            let published = parse_burst(data).filter(|(k, _)| k % 2 == d);
            let Some((k, n)) = published else {
                panic!(
                    "{device}: {:?} {:?}, not one of its publishes",
                    event.id, event.event
                );
            };
            assert_eq!(event.event.as_deref(), Some("burst"));
            by_id.insert(event.id.as_deref().unwrap(), (k, n));
            replayed.entry(k).or_default().push(n);
        }
        for k in (d..PUBLISHERS).step_by(2) {
            for (id, n) in &acks[k] {
                assert_eq!(
                    by_id.get(id.as_str()),
                    Some(&(k, *n)),
                    "{device}: acknowledged event {id} (publisher {k}'s {n}) replayed at its id"
                );
            }
            // Its publishes 0, 1, 2, … in order, once each: every
            // acknowledged one, and at most the one in flight at the kill.
            let acked = acks[k].len() as u64;
            let got = replayed.remove(&k).unwrap_or_default();
            assert!(
                got == (0..acked).collect::<Vec<_>>() || got == (0..=acked).collect::<Vec<_>>(),
                "{device}: publisher {k} had {acked} acknowledged, replayed in order {got:?}"
            );
        }
    }
    herald.terminate().await;
}

/// SIGTERM keeps what devices have not read. An offline device's buffered
/// and retained events survive restarts: a resume from a position taken
/// before the restarts replays exactly what follows it, and a fresh connect
/// gets the retained state. A session's TTL is a wall-clock deadline, kept
/// with the session: one that ran out while herald was down is gone when
/// herald comes back (a resume from it is reset), while its retained events
/// outlive it.
#[actix_web::test]
async fn sigterm_keeps_offline_buffers_and_retained_events_and_ends_ttls_that_ran_out_while_down() {
    let data = tempfile::tempdir().unwrap();
    let long_ttl = ("HERALD_SESSION__TTL", "1h");
    let first = HeraldProcess::start_on(data.path(), &[long_ttl]).await;
    publish_ok(&first, "keeper", "config", json!({"v": 1}), true).await;
    let mut notes = Vec::new();
    for n in 0..4 {
        let id = publish_ok(&first, "keeper", "note", json!(format!("n{n}")), false).await;
        notes.push(id);
    }
    first.terminate().await;

    // A run with a short TTL: its new session must not outlive the downtime.
    let ttl = Duration::from_secs(2);
    let second = HeraldProcess::start_on(data.path(), &[("HERALD_SESSION__TTL", "2s")]).await;
    let before_publish = SystemTime::now();
    publish_ok(&second, "short", "config", json!({"v": "short"}), true).await;
    let doomed = publish_ok(&second, "short", "note", json!("doomed"), false).await;
    let after_publish = SystemTime::now();
    let (status, view) = second.admin(Method::GET, "/v1/devices/short").await;
    assert_eq!(
        (status, &view["buffered_events"]),
        (StatusCode::OK, &json!(2))
    );
    second.terminate().await;
    assert!(
        SystemTime::now() < before_publish + ttl,
        "the TTL runs out while herald is down, not while it runs"
    );
    // Waiting is the point: the TTL's deadline passes while herald is down.
    let deadline = after_publish + ttl + Duration::from_millis(50);
    if let Ok(left) = deadline.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }

    let third = HeraldProcess::start_on(data.path(), &[long_ttl]).await;
    let (status, view) = third.admin(Method::GET, "/v1/devices/short").await;
    assert_eq!(status, StatusCode::OK, "its retained event keeps it known");
    assert_eq!(
        (
            &view["buffered_events"],
            &view["last_event_id"],
            &view["retained"]
        ),
        (&json!(0), &Value::Null, &json!(1)),
        "the session is gone, its retained event is not: {view}"
    );
    let (_, view) = third.admin(Method::GET, "/v1/devices/keeper").await;
    assert_eq!(
        (
            &view["buffered_events"],
            &view["last_event_id"],
            &view["retained"]
        ),
        (&json!(5), &json!(notes[3]), &json!(1)),
        "{view}"
    );

    let mut late = third.open("short", Some(&doomed)).await;
    assert_eq!(late.hello().await["resumed"], false);
    let reset = late.next_event().await;
    assert_eq!(
        (reset.event.as_deref(), data_json(&reset)),
        (
            Some("reset"),
            json!({"reason": "unknown_epoch", "last_event_id": doomed})
        )
    );
    let marker = publish_ok(&third, "short", "marker", json!("live"), false).await;
    let state = events_until(&mut late, &marker).await;
    assert_eq!(named(&state), [(Some("config"), Some(r#"{"v":"short"}"#))]);
    assert_eq!(state[0].id, None, "retained events are state, without id");
    drop(late);

    let mut resumed = third.open("keeper", Some(&notes[0])).await;
    assert_eq!(resumed.hello().await["resumed"], true);
    let marker = publish_ok(&third, "keeper", "marker", json!("live"), false).await;
    let replay = events_until(&mut resumed, &marker).await;
    let ids: Vec<_> = replay.iter().map(|e| e.id.as_deref()).collect();
    let expected: Vec<_> = notes[1..].iter().map(|id| Some(id.as_str())).collect();
    assert_eq!(ids, expected, "exactly what follows the position");
    assert_eq!(
        named(&replay),
        [
            (Some("note"), Some("n1")),
            (Some("note"), Some("n2")),
            (Some("note"), Some("n3"))
        ]
    );
    drop(resumed);

    let mut fresh = third.open("keeper", None).await;
    assert_eq!(fresh.hello().await["resumed"], false);
    let marker = publish_ok(&third, "keeper", "marker", json!("again"), false).await;
    let state = events_until(&mut fresh, &marker).await;
    assert_eq!(named(&state), [(Some("config"), Some(r#"{"v":1}"#))]);
    assert_eq!(state[0].id, None, "retained events are state, without id");
    third.terminate().await;
}

/// With a replay cache of a few events (`storage.cache_bytes`), older
/// events leave the server's memory: a client resuming from far back gets
/// them read from the file, whole and in order, then what is published while
/// it connects.
#[actix_web::test]
async fn an_old_replay_is_read_back_from_the_file_once_its_events_left_memory() {
    const CACHE: usize = 4096;
    let cache = CACHE.to_string();
    let herald = HeraldProcess::start(&[("HERALD_STORAGE__CACHE_BYTES", &cache)]).await;
    // Over 200 bytes each: at most 20 of them fit in the cache.
    let payload = |n: usize| format!("n{n}:{}", "x".repeat(200));
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(publish_ok(&herald, "archive", "note", json!(payload(n)), false).await);
    }
    let metrics = herald.metrics().await;
    assert!(sample(&metrics, "herald_storage_cache_bytes") <= CACHE as f64);
    let (_, view) = herald.admin(Method::GET, "/v1/devices/archive").await;
    assert_eq!(view["buffered_events"], json!(100), "all still buffered");

    let mut stream = herald.open("archive", Some(&ids[0])).await;
    assert_eq!(stream.hello().await["resumed"], true);
    let live = publish_ok(&herald, "archive", "note", json!("live"), false).await;
    let replay = events_until(&mut stream, &live).await;
    let replayed: Vec<_> = (replay.iter())
        .map(|e| (e.id.clone().unwrap(), e.data.clone().unwrap()))
        .collect();
    let expected: Vec<_> = (1..100).map(|n| (ids[n].clone(), payload(n))).collect();
    assert_eq!(replayed, expected, "exactly what follows the position");
    let metrics = herald.metrics().await;
    assert!(
        sample(&metrics, "herald_storage_read_events_total") >= 79.0,
        "at most 20 of the 99 came from memory"
    );
}

/// An operator's `reconnect=false` outlives a restart: after SIGTERM and a
/// new start on the same data, the blocked device's stream request is still
/// answered `204` (EventSource stops), while other devices connect.
#[actix_web::test]
async fn a_reconnect_block_survives_a_sigterm_restart() {
    let data = tempfile::tempdir().unwrap();
    let first = HeraldProcess::start_on(data.path(), &[]).await;
    let mut stream = first.open("edge-1", None).await;
    stream.hello().await;
    let path = "/v1/devices/edge-1/connection?reconnect=false";
    let (status, _) = first.admin(Method::DELETE, path).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let kicked = stream.next_event().await;
    assert_eq!(
        (kicked.event.as_deref(), data_json(&kicked)),
        (Some("kicked"), json!({"reason": "admin"}))
    );
    first.terminate().await;

    let second = HeraldProcess::start_on(data.path(), &[]).await;
    match second.try_open("edge-1", None).await {
        Err(refusal) => assert_eq!(
            (refusal.status, refusal.body),
            (StatusCode::NO_CONTENT, Value::Null),
            "still blocked: EventSource stops on 204"
        ),
        Ok(mut stream) => panic!(
            "still blocked, but it got a stream: {}",
            stream.hello().await
        ),
    }
    let mut other = second.open("edge-2", None).await;
    assert_eq!(other.hello().await["device_id"], "edge-2");
    second.terminate().await;
}

/// One herald per data directory: a second process started on a directory
/// in use exits non-zero, its message naming the directory and saying it is
/// in use, and the first keeps serving. Once the first has exited, the
/// directory is free again, with what the first kept.
#[actix_web::test]
async fn a_second_process_on_the_same_data_directory_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let first = HeraldProcess::start_on(data.path(), &[]).await;

    let mut second = herald_command(&["--bind", "127.0.0.1:0"]);
    second.env("HERALD_STORAGE__PATH", dir);
    let output = run_to_exit(second).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}\n{stderr}", output.status);
    assert!(
        stderr.contains(&format!("{dir} is in use")),
        "names the directory, in use:\n{stderr}"
    );

    let id = publish_ok(&first, "edge-1", "note", json!("kept"), false).await;
    first.terminate().await;
    let third = HeraldProcess::start_on(data.path(), &[]).await;
    let (_, view) = third.admin(Method::GET, "/v1/devices/edge-1").await;
    assert_eq!(view["last_event_id"], json!(id), "{view}");
    third.terminate().await;
}

/// herald does not start on a store it cannot trust: a truncated store file,
/// and one with bytes overwritten in the middle (where its events are
/// stored), each make it exit non-zero with a message naming the file and
/// saying it is corrupt — rather than serving what happens to be readable.
#[actix_web::test]
async fn a_truncated_or_overwritten_store_file_is_refused_as_corrupt() {
    const MARK: &[u8] = b"stored-event-";
    let original = tempfile::tempdir().unwrap();
    let herald = HeraldProcess::start_on(original.path(), &[]).await;
    for n in 0..64 {
        let data = format!("stored-event-{n:03}-{}", "x".repeat(4000));
        publish_ok(
            &herald,
            &format!("edge-{}", n % 4),
            "note",
            json!(data),
            false,
        )
        .await;
    }
    herald.terminate().await;
    let stored = std::fs::read(original.path().join(STORE_FILE)).expect("the store file");

    let truncated = stored[..stored.len() / 2].to_vec();
    // Every copy of every event's bytes (the live one among them), in place.
    let mut overwritten = stored.clone();
    let mut hits = 0;
    let mut at = 0;
    while let Some(found) = overwritten[at..]
        .windows(MARK.len())
        .position(|window| window == MARK)
    {
        let start = at + found;
        overwritten[start..start + MARK.len()].fill(0xA5);
        (at, hits) = (start + MARK.len(), hits + 1);
    }
    assert!(hits >= 64, "the events' data is in the file ({hits} found)");

    for (what, bytes) in [("truncated", truncated), ("overwritten", overwritten)] {
        let data = tempfile::tempdir().unwrap();
        let file = data.path().join(STORE_FILE);
        std::fs::write(&file, &bytes).unwrap();
        let mut command = herald_command(&["--bind", "127.0.0.1:0"]);
        command.env("HERALD_STORAGE__PATH", data.path());
        let output = run_to_exit(command).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{what}: {}\n{stderr}",
            output.status
        );
        assert!(
            stderr.contains(&format!("{} is corrupt", file.display())),
            "{what}: names the file, corrupt:\n{stderr}"
        );
    }
}

/// A publish herald cannot make durable is refused, never half-kept: with
/// the store file unable to grow (RLIMIT_FSIZE, as a full disk), large
/// publishes are acknowledged and delivered until one is answered `507
/// storage_full` and logged as `storage.write_failed`; the refused event
/// never reaches the live stream. Restarted without the limit on the same
/// data, a resume from before the publishes replays exactly the
/// acknowledged events: nothing refused, nothing lost.
#[actix_web::test]
async fn a_publish_that_cannot_be_written_is_refused_with_507_and_leaves_no_trace() {
    let data = tempfile::tempdir().unwrap();
    // Room for every event of the test in one buffer.
    let buffer = ("HERALD_SESSION__BUFFER_BYTES", "67108864");
    let first = HeraldProcess::start_on(data.path(), &[buffer]).await;
    let position = publish_ok(&first, "edge-1", "note", json!("before"), false).await;
    first.terminate().await;
    let size = std::fs::metadata(data.path().join(STORE_FILE))
        .expect("the store file")
        .len();

    let env = [
        ("HERALD_STORAGE__PATH", data.path().to_str().unwrap()),
        buffer,
    ];
    let mut limited = HeraldProcess::start_with_file_size_limit(&env, size + (1 << 20)).await;
    let mut stream = limited.open("edge-1", Some(&position)).await;
    assert_eq!(stream.hello().await["resumed"], true);
    let big = |n: usize| format!("big-{n:03}-{}", "x".repeat(60 << 10));
    let mut acknowledged = Vec::new();
    let refused = loop {
        let n = acknowledged.len();
        assert!(n < 400, "a 60 KiB publish is refused before 24 MiB more");
        let body = json!({"event": "big", "data": big(n)});
        let (status, reply) = limited.publish("edge-1", &body).await;
        if status != StatusCode::ACCEPTED {
            break (status, reply);
        }
        let id = reply["id"].as_str().expect("an id").to_owned();
        let event = stream.next_event().await;
        assert_eq!(event.id.as_deref(), Some(id.as_str()), "delivered live");
        assert!(event.data.as_deref() == Some(big(n).as_str()), "event {id}");
        acknowledged.push(id);
    };
    assert_eq!(
        (refused.0, refused.1["error"]["code"].as_str()),
        (StatusCode::INSUFFICIENT_STORAGE, Some("storage_full")),
        "after {} acknowledged: {}",
        acknowledged.len(),
        refused.1
    );
    assert!(!acknowledged.is_empty(), "the limit leaves room for some");
    let failed = limited.expect_log(&["storage.write_failed"]).await;
    assert!(failed.contains(STORE_FILE), "{failed}");
    limited.terminate().await;
    // Until the stream's end: nothing more (the refused event never came).
    stream.expect_end().await;

    let herald = HeraldProcess::start_on(data.path(), &[buffer]).await;
    let mut stream = herald.open("edge-1", Some(&position)).await;
    assert_eq!(stream.hello().await["resumed"], true);
    let marker = publish_ok(&herald, "edge-1", "marker", json!("after"), false).await;
    let replay = events_until(&mut stream, &marker).await;
    let ids: Vec<_> = replay.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(ids, acknowledged, "exactly the acknowledged events");
    for (n, event) in replay.iter().enumerate() {
        assert!(event.data.as_deref() == Some(big(n).as_str()), "event {n}");
    }
    let after_last = id_at(&position, seq_of(acknowledged.last().unwrap()) + 1);
    assert_eq!(marker, after_last, "the refused event's id was never used");
    herald.terminate().await;
}

/// SIGTERM keeps what a stream was given: the position of a stream that was
/// open at the signal is saved as the stream ends, so after the restart a
/// fresh connect (no `Last-Event-ID`) gets only what no stream was given —
/// not again what the ended stream already received.
#[actix_web::test]
async fn sigterm_keeps_the_position_of_a_stream_open_at_the_signal() {
    let data = tempfile::tempdir().unwrap();
    let first = HeraldProcess::start_on(data.path(), &[]).await;
    let mut stream = first.open("edge-1", None).await;
    stream.hello().await;
    let seen = publish_ok(&first, "edge-1", "note", json!("seen"), false).await;
    assert_eq!(stream.next_event().await.id.as_deref(), Some(seen.as_str()));
    first.terminate().await;
    stream.expect_end().await;

    let second = HeraldProcess::start_on(data.path(), &[]).await;
    let mut fresh = second.open("edge-1", None).await;
    fresh.hello().await;
    let marker = publish_ok(&second, "edge-1", "marker", json!("live"), false).await;
    let before = events_until(&mut fresh, &marker).await;
    assert_eq!(named(&before), [], "nothing again of what a stream got");
    second.terminate().await;
}
