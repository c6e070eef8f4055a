//! The event-loop side of the net device.
//!
//! Activation and reset happen on a vCPU thread, which cannot touch the
//! event manager: they signal `control_evt`, and every `process` call ends
//! by reconciling epoll with what the device wants watched now: the queue
//! notify eventfds while active, and the tap readable only while a frame
//! can go somewhere (no frame waits for guest buffers), writable only
//! while TX waits for room. So a guest without RX buffers does not make
//! the loop spin, and frames wait in the tap's queue meanwhile.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Net;
use super::{RX_QUEUE, TX_QUEUE};

impl Net {
    /// What should be watched now, by fd.
    fn wanted(&self) -> HashMap<RawFd, EventSet> {
        let mut want = HashMap::new();
        want.insert(self.control_evt.as_raw_fd(), EventSet::IN);
        if let Some(active) = &self.active {
            for evt in &active.notify {
                want.insert(evt.as_raw_fd(), EventSet::IN);
            }
        }
        let mut tap = EventSet::empty();
        if self.wants_rx() {
            tap |= EventSet::IN;
        }
        if self.tx_blocked && self.active.is_some() {
            tap |= EventSet::OUT;
        }
        if !tap.is_empty() {
            want.insert(self.backend.raw_fd(), tap);
        }
        want
    }

    /// Brings epoll registrations in line with the device; closes retired
    /// notify eventfds once they are out of epoll.
    pub(super) fn reconcile(&mut self, ops: &mut EventOps) {
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
                tracing::error!(fd, "net: unregistering: {e:?}");
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
                Err(e) => tracing::error!(fd, "net: registering with the event loop: {e:?}"),
            }
        }
        self.retired.clear();
    }

    /// The queue whose notify eventfd is `fd`.
    fn queue_of(&self, fd: RawFd) -> Option<usize> {
        let active = self.active.as_ref()?;
        active.notify.iter().position(|e| e.as_raw_fd() == fd)
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.reconcile(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.control_evt.as_raw_fd() {
            let _ = self.control_evt.read();
        } else if let Some(index) = self.queue_of(fd) {
            if let Some(active) = &self.active {
                // A spurious wakeup leaves it at 0 (EAGAIN): nothing to do.
                let _ = active.notify[index].read();
            }
            debug_assert!(index == RX_QUEUE || index == TX_QUEUE);
        } else if fd == self.backend.raw_fd() {
            if events.event_set().contains(EventSet::OUT) {
                self.tx_blocked = false;
            }
        } else if let Some(old) = self.registered.remove(&fd) {
            // Not ours any more (a retired notify eventfd): stop watching.
            let _ = ops.remove(Events::new_raw(fd, old));
        }
        // Reconcile first: a reset's control event may still be pending.
        self.reconcile(ops);
        if self.active.is_some() {
            self.process_queues();
        }
        self.reconcile(ops);
    }
}
