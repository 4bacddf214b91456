use std::time::Duration;

use super::*;
use crate::{Frame, test_support::*};

const TTL: Duration = Duration::from_millis(50);

fn seqs(events: &[crate::StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id.seq).collect()
}

#[actix::test]
async fn an_offline_publish_is_buffered_and_replayed_on_the_next_connect() {
    let actors = start_actors(Duration::from_secs(60));
    let dev = device("d1");
    let receipt = publish_to(&actors, &dev, "while away").await;
    assert!(!receipt.delivered);

    let (_conn, mut frames, _) = connect(&actors, &dev, None, 8).await;
    let hello = expect_signal(&mut frames, "hello").await;
    assert_eq!(hello["resumed"], false);
    match next(&mut frames).await {
        Some(Frame::Replay(events)) => {
            assert_eq!(seqs(&events), [receipt.id.seq]);
            assert_eq!(events[0].data, "while away");
        }
        other => panic!("expected the replay, got {other:?}"),
    }
}

#[actix::test]
async fn a_resume_replays_what_follows_its_position_and_then_goes_live() {
    let actors = start_actors(Duration::from_secs(60));
    let dev = device("d1");
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(publish_to(&actors, &dev, &n.to_string()).await.id);
    }

    let position = Some(ids[0].to_string());
    let (_conn, mut frames, _) = connect(&actors, &dev, position, 8).await;
    let live = publish_to(&actors, &dev, "live").await;
    assert!(live.delivered);

    let hello = expect_signal(&mut frames, "hello").await;
    assert_eq!(hello["resumed"], true);
    match next(&mut frames).await {
        Some(Frame::Replay(events)) => assert_eq!(seqs(&events), [2, 3]),
        other => panic!("expected the replay, got {other:?}"),
    }
    match next(&mut frames).await {
        Some(Frame::Event(event)) => assert_eq!((event.id, &*event.data), (live.id, "live")),
        other => panic!("expected the live event, got {other:?}"),
    }
    assert!(frames.try_recv().is_err());
}

#[actix::test]
async fn a_broadcast_counts_buffered_and_delivered_sessions() {
    let actors = start_actors(Duration::from_secs(60));
    let (online, offline) = (device("online"), device("offline"));
    let (_conn, mut frames, _) = connect(&actors, &online, None, 8).await;
    publish_to(&actors, &offline, "creates the session").await;

    let broadcast = Broadcast {
        name: EventName::parse("all").unwrap(),
        data: "hi".into(),
        retain: false,
    };
    let receipt = actors.store.send(broadcast).await.unwrap().unwrap();
    assert_eq!(
        receipt,
        BroadcastReceipt {
            buffered: 2,
            delivered: 1
        }
    );
    expect_signal(&mut frames, "hello").await;
    match next(&mut frames).await {
        Some(Frame::Event(event)) => assert_eq!(event.name.as_str(), "all"),
        other => panic!("expected the broadcast, got {other:?}"),
    }
}

#[actix::test]
async fn a_detached_session_is_swept_after_its_ttl() {
    let actors = start_actors(TTL);
    let dev = device("d1");
    let (conn, mut frames, _) = connect(&actors, &dev, None, 8).await;
    let old = publish_to(&actors, &dev, "before").await.id;
    expect_signal(&mut frames, "hello").await;
    drop(frames);
    assert!(stopped(&conn).await);
    // The registry detaches the session before it answers this.
    assert_eq!(count_live(&actors).await, 0);

    pass_ttl(TTL).await;
    actors.store.send(SweepExpired).await.unwrap();

    let (_conn, mut frames, _) = connect(&actors, &dev, Some(old.to_string()), 8).await;
    assert_eq!(expect_signal(&mut frames, "hello").await["resumed"], false);
    let reset = expect_signal(&mut frames, "reset").await;
    assert_eq!(reset["reason"], "expired");
    assert_eq!(reset["last_event_id"], old.to_string());
}

#[actix::test]
async fn a_session_created_by_a_publish_alone_expires_after_its_ttl() {
    let actors = start_actors(TTL);
    let dev = device("never-connected");
    let old = publish_to(&actors, &dev, "waiting").await.id;

    pass_ttl(TTL).await;
    actors.store.send(SweepExpired).await.unwrap();

    let (_conn, mut frames, _) = connect(&actors, &dev, Some(old.to_string()), 8).await;
    expect_signal(&mut frames, "hello").await;
    assert_eq!(
        expect_signal(&mut frames, "reset").await["reason"],
        "expired"
    );
}

/// Moves tokio's clock (which the store's TTLs read) past `ttl`, without
/// waiting for it.
async fn pass_ttl(ttl: Duration) {
    tokio::time::pause();
    tokio::time::advance(ttl + Duration::from_millis(1)).await;
}

#[actix::test]
async fn only_a_replacement_that_finds_its_client_there_is_a_kick() {
    let strict = crate::KickConfig {
        flapping_kicks: 2,
        flapping_policy: crate::FlappingPolicy::Refuse,
        ..lenient_kicks()
    };
    let ttl = Duration::from_secs(60);
    let actors = crate::start(session_config(ttl), quiet_heartbeat(), strict, in_memory());
    let dev = device("d1");
    let kicks = async || {
        let describe = crate::DescribeDevice {
            device: dev.clone(),
        };
        let view = actors.store.send(describe).await.unwrap().unwrap();
        view.expect("a session").kicks
    };

    // A client that closes its stream and reopens, again and again.
    for _ in 0..5 {
        let (_, frames, _) = connect(&actors, &dev, None, 8).await;
        drop(frames);
    }
    assert_eq!(kicks().await, 0);

    // Two live clients replacing each other: the second kick is flapping.
    let (_, mut first, _) = connect(&actors, &dev, None, 8).await;
    expect_signal(&mut first, "hello").await;
    let (_, mut second, _) = connect(&actors, &dev, None, 8).await;
    expect_signal(&mut first, "kicked").await;
    let (_, _third, _) = connect(&actors, &dev, None, 8).await;
    expect_signal(&mut second, "hello").await;
    expect_signal(&mut second, "kicked").await;
    assert_eq!(kicks().await, 2);
    let refused = try_connect(&actors, &dev, None, 8).await.err();
    assert_eq!(refused, Some(ConnectError::Refused(Refusal::Flapping)));
}

#[actix::test]
async fn events_whose_payloads_left_memory_are_replayed_from_the_file_then_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    // No room in memory: every event is cold once committed.
    let storage = on_file(dir.path(), 0).await;
    let config = session_config(Duration::from_secs(60));
    let actors = crate::start(config, quiet_heartbeat(), lenient_kicks(), storage);
    let (dev, other) = (device("d1"), device("d2"));
    let first = publish_to(&actors, &dev, "one").await;
    // Two devices share this one's stored payload.
    let shared = Publish {
        devices: vec![dev.clone(), other],
        ..publish(&dev, "shared")
    };
    actors.store.send(shared).await.unwrap().unwrap();
    publish_to(&actors, &dev, "three").await;
    let read_before = crate::metrics().storage_read.get();

    let (_conn, mut frames, _) = connect(&actors, &dev, Some(first.id.to_string()), 8).await;
    let live = publish_to(&actors, &dev, "live").await;
    expect_signal(&mut frames, "hello").await;
    match next(&mut frames).await {
        Some(Frame::Replay(events)) => {
            let read: Vec<_> = events.iter().map(|e| (e.id.seq, &*e.data)).collect();
            assert_eq!(read, [(2, "shared"), (3, "three")]);
        }
        other => panic!("expected the replay, got {other:?}"),
    }
    match next(&mut frames).await {
        Some(Frame::Event(event)) => assert_eq!(event.id, live.id),
        other => panic!("expected the live event, got {other:?}"),
    }
    assert!(crate::metrics().storage_read.get() >= read_before + 2);
}
