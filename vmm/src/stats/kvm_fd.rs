//! The kernel's own per-VM and per-vCPU statistics, read through KVM's
//! binary stats interface (`KVM_GET_STATS_FD`, Linux 5.14; kvm-ioctls has
//! no wrapper).
//!
//! The fd holds a header, an id string, one descriptor per statistic and
//! the data block of u64 values:
//!
//! ```text
//! header      { flags u32, name_size u32, num_desc u32,
//!               id_offset u32, desc_offset u32, data_offset u32 }
//! descriptor  { flags u32, exponent i16, size u16, offset u32,
//!               bucket_size u32, name[name_size] }     (num_desc of them)
//! data        u64 values: descriptor i's at data_offset + offset, `size` of them
//! ```
//!
//! The header and descriptors are fixed for the fd's life: they are parsed
//! once, when the fd is opened ([`KvmStatsFd::open`], at vCPU creation and
//! restore), and a read is then one `pread` of the data block. Everything
//! read from the fd is bounded (counts, sizes, offsets) and checked before
//! use; a malformed layout is an error, never a panic. Only scalar
//! statistics (`size == 1`) are kept: the histograms (`halt_poll_*_hist`)
//! are left out. A kernel without the ioctl gives no fd: the statistics
//! are then absent, not an error.
//!
//! The fd holds a reference on the kernel's VM: the owner drops it when
//! the VM ends ([`super::VmCounters::finish`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

/// `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xAECE;

/// `struct kvm_stats_header`.
const HEADER_SIZE: usize = 24;
/// The fixed part of `struct kvm_stats_desc` (the name follows).
const DESC_FIXED: usize = 16;
/// Bounds on what the fd may describe (the kernel uses 48-byte names and
/// a few dozen statistics).
const MAX_NAME_SIZE: u32 = 256;
const MAX_DESCS: u32 = 4096;
const MAX_BLOCK: u64 = 1 << 20;

/// `KVM_STATS_TYPE_*` (flags bits 0-3).
const TYPE_MASK: u32 = 0xf;
const TYPE_CUMULATIVE: u32 = 0;
const TYPE_INSTANT: u32 = 1;
const TYPE_PEAK: u32 = 2;

/// Why the stats fd's layout was refused.
#[derive(Debug, thiserror::Error)]
pub enum StatsFdError {
    #[error("reading the KVM stats fd: {0}")]
    Io(#[from] io::Error),
    #[error("KVM stats fd: {0}")]
    Layout(String),
}

fn layout(msg: impl Into<String>) -> StatsFdError {
    StatsFdError::Layout(msg.into())
}

/// The kernel's statistics of one VM or vCPU: counters (cumulative) and
/// gauges (instant values and peaks), by the kernel's names (units are in
/// the names: `halt_wait_ns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmStats {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, u64>,
}

impl KvmStats {
    /// A statistic by name, counter or gauge.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters
            .get(name)
            .or_else(|| self.gauges.get(name))
            .copied()
    }
}

/// Something to `pread` from (the fd; a byte buffer in tests).
pub trait ReadAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Reads exactly `len` bytes at `offset`; a short read is a layout error.
fn read_block(
    src: &(impl ReadAt + ?Sized),
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, StatsFdError> {
    if len > MAX_BLOCK {
        return Err(layout(format!("a {len}-byte block")));
    }
    let mut buf = vec![0u8; len as usize];
    let mut done = 0;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or_else(|| layout("offset overflows"))?;
        match src.read_at(&mut buf[done..], at) {
            Ok(0) => {
                return Err(layout(format!(
                    "{len} bytes at {offset}: ends after {done}"
                )))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// One statistic's place in the data block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Desc {
    name: String,
    /// Byte offset of its value in the data block.
    at: usize,
    gauge: bool,
}

/// The parsed layout: where each kept statistic's value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    data_offset: u64,
    data_len: u64,
    descs: Vec<Desc>,
}

impl Schema {
    /// Parses the header and descriptors from `src`.
    pub fn parse(src: &(impl ReadAt + ?Sized)) -> Result<Self, StatsFdError> {
        let h = read_block(src, 0, HEADER_SIZE as u64)?;
        let name_size = u32_at(&h, 4);
        let num_desc = u32_at(&h, 8);
        let desc_offset = u64::from(u32_at(&h, 16));
        let data_offset = u64::from(u32_at(&h, 20));
        if name_size == 0 || name_size > MAX_NAME_SIZE {
            return Err(layout(format!("name size {name_size}")));
        }
        if num_desc > MAX_DESCS {
            return Err(layout(format!("{num_desc} descriptors")));
        }
        let stride = DESC_FIXED + name_size as usize;
        let descs_len = u64::from(num_desc) * stride as u64;
        let raw = read_block(src, desc_offset, descs_len)?;
        let mut descs = Vec::new();
        let mut data_len = 0u64;
        for d in raw.chunks_exact(stride) {
            let flags = u32_at(d, 0);
            let size = u16_at(d, 6);
            let offset = u64::from(u32_at(d, 8));
            let name_bytes = &d[DESC_FIXED..];
            let end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..end];
            let gauge = match flags & TYPE_MASK {
                TYPE_CUMULATIVE => false,
                TYPE_INSTANT | TYPE_PEAK => true,
                _ => continue, // histograms and types to come
            };
            // Names become JSON keys and Prometheus label values: the
            // kernel's are [a-z0-9_]; anything else is skipped.
            let plain =
                !name.is_empty() && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
            if size != 1 || !plain {
                continue;
            }
            let value_end = offset
                .checked_add(8)
                .filter(|e| *e <= MAX_BLOCK)
                .ok_or_else(|| layout(format!("a value at offset {offset}")))?;
            data_len = data_len.max(value_end);
            descs.push(Desc {
                name: String::from_utf8_lossy(name).into_owned(),
                at: offset as usize,
                gauge,
            });
        }
        Ok(Self {
            data_offset,
            data_len,
            descs,
        })
    }

    /// The current values from `src`: one read of the data block.
    pub fn read(&self, src: &(impl ReadAt + ?Sized)) -> Result<KvmStats, StatsFdError> {
        let data = read_block(src, self.data_offset, self.data_len)?;
        let mut stats = KvmStats::default();
        for d in &self.descs {
            // In bounds: data_len covers every kept descriptor's value.
            let mut v = [0u8; 8];
            v.copy_from_slice(&data[d.at..d.at + 8]);
            let value = u64::from_ne_bytes(v);
            let map = if d.gauge {
                &mut stats.gauges
            } else {
                &mut stats.counters
            };
            map.insert(d.name.clone(), value);
        }
        Ok(stats)
    }
}

/// An open stats fd and its layout.
#[derive(Debug)]
pub struct KvmStatsFd {
    file: File,
    schema: Schema,
}

impl KvmStatsFd {
    /// Opens the stats fd of a KVM VM or vCPU fd and parses its layout.
    /// `None` when the kernel has no binary stats (or their layout is not
    /// one this parser takes, logged): the statistics are then absent.
    pub fn open(kvm_fd: &impl AsRawFd, what: &str) -> Option<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd
        // (or -1); `kvm_fd` is a valid KVM VM or vCPU fd.
        let fd = unsafe { libc::ioctl(kvm_fd.as_raw_fd(), KVM_GET_STATS_FD, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            tracing::debug!(what, error = %e, "no KVM binary stats");
            return None;
        }
        // SAFETY: the ioctl returned a new fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        match Schema::parse(&file) {
            Ok(schema) => Some(Self { file, schema }),
            Err(e) => {
                tracing::warn!(what, error = %e, "KVM binary stats left out");
                None
            }
        }
    }

    /// The current values (one `pread`).
    pub fn read(&self) -> Result<KvmStats, StatsFdError> {
        self.schema.read(&self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats "file": header, id, descriptors, data.
    struct Builder {
        name_size: u32,
        descs: Vec<(u32, u16, u32, Vec<u8>)>,
        data: Vec<u8>,
    }

    impl Builder {
        fn new(name_size: u32) -> Self {
            Self {
                name_size,
                descs: Vec::new(),
                data: Vec::new(),
            }
        }

        fn stat(mut self, name: &str, flags: u32, value: u64) -> Self {
            let offset = self.data.len() as u32;
            self.data.extend_from_slice(&value.to_ne_bytes());
            self.descs
                .push((flags, 1, offset, name.as_bytes().to_vec()));
            self
        }

        fn raw(mut self, flags: u32, size: u16, offset: u32, name: &[u8]) -> Self {
            self.descs.push((flags, size, offset, name.to_vec()));
            self
        }

        fn build(&self) -> Vec<u8> {
            let id_offset = HEADER_SIZE as u32;
            let desc_offset = id_offset + self.name_size;
            let stride = DESC_FIXED as u32 + self.name_size;
            let data_offset = desc_offset + stride * self.descs.len() as u32;
            let mut b = Vec::new();
            for v in [
                0,
                self.name_size,
                self.descs.len() as u32,
                id_offset,
                desc_offset,
                data_offset,
            ] {
                b.extend_from_slice(&v.to_ne_bytes());
            }
            let mut id = b"kvm-1/vcpu-0".to_vec();
            id.resize(self.name_size as usize, 0);
            b.extend_from_slice(&id);
            for (flags, size, offset, name) in &self.descs {
                b.extend_from_slice(&flags.to_ne_bytes());
                b.extend_from_slice(&(-9i16).to_ne_bytes());
                b.extend_from_slice(&size.to_ne_bytes());
                b.extend_from_slice(&offset.to_ne_bytes());
                b.extend_from_slice(&0u32.to_ne_bytes());
                let mut n = name.clone();
                n.resize(self.name_size as usize, 0);
                b.extend_from_slice(&n);
            }
            b.extend_from_slice(&self.data);
            b
        }
    }

    fn parse(b: &[u8]) -> Result<KvmStats, StatsFdError> {
        Schema::parse(b)?.read(b)
    }

    #[test]
    fn reads_counters_and_gauges() {
        let b = Builder::new(48)
            .stat("exits", TYPE_CUMULATIVE, 1234)
            .stat("halt_wakeup", TYPE_CUMULATIVE, 7)
            .stat("pages_4k", TYPE_INSTANT, 99)
            .stat("max_mmu_page_hash_collisions", TYPE_PEAK | 0x100, 3)
            .build();
        let s = parse(&b).unwrap();
        assert_eq!(s.get("exits"), Some(1234));
        assert_eq!(s.counters.len(), 2);
        assert_eq!(s.gauges.get("pages_4k"), Some(&99));
        assert_eq!(s.get("max_mmu_page_hash_collisions"), Some(3));
        assert_eq!(s.get("nope"), None);
    }

    #[test]
    fn skips_histograms_odd_types_and_odd_names() {
        let mut b = Builder::new(48)
            .stat("exits", TYPE_CUMULATIVE, 5)
            .stat("bad name", TYPE_CUMULATIVE, 6)
            .stat("", TYPE_CUMULATIVE, 6)
            .stat("linear_hist", 3, 6)
            .stat("future_type", 9, 6);
        // A 32-bucket histogram whose data is not even there.
        b = b.raw(4, 32, 1 << 16, b"halt_poll_success_hist");
        let s = parse(&b.build()).unwrap();
        assert_eq!(s.counters.keys().collect::<Vec<_>>(), vec!["exits"]);
        assert!(s.gauges.is_empty());
    }

    #[test]
    fn a_name_filling_its_field_has_no_nul() {
        let b = Builder::new(8).stat("abcdefgh", TYPE_CUMULATIVE, 1).build();
        assert_eq!(parse(&b).unwrap().get("abcdefgh"), Some(1));
    }

    #[test]
    fn hostile_layouts_are_errors_not_panics() {
        let good = Builder::new(48).stat("exits", 0, 1).build();
        let set = |at: usize, v: u32| {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
            b
        };
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("short header", good[..10].to_vec()),
            ("name size 0", set(4, 0)),
            ("huge name size", set(4, u32::MAX)),
            ("huge descriptor count", set(8, u32::MAX)),
            ("descriptors past the end", set(8, 1000)),
            ("descriptors far away", set(16, u32::MAX)),
            ("data past the end", set(20, u32::MAX - 3)),
            ("truncated data", good[..good.len() - 1].to_vec()),
            // The value's offset in the first descriptor.
            ("value offset huge", set(24 + 48 + 8, u32::MAX)),
        ];
        for (what, b) in bad {
            assert!(parse(&b).is_err(), "{what}: accepted");
        }
        // Random garbage of every length: never a panic.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..600 {
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let _ = parse(&b);
        }
    }

    /// This host's KVM, where there is one: the parser takes its layout
    /// and the vCPU has the statistics `husk pods` shows.
    #[test]
    fn reads_this_hosts_kvm_stats() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIP reads_this_hosts_kvm_stats: /dev/kvm is not usable here");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let (Some(vm_stats), Some(vcpu_stats)) =
            (KvmStatsFd::open(&vm, "VM"), KvmStatsFd::open(&vcpu, "vCPU"))
        else {
            eprintln!("SKIP reads_this_hosts_kvm_stats: no KVM binary stats here");
            return;
        };
        let v = vcpu_stats.read().unwrap();
        for name in ["exits", "halt_wakeup", "irq_injections", "insn_emulation"] {
            assert!(v.counters.contains_key(name), "{name} missing: {v:?}");
        }
        // Never run: no exits yet.
        assert_eq!(v.get("exits"), Some(0));
        let m = vm_stats.read().unwrap();
        assert!(!m.counters.is_empty() || !m.gauges.is_empty(), "{m:?}");
    }

    #[test]
    fn no_descriptors_is_no_stats() {
        let s = parse(&Builder::new(48).build()).unwrap();
        assert_eq!(s, KvmStats::default());
    }
}
