//! The bus the VMM dispatches port I/O and MMIO exits to.
//!
//! A bus maps non-overlapping address ranges to devices. A vCPU thread that
//! takes a PIO or MMIO exit looks the address up and calls the device with the
//! offset inside its range. Accesses nobody claims read as all ones and
//! writes to them are dropped, as on a real machine with nothing decoding the
//! address; they never stop the VM.
//!
//! The bus counts every access per range (and those nobody claims): one
//! relaxed atomic add beside the device's lock, see [`crate::counters`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::counters::{AccessCounts, RangeCounts};

/// A device attached to a [`Bus`].
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A range of zero length was inserted.
    #[error("bus range at {base:#x} for {name} has zero length")]
    ZeroLength { base: u64, name: String },
    /// A range overflows the address space.
    #[error("bus range {base:#x}+{len:#x} for {name} overflows")]
    Overflow { base: u64, len: u64, name: String },
    /// Two devices claim overlapping ranges.
    #[error("bus range {base:#x}+{len:#x} for {name} overlaps {other} at {other_base:#x}")]
    Overlap {
        base: u64,
        len: u64,
        name: String,
        other: String,
        other_base: u64,
    },
}

/// A shared handle to a device on the bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    name: String,
    device: SharedDevice,
    counts: Arc<AccessCounts>,
}

/// Address ranges mapped to devices.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
    /// Accesses no range claims.
    unclaimed: Arc<AccessCounts>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for (base, e) in &self.ranges {
            l.entry(&format_args!("{}@{:#x}+{:#x}", e.name, base, e.len));
        }
        l.finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `device`; `name` appears in errors and logs.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        name: &str,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength {
                base,
                name: name.to_string(),
            });
        }
        let end = base.checked_add(len).ok_or_else(|| BusError::Overflow {
            base,
            len,
            name: name.to_string(),
        })?;
        // The closest range starting below `end` is the only one that can overlap.
        if let Some((&other_base, other)) = self.ranges.range(..end).next_back() {
            if other_base + other.len > base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    name: name.to_string(),
                    other: other.name.clone(),
                    other_base,
                });
            }
        }
        self.ranges.insert(
            base,
            Entry {
                len,
                name: name.to_string(),
                device,
                counts: Arc::default(),
            },
        );
        Ok(())
    }

    /// Each range's access counts, by base address.
    pub fn range_counts(&self) -> Vec<RangeCounts> {
        self.ranges
            .iter()
            .map(|(&base, e)| RangeCounts {
                name: e.name.clone(),
                base,
                len: e.len,
                counts: e.counts.clone(),
            })
            .collect()
    }

    /// The counts of accesses no range claims.
    pub fn unclaimed_counts(&self) -> Arc<AccessCounts> {
        self.unclaimed.clone()
    }

    /// The device covering `addr` and the offset of `addr` inside its range.
    /// An access must lie entirely inside one range.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let last = offset.checked_add(size.max(1) as u64 - 1)?;
        (last < entry.len).then_some((entry, offset))
    }

    /// Dispatches a read; returns false (and fills `data` with ones) when no
    /// device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((entry, offset)) => {
                entry.counts.reads.inc();
                lock_device(&entry.device).read(offset, data);
                true
            }
            None => {
                self.unclaimed.reads.inc();
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false (and drops it) when no device claims
    /// the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((entry, offset)) => {
                entry.counts.writes.inc();
                lock_device(&entry.device).write(offset, data);
                true
            }
            None => {
                self.unclaimed.writes.inc();
                false
            }
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device whose handler
/// panicked on one thread must not take every other vCPU down with it.
fn lock_device(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn dispatches_with_offsets() {
        let mut bus = Bus::new();
        let a = dev();
        bus.insert(0x3f8, 8, "serial", a.clone()).unwrap();
        assert!(bus.write(0x3fa, &[7]));
        let mut d = [0u8; 1];
        assert!(bus.read(0x3ff, &mut d));
        assert_eq!(d, [7]);
        assert_eq!(a.lock().unwrap().writes, vec![(2, vec![7])]);
    }

    #[test]
    fn unclaimed_reads_all_ones_and_writes_drop() {
        let mut bus = Bus::new();
        bus.insert(0x60, 5, "i8042", dev()).unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0x80, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.write(0x5f, &[1]));
        // An access straddling the end of a range belongs to nobody.
        let mut d = [0u8; 2];
        assert!(!bus.read(0x64, &mut d));
    }

    #[test]
    fn counts_accesses_per_range_and_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, "serial", dev()).unwrap();
        bus.insert(0x60, 5, "i8042", dev()).unwrap();
        let mut d = [0u8; 1];
        for _ in 0..3 {
            bus.write(0x3f8, b"x");
        }
        bus.read(0x3fd, &mut d);
        bus.write(0x64, &[0xfe]);
        bus.read(0x80, &mut d);
        bus.write(0x80, &[0]);
        bus.write(0x81, &[0]);
        let counts: Vec<(String, u64, u64, u64)> = bus
            .range_counts()
            .into_iter()
            .map(|r| (r.name, r.base, r.counts.reads.get(), r.counts.writes.get()))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("i8042".to_string(), 0x60, 0, 1),
                ("serial".to_string(), 0x3f8, 1, 3)
            ]
        );
        let u = bus.unclaimed_counts();
        assert_eq!((u.reads.get(), u.writes.get()), (1, 2));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x100, "a", dev()).unwrap();
        let err = bus.insert(0x10ff, 0x10, "b", dev()).unwrap_err();
        assert!(matches!(err, BusError::Overlap { ref other, .. } if other == "a"));
        assert!(bus.insert(0xf00, 0x101, "c", dev()).is_err());
        bus.insert(0xf00, 0x100, "d", dev()).unwrap();
        bus.insert(0x1100, 0x10, "e", dev()).unwrap();
        assert!(matches!(
            bus.insert(0x0, 0, "z", dev()),
            Err(BusError::ZeroLength { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, "o", dev()),
            Err(BusError::Overflow { .. })
        ));
    }
}
