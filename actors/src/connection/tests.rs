use std::time::Duration;

use super::*;
use crate::test_support::*;

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
    conn.send(Push {
        event: again.clone(),
    })
    .await
    .unwrap();
    publish_to(&actors, &dev, "2").await;
    assert_eq!(live_seq(next(&mut frames).await), 2);

    // Seq 4 while 3 was never written: the stream ends, and its client's
    // resume fills the hole from the buffer.
    let past_a_hole = StoredEvent {
        id: crate::EventId { seq: 4, ..first },
        ..again.clone()
    };
    conn.send(Push { event: past_a_hole }).await.unwrap();
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
    conn.send(Push { event: other_epoch }).await.unwrap();
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
