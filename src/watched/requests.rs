//! The request side of the time rule: which requests of a connection are in
//! progress, told to its [`Conn`] (see the module above).

use std::{
    future::Future,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
};

use actix_http::{Payload, Request, Response};
use actix_service::{Service, ServiceFactory, apply_fn_factory};
use actix_web::{
    Error,
    body::{BodySize, BoxBody, MessageBody},
    dev::ServiceResponse,
    web::Bytes,
};

use super::Conn;

/// Wraps the app so each connection's [`Conn`] knows when a request is in
/// progress: from the dispatcher handing it on (its head is complete) until
/// its response body is dropped — written out, or the connection gone.
pub fn track_requests<SF, B>(
    app: SF,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = Response<Tracked>,
    Error = Error,
    InitError = SF::InitError,
>
where
    SF: ServiceFactory<Request, Config = (), Response = ServiceResponse<B>, Error = Error>,
    SF::Service: 'static,
    <SF::Service as Service<Request>>::Future: 'static,
    B: MessageBody + 'static,
{
    apply_fn_factory(app, track::<SF::Service, B>)
}

fn track<S, B>(
    mut req: Request,
    app: &S,
) -> impl Future<Output = Result<Response<Tracked>, Error>> + use<S, B>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let has_body = !matches!(req.payload(), Payload::None);
    let conn = req.conn_data::<Rc<Conn>>().cloned();
    let in_progress = conn.map(|conn| {
        conn.request_started(has_body);
        if has_body {
            let body = BodyWatch {
                payload: req.take_payload(),
                conn: Some(Rc::clone(&conn)),
            };
            *req.payload() = Payload::Stream {
                payload: Box::pin(body),
            };
        }
        InProgress(conn)
    });
    let response = app.call(req);
    async move {
        // An error becomes its response here rather than in the
        // dispatcher, so its body, too, keeps the request in progress.
        let response = match response.await {
            Ok(response) => Response::from(response).map_into_boxed_body(),
            Err(err) => Response::from(err),
        };
        Ok(response.map_body(|_, body| Tracked {
            body,
            _in_progress: in_progress,
        }))
    }
}

/// A request's body, which tells its connection when it has all arrived (or
/// is dropped unread).
struct BodyWatch {
    payload: Payload,
    /// `None` once told.
    conn: Option<Rc<Conn>>,
}

impl BodyWatch {
    fn done(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.body_received();
        }
    }
}

impl futures_util::Stream for BodyWatch {
    type Item = Result<Bytes, actix_http::error::PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = Pin::new(&mut this.payload).poll_next(cx);
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            this.done();
        }
        next
    }
}

impl Drop for BodyWatch {
    fn drop(&mut self) {
        self.done();
    }
}

/// A request in progress; it ends when this is dropped.
struct InProgress(Rc<Conn>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request in progress while it lives.
pub struct Tracked {
    body: BoxBody,
    _in_progress: Option<InProgress>,
}

impl MessageBody for Tracked {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}
