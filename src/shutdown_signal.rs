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

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, time::Duration};

    use actix_server::Server;
    use actix_service::fn_service;
    use actix_web::rt::{self, net::TcpStream};

    use super::*;

    /// Whether `signal` has fired, polled once from the test's task.
    async fn fired(signal: &mut ShutdownSignal) -> bool {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *signal).poll(cx).is_ready())).await
    }

    #[actix_web::test]
    async fn fires_once_the_server_stops_gracefully_after_herald_started_draining() {
        let builder = Server::build();
        let stopping = builder.graceful_shutdown_signal();
        let server = builder
            .workers(1)
            .bind("test", "127.0.0.1:0", || {
                fn_service(|_: TcpStream| async { Ok::<_, ()>(()) })
            })
            .unwrap()
            .run();
        let handle = server.handle();
        rt::spawn(server);
        let draining = Draining::default();
        let mut signal = ShutdownSignal::new(&stopping, draining.clone());
        assert!(!fired(&mut signal).await, "before the server stops");

        handle.stop(true).await;
        // herald drains before it stops the server; until then the signal
        // is not looked at again.
        assert!(!fired(&mut signal).await, "before herald drains");

        draining.start();
        let resolved = rt::time::timeout(Duration::from_secs(10), signal).await;
        assert!(resolved.is_ok(), "the signal did not fire once draining");
    }
}
