//! The last field of a stream that ends while the server drains: a `retry:`
//! hint, so the client waits that long before it comes back (to the next
//! instance). actix-web-lab writes `retry:` only at a stream's start, so this
//! body wraps its response and appends the field, encoded by russe, the SSE
//! encoder actix-web-lab itself uses.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    web::Bytes,
};
use bytestring::ByteString;

use super::Draining;

pub struct DrainHint {
    inner: BoxBody,
    draining: Draining,
    retry: Duration,
    /// The inner body ended (and the hint, if any, was sent).
    done: bool,
}

impl DrainHint {
    pub fn new(inner: BoxBody, draining: Draining, retry: Duration) -> Self {
        Self {
            inner,
            draining,
            retry,
            done: false,
        }
    }
}

impl MessageBody for DrainHint {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(None) => {
                this.done = true;
                if !this.draining.is_set() {
                    return Poll::Ready(None);
                }
                let field = russe::Event::Retry(this.retry).into_bytestring();
                Poll::Ready(Some(field.map(ByteString::into_bytes).map_err(Into::into)))
            }
            other => other,
        }
    }
}
