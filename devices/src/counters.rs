//! Event counters the devices keep for the VM's statistics: always on, so
//! they must cost nothing that matters on the paths they count.
//!
//! A [`Counter`] is one relaxed atomic add: no lock, no syscall, no
//! ordering with anything else (a reader sees each count some time after
//! it happened, which is all statistics need). The paths counted (a vCPU
//! exit into a bus device, an interrupt raised with an eventfd write) each
//! cost at least a thousand times that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A monotonic event count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Counts one event.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Guest accesses to one bus range (or to no device at all).
#[derive(Debug, Default)]
pub struct AccessCounts {
    pub reads: Counter,
    pub writes: Counter,
}

/// Interrupts a virtio device raised, by kind.
#[derive(Debug, Default)]
pub struct InterruptCounts {
    /// Used-ring updates (`InterruptKind::Queue`).
    pub queue: Counter,
    /// Configuration changes and reset requests (`InterruptKind::Config`).
    pub config: Counter,
}

/// One bus range's counts, as the bus publishes them: the name and range
/// it was inserted with, and a handle to its counters (which holds no
/// reference to the device).
#[derive(Debug, Clone)]
pub struct RangeCounts {
    pub name: String,
    pub base: u64,
    pub len: u64,
    pub counts: Arc<AccessCounts>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads() {
        let c = Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.inc()))
            })
            .collect();
        for t in threads {
            t.join().expect("counting thread");
        }
        assert_eq!(c.get(), 4000);
    }
}
