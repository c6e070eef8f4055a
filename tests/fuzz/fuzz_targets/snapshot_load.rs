//! Snapshot state files: `Snapshot::from_bytes` (version header, JSON body,
//! shape checks), then what a restore builds from an accepted one without
//! KVM: the CMOS and serial devices, every virtio-mmio transport (with a
//! device of the saved kind's queues and features) and the guest-memory
//! layout and memory-file size check.
//!
//! Checks: nothing panics; what is accepted is within the documented
//! limits; a restored transport re-saves to the state it was given.
//!
//! Input: the state file's bytes (JSON). The build id a snapshot must carry
//! changes with every code change, so the corpus writes `"husk_build":"FUZZ"`
//! and the target puts this build's id there before parsing.
//!
//! run.sh: -max_len=65536 -dict=dict/snapshot_load.dict
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use husk_devices::legacy::{Cmos, ConsoleSink, ConsoleWatch, Serial};
use husk_devices::virtio::device_type;
use husk_devices::virtio::interrupt::MmioInterrupt;
use husk_devices::virtio::transport::{MmioTransport, MmioTransportState};
use husk_devices::EventFdTrigger;
use husk_fuzz::{guest_memory, scratch_dir, FuzzDevice};
use husk_vmm::boot::layout::ram_ranges;
use husk_vmm::config::{MAX_MEM_MIB, MIN_MEM_MIB};
use husk_vmm::snapshot::memory::{map_private, MemoryFileError};
use husk_vmm::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The vsock and virtio-blk devices' queues and offered features.
const VSOCK_QUEUES: [u16; 3] = [256; 3];
const BLOCK_QUEUES: [u16; 1] = [256];
const BLOCK_FEATURES: u64 = (1 << 2) | (1 << 5) | (1 << 6) | (1 << 9) | (1 << 13) | (1 << 14);
/// A memory file of the smallest guest.
const MEM_FILE_BYTES: u64 = MIN_MEM_MIB << 20;

/// The corpus's stand-in for this build's id.
const BUILD_PLACEHOLDER: &[u8] = b"\"husk_build\":\"FUZZ\"";

/// `data` with the first build placeholder replaced by this build's id.
fn with_build_id(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let Some(at) = data
        .windows(BUILD_PLACEHOLDER.len())
        .position(|w| w == BUILD_PLACEHOLDER)
    else {
        return data.into();
    };
    let mut v = data[..at].to_vec();
    v.extend_from_slice(format!("\"husk_build\":\"{}\"", husk_vmm::snapshot::BUILD_ID).as_bytes());
    v.extend_from_slice(&data[at + BUILD_PLACEHOLDER.len()..]);
    v.into()
}

fuzz_target!(|data: &[u8]| {
    let data = with_build_id(data);
    let Ok(snap) = Snapshot::from_bytes(&data, "fuzz/snapshot.json") else {
        return;
    };
    assert!((MIN_MEM_MIB..=MAX_MEM_MIB).contains(&snap.mem_mib));
    assert!(snap.vcpus > 0 && usize::from(snap.vcpus) == snap.vcpu_states.len());

    let size = snap.mem_mib << 20;
    let ranges = ram_ranges(size);
    assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), size);
    match map_private(mem_file(), size) {
        Ok(_) => assert_eq!(size, MEM_FILE_BYTES),
        Err(MemoryFileError::Size { .. }) => assert_ne!(size, MEM_FILE_BYTES),
        Err(e) => panic!("{e}"),
    }

    let _ = Cmos::from_state(&snap.devices.cmos);
    if let Ok(irq) = EventFd::new(EFD_NONBLOCK) {
        let sink = ConsoleSink::new(
            None,
            false,
            Arc::new(ConsoleWatch::new(Vec::<String>::new())),
        );
        let _ = Serial::from_state(&snap.devices.serial, EventFdTrigger::new(irq), sink);
    }
    if let Some(v) = &snap.devices.vsock {
        restore(device_type::VSOCK, &VSOCK_QUEUES, 0, &v.transport);
    }
    for d in &snap.devices.disks {
        restore(
            device_type::BLOCK,
            &BLOCK_QUEUES,
            BLOCK_FEATURES,
            &d.transport,
        );
    }
});

fn restore(kind: u32, queues: &[u16], features: u64, state: &MmioTransportState) {
    let dev = FuzzDevice::new(kind, queues.to_vec(), features);
    let live = dev.live.clone();
    let notify = queues
        .iter()
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let interrupt = Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).expect("irq")));
    let Ok(t) = MmioTransport::restore(
        Arc::new(Mutex::new(dev)),
        guest_memory(),
        interrupt,
        notify,
        state,
    ) else {
        return;
    };
    assert_eq!(
        &t.state(),
        state,
        "a restored transport saves what it was given"
    );
    FuzzDevice::drain(&live);
}

/// A sparse memory file of the smallest guest, made once.
fn mem_file() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = scratch_dir("snap").join("memory.bin");
        let f = std::fs::File::create(&p).expect("memory file");
        f.set_len(MEM_FILE_BYTES).expect("memory file size");
        p
    })
}
