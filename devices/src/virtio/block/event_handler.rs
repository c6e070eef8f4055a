//! The event-loop side of the block device.
//!
//! Activation and reset happen on a vCPU thread, which cannot touch the
//! event manager: they signal `control_evt`, and every `process` call ends
//! by reconciling epoll with the queue's notify eventfd. A notify eventfd
//! from a past activation stays open in `retired` until it is out of epoll.

use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Block;

impl Block {
    /// Watches the live notify eventfd, and only it; closes retired ones.
    fn reconcile(&mut self, ops: &mut EventOps) {
        let want: Option<RawFd> = self.active.as_ref().map(|a| a.notify.as_raw_fd());
        if self.registered != want {
            if let Some(fd) = self.registered.take() {
                if let Err(e) = ops.remove(Events::new_raw(fd, EventSet::IN)) {
                    tracing::error!(fd, "block: unregistering a notify eventfd: {e:?}");
                }
            }
            if let Some(fd) = want {
                match ops.add(Events::new_raw(fd, EventSet::IN)) {
                    Ok(()) => self.registered = Some(fd),
                    Err(e) => tracing::error!(fd, "block: registering a notify eventfd: {e:?}"),
                }
            }
        }
        // Out of epoll now (or never in it): close them.
        self.retired.clear();
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.control_evt, EventSet::IN)) {
            tracing::error!("block: registering the control eventfd: {e:?}");
        }
        self.reconcile(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.control_evt.as_raw_fd() {
            let _ = self.control_evt.read();
        } else if let Some(active) = self.active.as_ref().filter(|a| a.notify.as_raw_fd() == fd) {
            // A spurious wakeup leaves it at 0 (EAGAIN): nothing to do.
            let _ = active.notify.read();
        } else if Some(fd) != self.registered {
            // Not ours any more: stop watching it.
            let _ = ops.remove(Events::new_raw(fd, events.event_set()));
        }
        // A reset's control event may still be pending: reconcile first, so
        // the queue is served only when the device is active.
        self.reconcile(ops);
        self.process_queue();
    }
}
