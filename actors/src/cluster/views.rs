//! What the admin API shows of devices on the cluster: one device, its
//! newest and retained events, a page of the device list. Views only:
//! nothing here changes what Redis holds.

use std::time::{Instant, SystemTime};

use super::{
    Cluster, VIEW,
    decode::{self, parse_epoch, view_of},
};
use crate::{
    DeviceId,
    backend::WriteError,
    storage::{DevicePage, DevicePeek, DeviceView, MAX_SCAN},
};

impl Cluster {
    /// One device as the admin API shows it, if Redis holds anything for it.
    pub async fn describe(mut self, device: DeviceId) -> Result<Option<DeviceView>, WriteError> {
        let answer: redis::RedisResult<Vec<String>> = VIEW
            .arg(&*self.prefix)
            .arg("1")
            .arg(device.as_str())
            .invoke_async(&mut self.conn)
            .await;
        let answer = self.health.check(answer)?;
        answer.get(1).map(|view| view_of(view)).transpose()
    }

    /// The device's newest `limit` buffered events and retained ones; `None`
    /// if Redis holds nothing for it. Read together (MULTI), not in a
    /// script: nothing is decided on them.
    pub async fn peek(
        mut self,
        device: DeviceId,
        limit: usize,
    ) -> Result<Option<DevicePeek>, WriteError> {
        let key = |kind: &str| format!("{}{{{device}}}:{kind}", self.prefix);
        type Answer = (
            Option<String>,
            Vec<(String, Vec<String>)>,
            Vec<(String, String)>,
        );
        let answer: redis::RedisResult<Answer> = redis::pipe()
            .atomic()
            .hget(key("s"), "ep")
            .cmd("XREVRANGE")
            .arg(key("b"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .hgetall(key("r"))
            .query_async(&mut self.conn)
            .await;
        let (epoch, entries, retained) = self.health.check(answer)?;
        if epoch.is_none() && retained.is_empty() {
            return Ok(None);
        }
        let now = (SystemTime::now(), Instant::now());
        let mut events = match epoch {
            Some(epoch) => decode::entries(parse_epoch(&epoch)?, entries, now)?,
            None => Vec::new(),
        };
        events.reverse();
        let retained = decode::retained(retained, now)?;
        Ok(Some(DevicePeek {
            events,
            complete: true,
            retained,
        }))
    }

    /// A page of the device list after `after`, ids starting with
    /// `prefix`, as `Storage::page` pages it.
    pub async fn page(
        mut self,
        connected: Option<bool>,
        (after, prefix): (Option<DeviceId>, String),
        limit: usize,
    ) -> Result<DevicePage, WriteError> {
        let connected = connected.map_or("", |c| if c { "1" } else { "0" });
        let answer: redis::RedisResult<Vec<String>> = VIEW
            .arg(&*self.prefix)
            .arg("0")
            .arg(after.as_ref().map_or("", DeviceId::as_str))
            .arg(limit)
            .arg(connected)
            .arg(MAX_SCAN)
            .arg(prefix)
            .invoke_async(&mut self.conn)
            .await;
        let mut answer = self.health.check(answer)?.into_iter();
        let next = answer.next().unwrap_or_default();
        Ok(DevicePage {
            devices: answer
                .map(|view| view_of(&view))
                .collect::<Result<_, _>>()?,
            next: DeviceId::parse(&next).ok(),
        })
    }
}
