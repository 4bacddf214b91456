use super::*;

const TIMEOUTS: Timeouts = Timeouts {
    head: Duration::from_secs(5),
    keep_alive: Duration::from_secs(15),
};

fn deadline(conn: &Conn) -> Option<(Reason, Duration)> {
    let deadline = conn.state.get().deadline?;
    let left = deadline.at.saturating_duration_since(Instant::now());
    Some((deadline.reason, left))
}

fn assert_deadline(conn: &Conn, reason: Reason, within: Duration) {
    let (actual, left) = deadline(conn).expect("a deadline");
    assert_eq!(actual, reason);
    assert!(
        left <= within && left > within - Duration::from_secs(1),
        "{left:?}"
    );
}

#[test]
fn a_request_body_has_until_the_head_timeout_and_then_its_answer_has_all_the_time_it_needs() {
    let conn = Conn::new(TIMEOUTS);
    conn.request_started(true);
    assert_deadline(&conn, Reason::Body, TIMEOUTS.head);
    conn.body_received();
    assert!(deadline(&conn).is_none(), "none while the answer is made");
    conn.request_finished();
    assert_deadline(&conn, Reason::KeepAlive, TIMEOUTS.keep_alive);
}

#[test]
fn a_connection_has_a_deadline_exactly_when_no_request_is_in_progress() {
    let conn = Conn::new(TIMEOUTS);
    assert_deadline(&conn, Reason::Head, TIMEOUTS.head);

    conn.request_started(false);
    assert!(
        deadline(&conn).is_none(),
        "none while a request is in progress"
    );
    conn.request_finished();
    assert_deadline(&conn, Reason::KeepAlive, TIMEOUTS.keep_alive);

    // The first byte of the next request starts its head's time; more
    // bytes do not move it.
    conn.received();
    let first = conn.state.get().deadline.unwrap().at;
    conn.received();
    assert_eq!(conn.state.get().deadline.unwrap().at, first);
    assert_deadline(&conn, Reason::Head, TIMEOUTS.head);
}

#[test]
fn bytes_during_a_request_are_a_next_head_unless_the_request_has_a_body() {
    let conn = Conn::new(TIMEOUTS);
    conn.request_started(false);
    conn.received();
    assert!(deadline(&conn).is_none());
    conn.request_finished();
    assert_deadline(&conn, Reason::Head, TIMEOUTS.head);

    conn.request_started(true);
    conn.received();
    conn.request_finished();
    assert_deadline(&conn, Reason::KeepAlive, TIMEOUTS.keep_alive);
}

#[test]
fn over_http2_the_deadline_waits_for_the_last_request_and_frames_between_requests_are_no_head() {
    let conn = Conn::new(TIMEOUTS);
    conn.set_multiplexed();
    // A stream, and a publish beside it on the same connection.
    conn.request_started(false);
    conn.request_started(true);
    conn.body_received();
    conn.received();
    conn.request_finished();
    assert!(
        deadline(&conn).is_none(),
        "none while the stream is in progress"
    );
    conn.request_finished();
    assert_deadline(&conn, Reason::KeepAlive, TIMEOUTS.keep_alive);

    // A ping between requests does not start a head.
    conn.received();
    assert_deadline(&conn, Reason::KeepAlive, TIMEOUTS.keep_alive);
}
