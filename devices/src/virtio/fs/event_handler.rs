//! The event-loop side of the virtio-fs device.
//!
//! As for the block device: activation and reset happen on a vCPU thread,
//! which cannot touch the event manager, so they signal `control_evt`, and
//! every `process` call ends by reconciling epoll with the queues' notify
//! eventfds. Notify eventfds of a past activation stay open in `retired`
//! until they are out of epoll.

use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Fs;

impl Fs {
    /// Watches the live notify eventfds, and only them; closes retired ones.
    fn reconcile(&mut self, ops: &mut EventOps) {
        let want: Vec<RawFd> = self
            .active
            .as_ref()
            .map(|a| a.notify.iter().map(AsRawFd::as_raw_fd).collect())
            .unwrap_or_default();
        if self.registered != want {
            for fd in self.registered.drain(..) {
                if let Err(e) = ops.remove(Events::new_raw(fd, EventSet::IN)) {
                    tracing::error!(fd, "virtio-fs: unregistering a notify eventfd: {e:?}");
                }
            }
            for fd in want {
                match ops.add(Events::new_raw(fd, EventSet::IN)) {
                    Ok(()) => self.registered.push(fd),
                    Err(e) => tracing::error!(fd, "virtio-fs: registering a notify eventfd: {e:?}"),
                }
            }
        }
        // Out of epoll now (or never in it): close them.
        self.retired.clear();
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.control_evt, EventSet::IN)) {
            tracing::error!("virtio-fs: registering the control eventfd: {e:?}");
        }
        self.reconcile(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.control_evt.as_raw_fd() {
            let _ = self.control_evt.read();
            self.refresh_backend();
        } else if let Some(evt) = self
            .active
            .as_ref()
            .and_then(|a| a.notify.iter().find(|e| e.as_raw_fd() == fd))
        {
            // A spurious wakeup leaves it at 0 (EAGAIN): nothing to do.
            let _ = evt.read();
        } else if !self.registered.contains(&fd) {
            // Not ours any more: stop watching it.
            let _ = ops.remove(Events::new_raw(fd, events.event_set()));
        }
        // A reset's control event may still be pending: reconcile first, so
        // the queues are served only when the device is active.
        self.reconcile(ops);
        self.process_queues();
    }
}
