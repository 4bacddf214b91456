//! The embedded store on a real file: what is read back after states that
//! only a crash leaves behind.

use std::time::{Duration, SystemTime};

use super::{Embedded, Job, gather, tables::Tables};
use crate::{DeviceId, Epoch, EventId, EventName, backend::Change};

fn device(name: &str) -> DeviceId {
    DeviceId::parse(name).unwrap()
}

fn append(batch: u64, device: &DeviceId, epoch: Epoch, seq: u64) -> Change {
    Change::Append {
        batch,
        name: EventName::parse("note").unwrap(),
        data: format!("{seq}").into(),
        published: SystemTime::now(),
        retain: false,
        to: vec![(device.clone(), EventId { epoch, seq })],
    }
}

fn session_row(device: &DeviceId, epoch: Epoch) -> Change {
    Change::Detach {
        device: device.clone(),
        epoch,
        written: 0,
        expires: SystemTime::now() + Duration::from_secs(3600),
    }
}

/// Writes `changes` in one commit, as the writer would.
fn write(embedded: &mut Embedded, changes: &[Change]) {
    let db = embedded.db.as_ref().unwrap();
    let txn = db.begin_write().unwrap();
    let mut tables = Tables::open(&txn).unwrap();
    let mut next_payload = embedded.next_payload;
    for change in changes {
        tables
            .apply(change, &embedded.refs, &mut next_payload)
            .unwrap();
    }
    drop(tables.close());
    txn.commit().unwrap();
}

#[test]
fn leftovers_of_changes_a_crash_cut_off_are_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, gone, other) = (device("kept"), device("gone"), device("other"));
    let (epoch, old_epoch) = (Epoch::new(7, 1), Epoch::new(7, 0));
    {
        let (mut embedded, _) = Embedded::open(dir.path()).unwrap();
        write(
            &mut embedded,
            &[
                // `kept`: events 1 and 2, then 2 evicted and 3 appended, but
                // the eviction of 1 (due when 2 came) never written.
                session_row(&kept, epoch),
                append(1, &kept, epoch, 1),
                append(2, &kept, epoch, 2),
                Change::Evict {
                    device: kept.clone(),
                    batches: vec![2],
                },
                append(3, &kept, epoch, 3),
                // `other`: an event of an earlier session of the device
                // left behind, then the current session's.
                append(4, &other, old_epoch, 9),
                session_row(&other, epoch),
                append(5, &other, epoch, 1),
                // `gone`: its session ended (row removed), an event left.
                session_row(&gone, epoch),
                append(6, &gone, epoch, 1),
                Change::Forget {
                    device: gone.clone(),
                    batches: Vec::new(),
                    retained: true,
                },
            ],
        );
    }
    let (_, snapshot) = Embedded::open(dir.path()).unwrap();
    let mut read: Vec<_> = (snapshot.sessions.iter())
        .map(|s| {
            let first = s.last_seq + 1 - s.events.len() as u64;
            let seqs: Vec<_> = (first..=s.last_seq).collect();
            (s.device.as_str().to_owned(), seqs)
        })
        .collect();
    read.sort();
    assert_eq!(
        read,
        [("kept".to_owned(), vec![3]), ("other".to_owned(), vec![1])],
        "a gap before 3, another epoch, a session that ended"
    );
    assert_eq!(
        snapshot.last_batch, 6,
        "numbering goes on after every batch seen"
    );

    // The leftovers were removed from the file, not just skipped.
    let (_, again) = Embedded::open(dir.path()).unwrap();
    assert_eq!(
        again.sessions.iter().map(|s| s.events.len()).sum::<usize>(),
        2
    );
    assert_eq!(again.last_batch, 5);
}

fn batch(id: u64, changes: Vec<Change>) -> Job {
    Job::Batch { id, changes }
}

#[test]
fn session_bookkeeping_alone_waits_for_company_until_its_deadline() {
    let (jobs, queue) = std::sync::mpsc::channel();
    let epoch = Epoch::new(7, 1);
    let attach = |name| Change::Attach {
        device: device(name),
        epoch,
    };
    jobs.send(batch(2, vec![attach("b")])).unwrap();

    let start = std::time::Instant::now();
    let deadline = start + Duration::from_millis(30);
    let group = gather(batch(1, vec![attach("a")]), &queue, deadline);
    assert_eq!(group.len(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(30),
        "it did not wait"
    );
}

#[test]
fn a_publish_ends_the_wait_and_commits_the_bookkeeping_before_it() {
    let (jobs, queue) = std::sync::mpsc::channel();
    let (a, epoch) = (device("a"), Epoch::new(7, 1));
    let attach = Change::Attach {
        device: a.clone(),
        epoch,
    };
    jobs.send(batch(2, vec![append(2, &a, epoch, 1)])).unwrap();
    jobs.send(batch(3, vec![session_row(&a, epoch)])).unwrap();

    // Would wait 2 s for company; the queued publish is company, so it
    // does not wait at all.
    let start = std::time::Instant::now();
    let deadline = start + Duration::from_secs(2);
    let group = gather(batch(1, vec![attach]), &queue, deadline);
    assert!(start.elapsed() < Duration::from_secs(2), "it waited");
    let ids: Vec<u64> = (group.iter())
        .map(|job| match job {
            Job::Batch { id, .. } => *id,
            _ => unreachable!("only batches were queued"),
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);
}
