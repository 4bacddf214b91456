use std::time::Duration;

use super::{views::MAX_SCAN, *};

fn storage() -> Storage {
    Storage::new(
        SessionConfig {
            buffer_events: 16,
            buffer_bytes: 1 << 20,
            retained_per_device: 4,
            max_sessions: 20_000,
            max_total_bytes: 1 << 30,
            ttl: Duration::from_secs(60),
        },
        None,
    )
}

#[test]
fn a_sparse_filtered_page_stops_after_max_scan_and_says_where_to_go_on() {
    let mut storage = storage();
    for n in 0..MAX_SCAN + 5 {
        let device = DeviceId::parse(&format!("d{n:06}")).unwrap();
        storage.reserve_id(&device);
    }
    let last = DeviceId::parse("z-connected").unwrap();
    storage
        .attach(
            &last,
            ConnectionId::new(),
            Progress::default(),
            None,
            "peer",
        )
        .unwrap();

    let first = storage.page(Some(true), (None, ""), 10);
    assert!(first.devices.is_empty());
    let cursor = first.next.expect("more to look at");
    assert_eq!(cursor.as_str(), format!("d{:06}", MAX_SCAN - 1));

    let second = storage.page(Some(true), (Some(&cursor), ""), 10);
    let found: Vec<_> = second
        .devices
        .iter()
        .map(|d| d.device.as_str().to_owned())
        .collect();
    assert_eq!((found, second.next), (vec!["z-connected".to_owned()], None));
}

#[test]
fn what_attached_streams_wrote_is_recorded_once_per_advance() {
    let mut storage = storage();
    let device = DeviceId::parse("d1").unwrap();
    let progress = Progress::default();
    storage
        .attach(&device, ConnectionId::new(), progress.clone(), None, "peer")
        .unwrap();
    let written = |changes: Vec<Change>| -> Vec<u64> {
        changes
            .into_iter()
            .filter_map(|change| match change {
                Change::Written { written, .. } => Some(written),
                _ => None,
            })
            .collect()
    };
    storage.take_changes();

    storage.record_written();
    assert_eq!(
        written(storage.take_changes()),
        Vec::<u64>::new(),
        "nothing written yet"
    );
    progress.advance_to(3);
    storage.record_written();
    assert_eq!(written(storage.take_changes()), [3]);
    storage.record_written();
    assert_eq!(
        written(storage.take_changes()),
        Vec::<u64>::new(),
        "no advance since"
    );
}

#[test]
fn an_event_committed_after_its_session_ended_is_not_kept_and_its_stored_copy_goes() {
    let mut storage = storage();
    let device = DeviceId::parse("d1").unwrap();
    let id = storage.reserve_id(&device);
    storage.delete(&device);
    storage.take_changes();
    let event = StoredEvent {
        id,
        name: EventName::parse("note").unwrap(),
        data: "late".into(),
        published_at: std::time::Instant::now(),
        batch: 7,
    };

    let mut appended = Vec::new();
    storage.append(vec![(device, event)], (false, false, true), &mut appended);
    assert!(appended.is_empty(), "not handed to a live stream");
    assert_eq!(storage.len(), 0, "no session comes back");
    let changes = storage.take_changes();
    assert!(
        matches!(&changes[..], [Change::Evict { batches, .. }] if batches == &[7]),
        "{changes:?}"
    );
}

#[test]
fn a_page_with_a_prefix_holds_only_ids_that_start_with_it() {
    let mut storage = storage();
    for id in ["a1", "b1", "b2", "ba", "c1"] {
        storage.reserve_id(&DeviceId::parse(id).unwrap());
    }
    let ids = |page: DevicePage| -> Vec<String> {
        (page.devices.iter())
            .map(|d| d.device.as_str().to_owned())
            .collect()
    };
    let page = storage.page(None, (None, "b"), 2);
    let next = page.next.clone().expect("a next page");
    assert_eq!(ids(page), ["b1", "b2"]);
    let page = storage.page(None, (Some(&next), "b"), 2);
    assert_eq!(
        (ids(page.clone()), page.next),
        (vec!["ba".to_owned()], None)
    );
    // A cursor before the prefix starts at the prefix.
    let before = DeviceId::parse("a1").unwrap();
    assert_eq!(ids(storage.page(None, (Some(&before), "c"), 10)), ["c1"]);
}
