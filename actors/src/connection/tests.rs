use std::time::Duration;

use tokio::sync::mpsc::Receiver;

use super::*;
use crate::{
    registry::{ConnectLive, DeliverEach},
    test_support::*,
};

/// Hands `event` to the registry as the store would, for `device`'s live
/// stream.
async fn deliver(actors: &crate::Actors, device: &DeviceId, event: StoredEvent) {
    let events = vec![(device.clone(), event)];
    actors.registry.send(DeliverEach { events }).await.unwrap();
}

#[actix::test]
async fn a_connection_stops_when_its_client_goes_away() {
    let actors = start_actors(Duration::from_secs(60));
    let dev = device("d1");
    let (conn, mut frames, _) = connect(&actors, &dev, None, 8).await;
    expect_signal(&mut frames, "hello").await;
    assert_eq!(count_live(&actors).await, 1);

    drop(frames);
    assert!(stopped(&conn).await, "the connection outlived its client");
    assert_eq!(count_live(&actors).await, 0);
    assert!(!publish_to(&actors, &dev, "too late").await.delivered);
}

#[actix::test]
async fn a_live_event_already_written_is_skipped_and_one_past_a_hole_ends_the_stream() {
    let actors = start_actors(Duration::from_secs(60));
    let dev = device("d1");
    let (conn, mut frames, _) = connect(&actors, &dev, None, 8).await;
    expect_signal(&mut frames, "hello").await;
    let live_seq = |frame: Option<Frame>| match frame {
        Some(Frame::Event(event)) => event.id.seq,
        other => panic!("expected a live event, got {other:?}"),
    };
    let first = publish_to(&actors, &dev, "1").await.id;
    assert_eq!(live_seq(next(&mut frames).await), 1);

    // Delivered again, as a backend that retries might: skipped.
    let again = StoredEvent {
        id: first,
        name: crate::EventName::parse("note").unwrap(),
        data: "1".into(),
        published_at: Instant::now(),
        batch: 0,
    };
    deliver(&actors, &dev, again.clone()).await;
    publish_to(&actors, &dev, "2").await;
    assert_eq!(live_seq(next(&mut frames).await), 2);

    // Seq 4 while 3 was never written: the stream ends, and its client's
    // resume fills the hole from the buffer.
    let past_a_hole = StoredEvent {
        id: crate::EventId { seq: 4, ..first },
        ..again.clone()
    };
    deliver(&actors, &dev, past_a_hole).await;
    assert!(next(&mut frames).await.is_none(), "the stream ended");
    assert!(stopped(&conn).await);

    // The next seq, but of another session's history: it ends too.
    let (conn, mut frames, _) = connect(&actors, &dev, None, 8).await;
    expect_signal(&mut frames, "hello").await;
    let other_epoch = StoredEvent {
        id: crate::EventId {
            epoch: crate::Epoch::new(first.epoch.boot().wrapping_add(1), 0),
            seq: 3,
        },
        ..again
    };
    deliver(&actors, &dev, other_epoch).await;
    assert!(next(&mut frames).await.is_none(), "the stream ended");
    assert!(stopped(&conn).await);
}

#[actix::test]
async fn a_connection_whose_queue_is_full_stops_itself() {
    let actors = start_actors(Duration::from_secs(60));
    let dev = device("d1");
    let (conn, mut frames, _) = connect(&actors, &dev, None, 4).await;
    // hello and three events fill the queue; the fourth event overflows.
    for n in 1..=6 {
        publish_to(&actors, &dev, &n.to_string()).await;
    }
    assert!(stopped(&conn).await, "a slow consumer kept its connection");

    expect_signal(&mut frames, "hello").await;
    for seq in 1..=3 {
        match next(&mut frames).await {
            Some(Frame::Event(event)) => assert_eq!(event.id.seq, seq),
            other => panic!("expected event {seq}, got {other:?}"),
        }
    }
    assert!(next(&mut frames).await.is_none());
    assert_eq!(count_live(&actors).await, 0);
}

/// The registry and the heartbeat write into a stream's queue on its worker,
/// not through its connection: once the connection has stopped, what it
/// wrote last (`kicked`, say) stays the last whoever writes next.
#[actix::test]
async fn a_stopped_connection_ends_its_queue_for_every_writer() {
    let actors = start_actors(Duration::from_secs(60));
    let (queue, mut frames) = tokio::sync::mpsc::channel(8);
    let queue = StreamQueue::new(queue, crate::Progress::default());
    let params = params(&actors, &device("d1"), ConnectionId::new(), queue.clone());
    let (unstarted, _) = Unstarted::new(params);
    let conn = unstarted.start(Some(opening_at(event_at(0).id)));
    expect_signal(&mut frames, "hello").await;
    let admin = Disconnect {
        ending: Ending::Admin,
    };
    conn.send(admin).await.unwrap();
    assert!(stopped(&conn).await);

    // As a live event or a heartbeat handed over before the stop would be
    // written after it.
    assert_eq!(queue.write_live(event_at(1)), Err(Refused::Closed));
    assert_eq!(queue.write_heartbeat(), Err(Refused::Closed));
    assert!(frames.try_recv().is_err(), "a frame followed the stop");
}

/// The stream route's request can go away while the store decides; the
/// registry may have made the connection live meanwhile.
#[actix::test]
async fn a_connection_dropped_before_it_starts_is_forgotten_though_it_was_made_live() {
    let actors = start_actors(Duration::from_secs(60));
    let dev = device("d1");
    let (queue, _frames) = tokio::sync::mpsc::channel(8);
    let queue = StreamQueue::new(queue, crate::Progress::default());
    let id = ConnectionId::new();
    let (unstarted, addr) = Unstarted::new(params(&actors, &dev, id, queue.clone()));
    let connect = connect_message(&dev, id, addr, queue, None);
    let opening = actors.store.send(connect).await.unwrap().unwrap();
    assert!(opening.is_some());
    assert_eq!(count_live(&actors).await, 1, "made live");

    drop(unstarted);
    assert_eq!(count_live(&actors).await, 0);
    assert!(!publish_to(&actors, &dev, "nobody").await.delivered);
    let describe = crate::DescribeDevice { device: dev };
    let view = actors.store.send(describe).await.unwrap().unwrap();
    assert_eq!(view.expect("a session").connection_id, None, "detached");
}

/// A connection (its queue holds 8 frames) started with [`reading_two`],
/// which the registry does not know of, so a test alone decides what it is
/// sent; `before` is in its mailbox before it runs.
fn lone_connection(
    actors: &crate::Actors,
    before: Option<ConnectReplay>,
) -> (Addr<DeviceConnection>, Receiver<Frame>, ConnectLive) {
    let (queue, frames) = tokio::sync::mpsc::channel(8);
    let queue = StreamQueue::new(queue, crate::Progress::default());
    let id = ConnectionId::new();
    let (unstarted, addr) = Unstarted::new(params(actors, &device("d1"), id, queue.clone()));
    if let Some(msg) = before {
        addr.do_send(msg);
    }
    let opening = reading_two();
    let through = opening.through;
    let conn = unstarted.start(Some(opening));
    // What makes it live, as the store would.
    let live = ConnectLive {
        device: device("d1"),
        connection_id: id,
        connection: conn.clone(),
        queue,
        instance: None,
        peer: "test".to_owned(),
        through,
    };
    (conn, frames, live)
}

fn event_at(seq: u64) -> StoredEvent {
    let mut event = event(seq);
    event.batch = seq;
    event
}

/// A fresh start with nothing to replay, at `through`.
fn opening_at(through: crate::EventId) -> Opening {
    Opening {
        start: Start::Fresh,
        state: Vec::new(),
        unread: None,
        replay: Vec::new(),
        through,
    }
}

/// A replay of events 1–2 read from storage, then 3.
fn reading_two() -> Opening {
    let through = event_at(3).id;
    Opening {
        start: Start::Resumed,
        state: Vec::new(),
        unread: Some(Unread {
            epoch: through.epoch,
            first_seq: 1,
            batches: vec![1, 2],
        }),
        replay: vec![event_at(3)],
        through,
    }
}

async fn replayed_seqs(frames: &mut Receiver<Frame>) -> Vec<u64> {
    match next(frames).await {
        Some(Frame::Replay(events)) => events.iter().map(|e| e.id.seq).collect(),
        other => panic!("expected a replay, got {other:?}"),
    }
}

#[actix::test]
async fn live_events_wait_for_the_replay_read_from_storage_and_follow_it() {
    let actors = start_actors(Duration::from_secs(60));
    let (conn, mut frames, live) = lone_connection(&actors, None);
    let dev = device("d1");
    actors.registry.send(live).await.unwrap();
    deliver(&actors, &dev, event_at(4)).await;
    expect_signal(&mut frames, "hello").await;
    assert!(
        frames.try_recv().is_err(),
        "nothing with an id before the read"
    );

    let read = Ok(vec![event_at(1), event_at(2)]);
    conn.send(ConnectReplay { events: read }).await.unwrap();
    assert_eq!(replayed_seqs(&mut frames).await, [1, 2]);
    assert_eq!(replayed_seqs(&mut frames).await, [3]);
    assert!(matches!(next(&mut frames).await, Some(Frame::Event(e)) if e.id.seq == 4));
}

#[actix::test]
async fn live_events_held_for_a_replay_read_count_against_the_queue_bound() {
    let actors = start_actors(Duration::from_secs(60));
    let (conn, mut frames, live) = lone_connection(&actors, None);
    let dev = device("d1");
    actors.registry.send(live).await.unwrap();
    // The queue holds 8 frames: a ninth held event ends the stream as slow.
    for seq in 4..=12 {
        deliver(&actors, &dev, event_at(seq)).await;
    }
    assert!(stopped(&conn).await, "held events beyond the bound kept it");
    expect_signal(&mut frames, "hello").await;
    assert!(
        next(&mut frames).await.is_none(),
        "nothing with an id written"
    );
    assert_eq!(count_live(&actors).await, 0);
}

#[actix::test]
async fn a_read_that_arrives_before_the_actor_runs_is_written_after_hello() {
    let actors = start_actors(Duration::from_secs(60));
    let read = Ok(vec![event_at(1), event_at(2)]);
    let (_, mut frames, _) = lone_connection(&actors, Some(ConnectReplay { events: read }));
    expect_signal(&mut frames, "hello").await;
    assert_eq!(replayed_seqs(&mut frames).await, [1, 2]);
    assert_eq!(replayed_seqs(&mut frames).await, [3]);
}

#[actix::test]
async fn a_read_missing_an_event_ends_the_stream_before_any_id_is_written() {
    let actors = start_actors(Duration::from_secs(60));
    let (conn, mut frames, _) = lone_connection(&actors, None);
    // Event 1 alone: a hole before 3.
    let read = Ok(vec![event_at(1)]);
    conn.send(ConnectReplay { events: read }).await.unwrap();
    expect_signal(&mut frames, "hello").await;
    assert!(next(&mut frames).await.is_none(), "the stream ended");
    assert!(stopped(&conn).await);
}
