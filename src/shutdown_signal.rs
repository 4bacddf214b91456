//! The graceful-shutdown signal as each connection's HTTP dispatcher sees it.
//!
//! actix-http polls a connection's shutdown signal on every poll of the
//! connection, and polling actix-server's signal itself takes a lock (it is
//! a tokio `watch`): 2% of a delivery's CPU at 19,000 streams. herald always
//! starts draining (`Draining`) before it stops the server gracefully, so
//! until then the signal cannot have fired. The signal's waiter, registered
//! by the first poll for the connection's task, stays registered and wakes
//! that task when the signal fires; only polls from another task, or once
//! herald drains, go through to the signal.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use actix_server::GracefulShutdownSignal;

use crate::routes::Draining;

pub struct ShutdownSignal {
    notified: Pin<Box<dyn Future<Output = ()>>>,
    draining: Draining,
    /// The task the signal's waiter wakes.
    registered: Option<Waker>,
}

impl ShutdownSignal {
    pub fn new(stopping: &GracefulShutdownSignal, draining: Draining) -> Self {
        let stopping = stopping.clone();
        Self {
            notified: Box::pin(async move { stopping.notified().await }),
            draining,
            registered: None,
        }
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let same_task = (this.registered.as_ref()).is_some_and(|task| task.will_wake(cx.waker()));
        if same_task && !this.draining.is_set() {
            return Poll::Pending;
        }
        this.registered = Some(cx.waker().clone());
        this.notified.as_mut().poll(cx)
    }
}
