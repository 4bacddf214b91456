//! The graceful-shutdown signal as each connection's HTTP dispatcher sees it.
//!
//! actix-http polls a connection's shutdown signal on every poll of the
//! connection, and polling actix-server's signal itself takes a lock (it is
//! a tokio `watch`): 2% of a delivery's CPU at 19,000 streams. herald always
//! starts draining (`Draining`) before it stops the server gracefully, so
//! until then the signal cannot have fired. The signal's waiter, registered
//! by the first poll for the connection's task (a connection is served by
//! one task for its life), stays registered and wakes that task when the
//! signal fires; from then on, once herald drains, every poll goes through
//! to the signal. (Comparing wakers instead is not reliable:
//! `Waker::will_wake` may answer `false` for the same task.)

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use actix_server::GracefulShutdownSignal;

use crate::routes::Draining;

pub struct ShutdownSignal {
    notified: Pin<Box<dyn Future<Output = ()>>>,
    draining: Draining,
    /// The signal's waiter is registered for the connection's task.
    registered: bool,
}

impl ShutdownSignal {
    pub fn new(stopping: &GracefulShutdownSignal, draining: Draining) -> Self {
        let stopping = stopping.clone();
        Self {
            notified: Box::pin(async move { stopping.notified().await }),
            draining,
            registered: false,
        }
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.registered && !this.draining.is_set() {
            return Poll::Pending;
        }
        this.registered = true;
        this.notified.as_mut().poll(cx)
    }
}
