//! Whether Redis answers, as this node last found it.

use std::time::Instant;

use crate::backend::WriteError;

/// Whether Redis answers, as this node last found it: each change is one
/// log line, `storage.unavailable` or `storage.recovered`.
#[derive(Debug, Default)]
pub(super) struct Health {
    down_since: std::sync::Mutex<Option<Instant>>,
}

impl Health {
    pub(super) fn failed(&self, error: &dyn std::fmt::Display) {
        let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_none() {
            *down = Some(Instant::now());
            log::error!("storage.unavailable backend=redis error=\"{error}\"");
        }
    }

    pub(super) fn answered(&self) {
        let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = down.take() {
            log::warn!(
                "storage.recovered backend=redis down_ms={}",
                since.elapsed().as_millis()
            );
        }
    }

    /// `result` as a storage answer, noting whether Redis answered.
    pub(super) fn check<T>(&self, result: redis::RedisResult<T>) -> Result<T, WriteError> {
        match result {
            Ok(value) => {
                self.answered();
                Ok(value)
            }
            // A script's own error is an answer: Redis is there.
            Err(error)
                if error.kind()
                    == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                self.answered();
                log::error!("cluster.script_failed error=\"{error}\"");
                Err(WriteError::Unavailable)
            }
            Err(error) => {
                self.failed(&error);
                Err(WriteError::Unavailable)
            }
        }
    }
}
