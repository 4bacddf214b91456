use super::*;
use crate::{EventName, retained::signed};

const BOOT: u32 = 7;

fn at_most(events: usize) -> BufferLimits {
    BufferLimits {
        events,
        bytes: usize::MAX,
    }
}

fn append(session: &mut Session, data: &str, limits: BufferLimits) -> StoredEvent {
    let event = StoredEvent {
        id: session.next_id(0),
        name: EventName::parse("e").unwrap(),
        data: data.into(),
        published_at: std::time::Instant::now(),
        // Stored in a batch of its own, numbered like its seq.
        batch: session.next_id(0).seq,
    };
    session.append(event.clone(), limits);
    event
}

#[test]
fn reserved_ids_follow_each_other_until_committed_or_released() {
    let mut session = Session::new(Epoch::new(BOOT, 1));
    let (first, second) = (session.reserve_id(), session.reserve_id());
    assert_eq!((first.seq, second.seq), (1, 2));
    // The first is committed: appended, no longer reserved.
    session.unreserve();
    append(&mut session, "1", at_most(10));
    assert_eq!(session.reserve_id().seq, 3, "after the one still reserved");
    // Every publish in flight failed: their ids are handed out again.
    session.release_reserved();
    assert_eq!(session.reserve_id().seq, 2);
}

fn session_with(events: u64, max_events: usize) -> Session {
    let mut session = Session::new(Epoch::new(BOOT, 1));
    for n in 1..=events {
        append(&mut session, &n.to_string(), at_most(max_events));
    }
    session
}

fn attach(session: &mut Session, last_event_id: Option<&str>) -> (Opening, Progress) {
    attach_retaining(session, last_event_id, &[])
}

fn attach_retaining(
    session: &mut Session,
    last_event_id: Option<&str>,
    retained: &[StoredEvent],
) -> (Opening, Progress) {
    let progress = Progress::default();
    let opening = session.attach(
        ConnectionId::new(),
        progress.clone(),
        last_event_id,
        retained,
    );
    (opening, progress)
}

fn seqs(opening: &Opening) -> Vec<u64> {
    opening.replay.iter().map(|e| e.id.seq).collect()
}

fn id(session_no: u32, seq: u64) -> String {
    EventId {
        epoch: Epoch::new(BOOT, session_no),
        seq,
    }
    .to_string()
}

#[test]
fn a_held_position_replays_what_follows_it() {
    let mut session = session_with(5, 10);
    let (opening, _) = attach(&mut session, Some(&id(1, 2)));
    assert_eq!(opening.start, Start::Resumed);
    assert_eq!(seqs(&opening), [3, 4, 5]);
    let (at_end, _) = attach(&mut session, Some(&id(1, 5)));
    assert_eq!((at_end.start, at_end.replay.len()), (Start::Resumed, 0));
}

#[test]
fn the_position_just_before_the_oldest_kept_event_is_still_held() {
    let mut session = session_with(8, 3);
    let (opening, _) = attach(&mut session, Some(&id(1, 5)));
    assert_eq!(seqs(&opening), [6, 7, 8]);
    let (gone, _) = attach(&mut session, Some(&id(1, 4)));
    assert!(matches!(
        gone.start,
        Start::Reset {
            reason: ResetReason::Evicted,
            ..
        }
    ));
}

#[test]
fn lost_positions_name_their_reason_and_still_get_what_no_stream_was_given() {
    let mut session = session_with(3, 10);
    let cases = [
        (id(1, 4), ResetReason::Future),
        (id(0, 1), ResetReason::Expired),
        (
            EventId {
                epoch: Epoch::new(BOOT + 1, 1),
                seq: 1,
            }
            .to_string(),
            ResetReason::UnknownEpoch,
        ),
        ("garbage".to_owned(), ResetReason::Invalid),
    ];
    for (claimed, reason) in cases {
        let (opening, _) = attach(&mut session, Some(&claimed));
        let last_event_id = Some(claimed.clone());
        assert_eq!(
            opening.start,
            Start::Reset {
                reason,
                last_event_id
            },
            "{claimed}"
        );
        // None of these streams wrote anything, so all three still wait.
        assert_eq!(seqs(&opening), [1, 2, 3], "{claimed}");
    }
}

#[test]
fn a_fresh_connect_gets_only_what_no_stream_wrote() {
    let mut session = session_with(4, 10);
    let (first, progress) = attach(&mut session, None);
    assert_eq!(seqs(&first), [1, 2, 3, 4]);
    // The stream wrote only the first two before it was replaced.
    progress.advance_to(2);
    let (second, progress) = attach(&mut session, None);
    assert_eq!(seqs(&second), [3, 4]);
    progress.advance_to(4);
    append(&mut session, "offline", at_most(10));
    let (third, _) = attach(&mut session, None);
    assert_eq!((seqs(&third), third.start), (vec![5], Start::Fresh));
}

#[test]
fn a_fresh_connect_is_reset_when_events_meant_for_it_were_evicted() {
    let mut session = session_with(8, 3);
    let (opening, _) = attach(&mut session, None);
    let reset = Start::Reset {
        reason: ResetReason::Evicted,
        last_event_id: None,
    };
    assert_eq!((seqs(&opening), opening.start), (vec![6, 7, 8], reset));
}

#[test]
fn only_the_attached_stream_detaches_and_its_progress_is_kept() {
    let mut session = session_with(3, 10);
    let (old, new) = (ConnectionId::new(), ConnectionId::new());
    session.attach(old, Progress::default(), None, &[]);
    let progress = Progress::default();
    session.attach(new, progress.clone(), None, &[]);
    assert!(!session.detach(old));
    assert!(session.is_attached());
    progress.advance_to(3);
    assert!(session.detach(new));
    assert!(!session.is_attached());
    assert_eq!(session.handed_out(), 3);
}

#[test]
fn the_byte_bound_evicts_oldest_first_but_always_keeps_the_newest() {
    let limits = BufferLimits {
        events: 100,
        bytes: 10,
    };
    let mut session = Session::new(Epoch::new(BOOT, 1));
    for data in ["aaaa", "bbbb", "cccc"] {
        append(&mut session, data, limits);
    }
    // Each event is 5 bytes (name "e" + 4): only the last two fit.
    assert_eq!((session.buffered(), session.bytes()), (2, 10));
    let big = append(&mut session, &"x".repeat(40), limits);
    assert_eq!((session.buffered(), session.bytes()), (1, big.size()));
    let (opening, _) = attach(&mut session, Some(&id(1, 3)));
    assert_eq!(seqs(&opening), [4]);
}

#[test]
fn the_growth_dry_run_agrees_with_the_append() {
    let limits = BufferLimits {
        events: 3,
        bytes: 24,
    };
    let mut session = Session::new(Epoch::new(BOOT, 1));
    for data in [
        "a",
        "bbbbbbb",
        "cc",
        "dddddddddd",
        "",
        "ffff",
        "ggggggggggggggggggggg",
    ] {
        let size = 1 + data.len();
        let evicted: usize = (session.evicted_if_appended(size, limits))
            .map(|e| e.size as usize)
            .sum();
        let predicted = signed(size) - signed(evicted);
        let before = signed(session.bytes());
        append(&mut session, data, limits);
        assert_eq!(
            signed(session.bytes()) - before,
            predicted,
            "appending {data:?}"
        );
    }
}

#[test]
fn a_stream_without_a_position_gets_retained_state_and_never_an_event_twice() {
    let mut session = session_with(6, 3);
    let retained: Vec<StoredEvent> = [2, 5]
        .map(|seq| StoredEvent {
            id: EventId {
                epoch: Epoch::new(BOOT, 1),
                seq,
            },
            name: EventName::parse(&format!("r{seq}")).unwrap(),
            data: "state".into(),
            published_at: std::time::Instant::now(),
            batch: 0,
        })
        .into();
    let state_seqs = |o: &Opening| o.state.iter().map(|e| e.id.seq).collect::<Vec<_>>();
    let (opening, progress) = attach_retaining(&mut session, None, &retained);
    // 1..3 were evicted unseen: a reset. Retained 2 is state; retained 5
    // is still unwritten, so it goes out once, as history.
    assert!(matches!(opening.start, Start::Reset { .. }));
    assert_eq!(
        (state_seqs(&opening), seqs(&opening)),
        (vec![2], vec![4, 5, 6])
    );
    progress.advance_to(6);
    let (again, _) = attach_retaining(&mut session, None, &retained);
    assert_eq!((state_seqs(&again), seqs(&again)), (vec![2, 5], vec![]));
    assert_eq!(again.start, Start::Fresh);
}

fn unread(opening: &Opening) -> Option<(u64, Vec<u64>)> {
    (opening.unread.as_ref()).map(|u| (u.first_seq, u.batches.clone()))
}

#[test]
fn cooled_events_are_named_for_storage_to_read_and_hot_ones_follow() {
    let mut session = session_with(5, 10);
    assert_eq!(session.cool(3), 3);
    let (opening, _) = attach(&mut session, Some(&id(1, 1)));
    assert_eq!(unread(&opening), Some((2, vec![2, 3])));
    assert_eq!(seqs(&opening), [4, 5]);

    let (past_the_cold, _) = attach(&mut session, Some(&id(1, 4)));
    assert_eq!(unread(&past_the_cold), None);
    assert_eq!(seqs(&past_the_cold), [5]);
}

#[test]
fn a_retained_event_still_unwritten_in_the_cold_part_is_history_not_state() {
    let mut session = session_with(3, 10);
    session.cool(3);
    let retained = StoredEvent {
        id: EventId {
            epoch: Epoch::new(BOOT, 1),
            seq: 2,
        },
        name: EventName::parse("config").unwrap(),
        data: "2".into(),
        published_at: std::time::Instant::now(),
        batch: 2,
    };
    let (opening, _) = attach_retaining(&mut session, None, &[retained]);
    assert_eq!(unread(&opening), Some((1, vec![1, 2, 3])));
    assert!(
        opening.state.is_empty(),
        "event 2 goes out once, in the replay"
    );
}

#[test]
fn eviction_takes_cold_events_first_and_the_dry_run_agrees() {
    let limits = at_most(4);
    let mut session = session_with(4, 4);
    session.cool(2);
    let predicted: Vec<_> = session.evicted_if_appended(1, limits).collect();
    append(&mut session, "5", limits);
    assert_eq!(predicted.iter().map(|e| e.batch).collect::<Vec<_>>(), [1]);
    let (opening, _) = attach(&mut session, Some(&id(1, 1)));
    assert_eq!(unread(&opening), Some((2, vec![2])));
    assert_eq!(seqs(&opening), [3, 4, 5]);
}

#[test]
fn a_restored_session_is_all_cold_and_sheds_what_lowered_limits_refuse() {
    let footprints = (3..=6).map(|batch| Footprint { batch, size: 2 }).collect();
    let (mut session, dropped) =
        Session::restore(Epoch::new(BOOT, 1), 2, 6, footprints, at_most(3));
    assert_eq!(dropped, [Footprint { batch: 3, size: 2 }]);
    assert_eq!((session.buffered(), session.bytes()), (3, 6));
    let (opening, _) = attach(&mut session, None);
    assert_eq!(
        opening.start,
        Start::Reset {
            reason: ResetReason::Evicted,
            last_event_id: None
        }
    );
    assert_eq!(unread(&opening), Some((4, vec![4, 5, 6])));
    assert!(opening.replay.is_empty());
}
