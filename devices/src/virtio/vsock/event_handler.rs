//! The event-loop side of the vsock device.
//!
//! Activation and reset happen on a vCPU thread, which cannot touch the
//! event manager: they signal `control_evt`, and every `process` call ends
//! by reconciling epoll with what the device wants watched now. Fds the
//! device stopped using wait in the muxer's graveyard until they are out of
//! epoll, then close.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Vsock;

/// Handshake timer period.
const TICK: Duration = Duration::from_millis(500);
/// How long host connections wait for the guest to finish a transport reset
/// before they are accepted anyway. A restored guest on a loaded nested
/// host (its kernel emulated, other VMs restoring beside it) has taken over
/// 10 s to get to the reset; a connection accepted before it would be
/// killed by it.
const RESET_HOLD: Duration = Duration::from_secs(60);

impl Vsock {
    /// Takes the graveyard's fds out of epoll and closes them.
    fn bury_dead(&mut self, ops: &mut EventOps) {
        for dead in self.muxer.take_graveyard() {
            let fd = dead.as_raw_fd();
            if let Some(set) = self.registered.remove(&fd) {
                if let Err(e) = ops.remove(Events::new_raw(fd, set)) {
                    tracing::error!(fd, "vsock: unregistering a closed fd: {e:?}");
                }
            }
        }
    }

    /// What should be watched now, by fd.
    fn wanted(&self) -> HashMap<RawFd, EventSet> {
        let mut want = HashMap::new();
        want.insert(self.control_evt.as_raw_fd(), EventSet::IN);
        if self.reset_unacked.is_none() {
            want.insert(self.muxer.listener_fd(), EventSet::IN);
        }
        want.insert(self.timer.as_raw_fd(), EventSet::IN);
        if let Some(active) = &self.active {
            for evt in &active.notify {
                want.insert(evt.as_raw_fd(), EventSet::IN);
            }
        }
        for (fd, set) in self.muxer.wanted() {
            if let Some(set) = set {
                want.insert(fd, set);
            }
        }
        want
    }

    /// Brings epoll registrations and the timer in line with the device.
    pub(super) fn reconcile(&mut self, ops: &mut EventOps) {
        self.bury_dead(ops);
        let want = self.wanted();
        let stale: Vec<(RawFd, EventSet)> = self
            .registered
            .iter()
            .filter(|(fd, _)| !want.contains_key(fd))
            .map(|(fd, set)| (*fd, *set))
            .collect();
        for (fd, set) in stale {
            self.registered.remove(&fd);
            if let Err(e) = ops.remove(Events::new_raw(fd, set)) {
                tracing::error!(fd, "vsock: unregistering: {e:?}");
            }
        }
        for (fd, set) in want {
            let result = match self.registered.get(&fd) {
                Some(old) if *old == set => continue,
                Some(_) => ops.modify(Events::new_raw(fd, set)),
                None => ops.add(Events::new_raw(fd, set)),
            };
            match result {
                Ok(()) => {
                    self.registered.insert(fd, set);
                }
                Err(e) => tracing::error!(fd, "vsock: registering with the event loop: {e:?}"),
            }
        }
        let need_timer = self.muxer.needs_timer() || self.reset_unacked.is_some();
        if need_timer != self.timer_armed {
            let result = if need_timer {
                self.timer.reset(TICK, Some(TICK))
            } else {
                self.timer.clear()
            };
            match result {
                Ok(()) => self.timer_armed = need_timer,
                Err(e) => tracing::error!("vsock: handshake timer: {e}"),
            }
        }
    }

    /// The queue whose notify eventfd is `fd`.
    fn queue_of(&self, fd: RawFd) -> Option<usize> {
        let active = self.active.as_ref()?;
        active.notify.iter().position(|e| e.as_raw_fd() == fd)
    }

    fn drain_queue_evt(&self, index: usize) {
        if let Some(active) = &self.active {
            if let Some(evt) = active.notify.get(index) {
                // A spurious wakeup leaves it at 0 (EAGAIN): nothing to do.
                let _ = evt.read();
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.reconcile(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // A reset on a vCPU thread may have buried fds epoll just reported.
        self.bury_dead(ops);
        let fd = events.fd();
        let set = events.event_set();
        if fd == self.control_evt.as_raw_fd() {
            let _ = self.control_evt.read();
        } else if fd == self.muxer.listener_fd() {
            self.muxer.accept_host();
        } else if fd == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            let now = Instant::now();
            if self
                .reset_unacked
                .is_some_and(|w| now.duration_since(w.since) > RESET_HOLD)
            {
                tracing::warn!("vsock: the guest did not acknowledge the transport reset; accepting host connections");
                self.reset_unacked = None;
            }
            self.muxer.sweep(now);
        } else if let Some(index) = self.queue_of(fd) {
            self.drain_queue_evt(index);
            // The guest hands event buffers back once it has handled the
            // transport reset: host connections may go ahead.
            if index == super::EVENT_QUEUE
                && self.reset_unacked.is_some()
                && self.reset_acknowledged()
            {
                tracing::debug!("vsock: transport reset acknowledged by the guest");
                self.reset_unacked = None;
            }
        } else if self.muxer.owns(fd) {
            self.muxer.on_stream_event(fd, set);
        } else if let Some(old) = self.registered.remove(&fd) {
            // Not ours any more: stop watching it.
            let _ = ops.remove(Events::new_raw(fd, old));
        }
        if self.active.is_some() {
            self.process_queues();
        }
        self.reconcile(ops);
    }
}
