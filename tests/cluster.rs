//! Several herald nodes on one real redis-server (the `redis` storage
//! backend), each a real process on its own port: a device's events reach
//! it on whichever node holds its stream, a resume on any node gets exactly
//! what was missed, and one live stream per device holds cluster-wide.

mod common;

use common::{HeraldProcess, RedisServer, data_json, device_names};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A herald node named `name` on `redis`.
async fn node(redis: &RedisServer, name: &str) -> HeraldProcess {
    node_with(redis, name, &[]).await
}

/// Like [`node`], with these environment variables too.
async fn node_with(redis: &RedisServer, name: &str, env: &[(&str, &str)]) -> HeraldProcess {
    let url = redis.url();
    let mut all = vec![
        ("HERALD_STORAGE__BACKEND", "redis"),
        ("HERALD_STORAGE__REDIS__URL", url.as_str()),
        ("HERALD_SERVER__NODE_ID", name),
    ];
    all.extend_from_slice(env);
    HeraldProcess::start(&all).await
}

/// Publishes `data` as a `note` and expects `202`; answers the reply.
async fn publish(node: &HeraldProcess, device: &str, data: &str) -> Value {
    let (status, reply) = node
        .publish(device, &json!({"event": "note", "data": data}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    reply
}

#[actix_web::test]
async fn a_device_gets_what_any_node_publishes_in_order_and_a_resume_anywhere_gets_what_it_missed()
{
    let redis = RedisServer::start();
    let (one, two, three) = (
        node(&redis, "one").await,
        node(&redis, "two").await,
        node(&redis, "three").await,
    );
    let mut stream = two.open("lamp", None).await;
    stream.hello().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let reply = publish(&one, "lamp", &format!("n{n}")).await;
        assert_eq!(reply["delivered"], json!(true), "node two holds the stream");
        ids.push(reply["id"].as_str().unwrap().to_owned());
    }
    for (n, id) in ids.iter().enumerate() {
        let event = stream.next_event().await;
        assert_eq!(
            (event.id.as_deref(), event.data.as_deref()),
            (Some(id.as_str()), Some(format!("n{n}").as_str()))
        );
    }
    drop(stream);

    // Missed while away: published on node one, resumed on node three.
    let mut missed = Vec::new();
    for n in 5..8 {
        let reply = publish(&three, "lamp", &format!("n{n}")).await;
        missed.push(reply["id"].as_str().unwrap().to_owned());
    }
    let mut resumed = three.open("lamp", Some(&ids[4])).await;
    assert_eq!(resumed.hello().await["resumed"], json!(true));
    for id in &missed {
        assert_eq!(resumed.next_event().await.id.as_deref(), Some(id.as_str()));
    }
    let live = publish(&one, "lamp", "live").await;
    assert_eq!(
        resumed.next_event().await.id.as_deref(),
        live["id"].as_str(),
        "then live, nothing twice"
    );
}

#[actix_web::test]
async fn connecting_on_another_node_kicks_the_first_stream_and_only_the_newcomer_gets_events() {
    let redis = RedisServer::start();
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    let mut first = one.open("lamp", None).await;
    first.hello().await;
    let mut second = two.open("lamp", None).await;
    let newcomer = second.hello().await["connection_id"].clone();

    let kicked = first.next_event().await;
    assert_eq!(kicked.event.as_deref(), Some("kicked"));
    let kick = data_json(&kicked);
    assert_eq!(kick["reason"], json!("replaced"));
    assert_eq!(kick["connection_id"], newcomer, "names the newcomer");
    first.expect_end().await;

    let reply = publish(&one, "lamp", "after the kick").await;
    assert_eq!(reply["delivered"], json!(true));
    let event = second.next_event().await;
    assert_eq!(event.data.as_deref(), Some("after the kick"));
}

#[actix_web::test]
async fn rapid_reconnects_alternating_between_nodes_leave_one_live_stream_with_every_event() {
    let redis = RedisServer::start();
    let nodes = [node(&redis, "one").await, node(&redis, "two").await];
    let mut position: Option<String> = None;
    let mut published = Vec::new();
    let mut seen = Vec::new();
    for round in 0..50 {
        let here = &nodes[round % 2];
        let mut stream = here.open("lamp", position.as_deref()).await;
        stream.hello().await;
        let reply = publish(&nodes[(round + 1) % 2], "lamp", &format!("r{round}")).await;
        published.push(reply["id"].as_str().unwrap().to_owned());
        // Everything up to this round's event, then the next node.
        loop {
            let event = stream.next_event().await;
            let id = event.id.clone().expect("only events with ids here");
            seen.push(id.clone());
            position = Some(id.clone());
            if Some(id.as_str()) == reply["id"].as_str() {
                break;
            }
        }
    }
    assert_eq!(seen, published, "every event once, in order");
}

/// What one client saw of its device's events, by id, across its streams.
async fn follow(
    device: &str,
    mut stream: common::EventStream,
    fallback: &HeraldProcess,
) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    loop {
        let Some(event) = stream.next_or_cut().await else {
            // Its node is gone: straight to the other one, from its position.
            stream = fallback.open(device, seen.last().map(String::as_str)).await;
            assert_eq!(stream.hello().await["resumed"], json!(!seen.is_empty()));
            continue;
        };
        match event.event.as_deref() {
            Some("note") => {}
            Some("heartbeat") | None => continue,
            other => panic!("{device}: unexpected {other:?}: {event:?}"),
        }
        seen.push(event.id.clone().expect("an id"));
        if event.data.as_deref() == Some("end") {
            return seen;
        }
    }
}

#[actix_web::test]
async fn when_a_node_holding_300_streams_is_killed_its_devices_resume_on_another_with_nothing_lost()
{
    let redis = RedisServer::start();
    let (doomed, survivor) = (node(&redis, "doomed").await, node(&redis, "survivor").await);
    let devices: Vec<String> = (0..300).map(|n| format!("dev-{n:03}")).collect();
    let mut streams = Vec::new();
    for device in &devices {
        let mut stream = doomed.open(device, None).await;
        stream.hello().await;
        streams.push(stream);
    }
    let publishing = async {
        let mut published: Vec<Vec<String>> = vec![Vec::new(); devices.len()];
        let mut doomed = Some(doomed);
        for round in 0..4 {
            if round == 2 {
                // Mid-stream, between two rounds of publishes.
                doomed.take().expect("alive").kill().await;
            }
            for (n, device) in devices.iter().enumerate() {
                let reply = publish(&survivor, device, &format!("r{round}")).await;
                published[n].push(reply["id"].as_str().unwrap().to_owned());
            }
        }
        for (n, device) in devices.iter().enumerate() {
            let reply = publish(&survivor, device, "end").await;
            published[n].push(reply["id"].as_str().unwrap().to_owned());
        }
        published
    };
    let following = futures_util::future::join_all(
        (devices.iter().zip(streams)).map(|(device, stream)| follow(device, stream, &survivor)),
    );
    let (published, seen) = futures_util::join!(publishing, following);
    for ((device, published), seen) in devices.iter().zip(published).zip(seen) {
        assert_eq!(seen, published, "{device}: every event once, in order");
    }
}

#[actix_web::test]
async fn retained_events_published_on_one_node_are_the_state_a_fresh_stream_gets_on_another() {
    let redis = RedisServer::start();
    // One buffered event: the two older ones are gone from history, so a
    // fresh stream starts with `reset` and the retained state.
    let env = [
        ("HERALD_SESSION__RETAINED_PER_DEVICE", "2"),
        ("HERALD_SESSION__BUFFER_EVENTS", "1"),
    ];
    let (one, two) = (
        node_with(&redis, "one", &env).await,
        node_with(&redis, "two", &env).await,
    );
    let mut last = Value::Null;
    for (event, data) in [("config", "v1"), ("schedule", "s1"), ("config", "v2")] {
        let body = json!({"event": event, "data": data, "retain": true});
        let (status, reply) = one.publish("lamp", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
        last = reply["id"].clone();
    }
    let body = json!({"event": "third", "data": "x", "retain": true});
    let (status, reply) = one.publish("lamp", &body).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (StatusCode::INSUFFICIENT_STORAGE, &json!("retained_limit")),
        "a third name is refused, on any node"
    );

    let mut fresh = two.open("lamp", None).await;
    fresh.hello().await;
    let reset = fresh.next_event().await;
    assert_eq!(data_json(&reset)["reason"], json!("evicted"));
    // The state before the one event still buffered, without ids; then that
    // event, as history with its id.
    let state = fresh.next_event().await;
    assert_eq!(
        (state.event.as_deref(), state.data.as_deref(), state.id),
        (Some("schedule"), Some("s1"), None)
    );
    let history = fresh.next_event().await;
    assert_eq!(
        (history.event.as_deref(), history.data.as_deref()),
        (Some("config"), Some("v2"))
    );
    assert_eq!(history.id.as_deref(), last.as_str());
}

#[actix_web::test]
async fn a_session_expires_a_ttl_after_its_stream_ends_but_never_while_its_node_holds_a_stream() {
    let redis = RedisServer::start();
    let ttl = ("HERALD_SESSION__TTL", "1s");
    let mut one = node_with(&redis, "one", &[ttl]).await;
    let mut two = node_with(&redis, "two", &[ttl]).await;
    let mut live = two.open("held", None).await;
    live.hello().await;
    let mut left = one.open("left", None).await;
    left.hello().await;
    let gone = publish(&one, "left", "before").await;
    assert_eq!(left.next_event().await.id.as_deref(), gone["id"].as_str());
    drop(left);

    // Whichever node sweeps first ends it.
    let expired = ["session.expired", "device=left"];
    tokio::select! {
        _ = one.expect_log(&expired) => {}
        _ = two.expect_log(&expired) => {}
    }
    let mut late = two.open("left", gone["id"].as_str()).await;
    assert_eq!(late.hello().await["resumed"], json!(false));
    let reset = late.next_event().await;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert_eq!(data_json(&reset)["reason"], json!("expired"));

    // `held` outlived its TTL with its stream open: its session is intact.
    let reply = publish(&one, "held", "still here").await;
    assert_eq!(reply["delivered"], json!(true));
    let event = live.next_event().await;
    assert_eq!(event.id.as_deref(), reply["id"].as_str());
    let lines = one.log_lines().iter().chain(two.log_lines());
    assert!(
        !lines
            .into_iter()
            .any(|l| l.contains("session.expired device=held")),
        "held was never expired"
    );
}

#[actix_web::test]
async fn a_buffer_keeps_its_newest_events_within_its_byte_bound() {
    let redis = RedisServer::start();
    let bound = [
        ("HERALD_SESSION__BUFFER_BYTES", "40"),
        ("HERALD_LIMITS__MAX_EVENT_BYTES", "40"),
    ];
    let (one, two) = (
        node_with(&redis, "one", &bound).await,
        node_with(&redis, "two", &bound).await,
    );
    let mut ids = Vec::new();
    for n in 0..6 {
        // "note" and 10 bytes: 14 bytes each, so two fit in 40.
        let reply = publish(&one, "lamp", &format!("{n:010}")).await;
        ids.push(reply["id"].as_str().unwrap().to_owned());
    }
    let mut resumed = two.open("lamp", Some(&ids[3])).await;
    assert_eq!(resumed.hello().await["resumed"], json!(true));
    assert_eq!(
        resumed.next_event().await.id.as_deref(),
        Some(ids[4].as_str())
    );
    let mut evicted = two.open("lamp", Some(&ids[2])).await;
    evicted.hello().await;
    let reset = evicted.next_event().await;
    assert_eq!(data_json(&reset)["reason"], json!("evicted"));
}

/// Posts `body` to an admin `path` on `node`; answers status and JSON.
async fn admin_post(node: &HeraldProcess, path: &str, body: &Value) -> (StatusCode, Value) {
    let request = reqwest::Client::new()
        .post(node.url(path))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(body);
    common::read_json(request).await
}

#[actix_web::test]
async fn a_broadcast_on_one_node_reaches_every_session_on_every_node_once() {
    let redis = RedisServer::start();
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    // 450 sessions (more than two chunks of the broadcast script), made by
    // one publish to all of them.
    let devices: Vec<String> = (0..450).map(|n| format!("dev-{n:03}")).collect();
    let (status, _) = admin_post(
        &one,
        "/v1/publish",
        &json!({
            "devices": devices, "event": "note", "data": "first"
        }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut on_one = one.open("dev-001", None).await;
    on_one.hello().await;
    let mut on_two = two.open("dev-449", None).await;
    on_two.hello().await;
    for stream in [&mut on_one, &mut on_two] {
        assert_eq!(stream.next_event().await.data.as_deref(), Some("first"));
    }

    let (status, reply) = admin_post(
        &two,
        "/v1/broadcast",
        &json!({
            "event": "note", "data": "everyone"
        }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(
        (&reply["buffered"], &reply["delivered"]),
        (&json!(450), &json!(2))
    );
    for stream in [&mut on_one, &mut on_two] {
        assert_eq!(stream.next_event().await.data.as_deref(), Some("everyone"));
    }
    // An offline device has it once, after the first event.
    let mut offline = two.open("dev-200", None).await;
    offline.hello().await;
    let seen: Vec<_> = [offline.next_event().await, offline.next_event().await]
        .map(|e| (common::seq_of(e.id.as_deref().unwrap()), e.data.unwrap()))
        .into();
    assert_eq!(seen, [(1, "first".to_owned()), (2, "everyone".to_owned())]);

    let (status, reply) = admin_post(
        &one,
        "/v1/broadcast",
        &json!({
            "event": "config", "data": "x", "retain": true
        }),
    )
    .await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (StatusCode::NOT_IMPLEMENTED, &json!("not_on_redis"))
    );
}

/// Heartbeats every second, so an open stream shows it is open.
const BEATING: [(&str, &str); 2] = [
    ("HERALD_HEARTBEAT__TIMEOUT", "2s"),
    ("HERALD_HEARTBEAT__MARGIN", "1s"),
];

#[actix_web::test]
async fn while_redis_is_away_publishes_get_503_streams_stay_open_and_nothing_acknowledged_is_lost()
{
    let mut redis = RedisServer::start_durable();
    let mut one = node_with(&redis, "one", &BEATING).await;
    let mut two = node_with(&redis, "two", &BEATING).await;
    let mut stream = two.open("lamp", None).await;
    stream.hello().await;
    let mut acknowledged = Vec::new();
    for n in 0..3 {
        let reply = publish(&one, "lamp", &format!("n{n}")).await;
        acknowledged.push(reply["id"].as_str().unwrap().to_owned());
        assert_eq!(stream.next_event().await.id, acknowledged.last().cloned());
    }

    redis.kill();
    let (status, reply) = one
        .publish("lamp", &json!({"event": "note", "data": "lost"}))
        .await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &json!("storage_unavailable")
        ),
        "never 202 for an event that is not stored"
    );
    one.expect_log(&["storage.unavailable"]).await;
    // The open stream stays open: its heartbeats go on.
    let beat = stream.next().await.expect("the stream is open");
    assert_eq!(beat.event.as_deref(), Some("heartbeat"));
    // A connect is answered 200 with `retry:` and ended, so EventSource
    // comes back instead of giving up.
    let mut retrying = one
        .try_open("other", None)
        .await
        .expect("200, not an error status");
    retrying.expect_end().await;

    redis.start_again();
    one.expect_log(&["storage.recovered"]).await;
    two.expect_log(&["storage.recovered"]).await;
    // Events for it may have been lost on their way while the node's
    // subscription was gone: the stream ends and its client resumes.
    stream.expect_end().await;
    let mut resumed = one
        .open("lamp", acknowledged.last().map(String::as_str))
        .await;
    assert_eq!(resumed.hello().await["resumed"], json!(true));
    let after = publish(&two, "lamp", "after").await;
    assert_eq!(
        resumed.next_event().await.id.as_deref(),
        after["id"].as_str()
    );
}

#[actix_web::test]
async fn when_redis_comes_back_empty_a_resume_is_told_its_epoch_is_unknown() {
    let mut redis = RedisServer::start();
    let mut one = node(&redis, "one").await;
    let mut stream = one.open("lamp", None).await;
    stream.hello().await;
    let before = publish(&one, "lamp", "before").await;
    assert_eq!(
        stream.next_event().await.id.as_deref(),
        before["id"].as_str()
    );

    redis.kill();
    redis.start_again();
    one.expect_log(&["storage.recovered"]).await;
    stream.expect_end().await;
    let mut resumed = one.open("lamp", before["id"].as_str()).await;
    assert_eq!(resumed.hello().await["resumed"], json!(false));
    let reset = resumed.next_event().await;
    assert_eq!(
        data_json(&reset),
        json!({"reason": "unknown_epoch", "last_event_id": before["id"]}),
        "never a wrong replay"
    );
}

#[actix_web::test]
async fn an_operator_on_any_node_sees_where_a_device_is_live_and_blocks_or_deletes_it_cluster_wide()
{
    use reqwest::Method;
    let redis = RedisServer::start();
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    let mut stream = two.open("lamp", None).await;
    let connection = stream.hello().await["connection_id"].clone();
    let reply = publish(&one, "lamp", "x").await;

    let (status, view) = one.admin(Method::GET, "/v1/devices/lamp").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (
            &view["node"],
            &view["connection_id"],
            &view["last_event_id"]
        ),
        (&json!("two"), &connection, &reply["id"]),
        "{view}"
    );
    assert_eq!(view["buffered_events"], json!(1));
    let (_, page) = one.admin(Method::GET, "/v1/devices?connected=true").await;
    assert_eq!(device_names(&page), ["lamp"]);

    // Ended from node one with reconnect=false: `kicked` (admin) on node
    // two, and the device is refused on both nodes.
    let (status, _) = one
        .admin(
            Method::DELETE,
            "/v1/devices/lamp/connection?reconnect=false",
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(stream.next_event().await.data.as_deref(), Some("x"));
    let kicked = stream.next_event().await;
    assert_eq!(data_json(&kicked), json!({"reason": "admin"}));
    for node in [&one, &two] {
        let refused = node.try_open("lamp", None).await.err().expect("refused");
        assert_eq!(refused.status, StatusCode::NO_CONTENT);
    }

    let (status, _) = two.admin(Method::DELETE, "/v1/devices/lamp").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = one.admin(Method::GET, "/v1/devices/lamp").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "forgotten on every node");
}

#[actix_web::test]
async fn any_node_shows_a_device_buffer_and_retained_events_and_lists_devices_by_prefix() {
    use reqwest::Method;
    let redis = RedisServer::start();
    let (one, two) = (node(&redis, "one").await, node(&redis, "two").await);
    let ids: Vec<Value> = vec![
        publish(&one, "hall-lamp", "a").await["id"].clone(),
        publish(&two, "hall-lamp", "b").await["id"].clone(),
    ];
    let retained = json!({"event": "mode", "data": "eco", "retain": true});
    assert_eq!(
        two.publish("hall-lamp", &retained).await.0,
        StatusCode::ACCEPTED
    );
    publish(&one, "porch-lamp", "c").await;

    let (status, buffer) = one
        .admin(Method::GET, "/v1/devices/hall-lamp/buffer?limit=2")
        .await;
    assert_eq!(status, StatusCode::OK, "{buffer}");
    assert_eq!(
        buffer["events"][0],
        json!({"id": ids[1], "event": "note", "data": "b"})
    );
    assert_eq!(buffer["events"][1]["event"], "mode");
    assert_eq!(
        buffer["retained"],
        json!([{"event": "mode", "data": "eco"}])
    );
    assert_eq!(buffer["complete"], true);
    let (status, _) = two.admin(Method::GET, "/v1/devices/nobody/buffer").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, page) = two.admin(Method::GET, "/v1/devices?prefix=hall").await;
    assert_eq!(device_names(&page), ["hall-lamp"]);
}

#[actix_web::test]
async fn the_kick_ping_pong_rules_hold_across_nodes() {
    let redis = RedisServer::start();
    let mut one = node(&redis, "one").await;
    let mut two = node(&redis, "two").await;

    // Instance `a` replaced by instance `b` on another node: `a` coming
    // back within the instance window is refused, on either node.
    let mut a = one.try_open_as("lamp", "a").await.expect("a connects");
    a.hello().await;
    let mut b = two.try_open_as("lamp", "b").await.expect("b connects");
    b.hello().await;
    assert_eq!(a.next_event().await.event.as_deref(), Some("kicked"));
    for node in [&one, &two] {
        let refused = node.try_open_as("lamp", "a").await.err().expect("refused");
        assert_eq!(
            (refused.status, &refused.body["error"]["code"]),
            (StatusCode::CONFLICT, &json!("kicked_instance"))
        );
    }

    // Without instances, kicks bouncing between the nodes make the device
    // flapping (3 within 10 s by default): newcomers are refused.
    let mut streams = Vec::new();
    for round in 0..4 {
        let here = if round % 2 == 0 { &one } else { &two };
        let mut stream = here.open("bulb", None).await;
        stream.hello().await;
        streams.push(stream);
    }
    let flapping = ["device.flapping", "device=bulb"];
    tokio::select! {
        _ = one.expect_log(&flapping) => {}
        _ = two.expect_log(&flapping) => {}
    }
    let refused = two.try_open("bulb", None).await.err().expect("refused");
    assert_eq!(refused.body["error"]["code"], json!("flapping"));
    let (_, view) = one.admin(reqwest::Method::GET, "/v1/devices/bulb").await;
    assert_eq!(view["flapping"], json!(true));
}

#[actix_web::test]
async fn the_bound_on_sessions_holds_across_nodes() {
    let redis = RedisServer::start();
    let bound = [("HERALD_SESSION__MAX_SESSIONS", "2")];
    let (one, two) = (
        node_with(&redis, "one", &bound).await,
        node_with(&redis, "two", &bound).await,
    );
    publish(&one, "a", "x").await;
    publish(&two, "b", "x").await;
    let (status, reply) = one
        .publish("c", &json!({"event": "note", "data": "x"}))
        .await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (
            StatusCode::INSUFFICIENT_STORAGE,
            &json!("too_many_sessions")
        )
    );
    let refused = two.try_open("d", None).await.err().expect("refused");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    // A session of its own is no new session.
    let mut a = two.open("a", None).await;
    a.hello().await;

    let (status, _) = two.admin(reqwest::Method::DELETE, "/v1/devices/b").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    publish(&one, "c", "room again").await;
}
