//! Attached streams waiting for their process: filed by the listener (on
//! the pump thread), claimed by the RPC layer when it creates the process.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::header::{check_id, ProcessKey, StreamKey, StreamKind};
use super::StdioError;
use crate::log::log;

/// Which streams a process gets. `tty` excludes the other three (one
/// pseudo-terminal stream carries both ways); a stream not wanted is
/// `/dev/null` for the process (the caller opens it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Wanted {
    fn kinds(self) -> Vec<StreamKind> {
        let on = [self.stdin, self.stdout, self.stderr, self.tty];
        StreamKind::ALL
            .into_iter()
            .zip(on)
            .filter_map(|(k, on)| on.then_some(k))
            .collect()
    }
}

/// The connected sockets of a claim (non-blocking, close-on-exec), one per
/// stream wanted.
#[derive(Debug, Default)]
pub struct Claimed {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub tty: Option<OwnedFd>,
}

impl Claimed {
    /// How many streams were claimed.
    pub fn count(&self) -> u64 {
        [&self.stdin, &self.stdout, &self.stderr, &self.tty]
            .iter()
            .filter(|s| s.is_some())
            .count() as u64
    }

    fn slot(&mut self, kind: StreamKind) -> &mut Option<OwnedFd> {
        match kind {
            StreamKind::Stdin => &mut self.stdin,
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
            StreamKind::Tty => &mut self.tty,
        }
    }
}

/// Why a stream was not filed (its connection is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A stream with the same key is already waiting: the newer one goes.
    Duplicate,
    /// [`Registry::max`] streams are waiting already.
    Full,
}

struct Attached {
    sock: OwnedFd,
    since: Instant,
}

/// The streams attached and not yet claimed, keyed by process and stream.
pub struct Registry {
    streams: Mutex<HashMap<StreamKey, Attached>>,
    arrived: Condvar,
    ttl: Duration,
    max: usize,
}

impl Registry {
    /// A registry dropping streams unclaimed for `ttl`, holding at most
    /// `max`.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
            arrived: Condvar::new(),
            ttl,
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StreamKey, Attached>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Files an attached stream and wakes the claims waiting; gives the
    /// socket back when refused.
    pub(crate) fn file(&self, key: StreamKey, sock: OwnedFd) -> Result<(), (OwnedFd, Refused)> {
        let mut streams = self.lock();
        if streams.contains_key(&key) {
            return Err((sock, Refused::Duplicate));
        }
        if streams.len() >= self.max {
            return Err((sock, Refused::Full));
        }
        let since = Instant::now();
        streams.insert(key, Attached { sock, since });
        drop(streams);
        self.arrived.notify_all();
        Ok(())
    }

    /// Closes the streams unclaimed for the registry's ttl; returns when
    /// the next one is due.
    pub(crate) fn expire(&self, now: Instant) -> Option<Instant> {
        let mut streams = self.lock();
        let ttl = self.ttl;
        streams.retain(|key, a| {
            let keep = now < a.since + ttl;
            if !keep {
                log(&format!("stdio: {key}: not claimed within {ttl:?}; closed"));
            }
            keep
        });
        streams.values().map(|a| a.since + ttl).min()
    }

    /// How many streams wait to be claimed.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    /// Takes the `wanted` streams of process `container_id`/`exec_id`,
    /// waiting until `deadline` for those not attached yet (the host opens
    /// them before its request, but they may land just after it).
    ///
    /// All or nothing: when the deadline passes with some missing, the ones
    /// that did arrive are closed too (a host retrying opens new ones) and
    /// the error names the missing.
    pub fn claim(
        &self,
        container_id: &str,
        exec_id: &str,
        wanted: Wanted,
        deadline: Instant,
    ) -> Result<Claimed, StdioError> {
        check_id("container id", container_id.as_bytes())?;
        check_id("exec id", exec_id.as_bytes())?;
        if wanted.tty && (wanted.stdin || wanted.stdout || wanted.stderr) {
            return Err(StdioError::TtyWithOthers);
        }
        let process = ProcessKey::new(container_id, exec_id);
        let keys: Vec<StreamKey> = wanted
            .kinds()
            .into_iter()
            .map(|stream| StreamKey {
                process: process.clone(),
                stream,
            })
            .collect();
        let mut streams = self.lock();
        loop {
            if keys.iter().all(|k| streams.contains_key(k)) {
                let mut claimed = Claimed::default();
                for k in &keys {
                    *claimed.slot(k.stream) = streams.remove(k).map(|a| a.sock);
                }
                return Ok(claimed);
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<StreamKind> = keys
                    .iter()
                    .filter(|k| streams.remove(k).is_none())
                    .map(|k| k.stream)
                    .collect();
                return Err(StdioError::NotAttached { process, missing });
            }
            streams = self
                .arrived
                .wait_timeout(streams, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
