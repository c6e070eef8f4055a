//! A guest-side FUSE client for whole-device tests: writes FUSE requests
//! into chains on mock memory and decodes the replies, with the device under
//! a real event manager (no KVM).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, GetattrIn, InHeader, InitIn, InitOut, MkdirIn, OpenIn, OpenOut,
    OutHeader, ReadIn, ReleaseIn, RenameIn, SetattrIn, WriteIn, WriteOut,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

use super::request::opcode;
use super::{Fs, FsConfig, HIPRIO_QUEUE, QUEUE_SIZE, REQUEST_QUEUE};
use crate::virtio::test_utils::{pump, BufAlloc, CountingInterrupt, SplitQueueDriver, Subscriber};
use crate::virtio::{ActivateContext, ActiveQueue, VirtioDevice};

pub const MEM_SIZE: usize = 0x400_0000;
const BUF_START: u64 = 0x10_0000;
pub const ROOT: u64 = 1;

/// The driver's view of the two queues.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub queues: [SplitQueueDriver; 2],
    bufs: BufAlloc,
    pub notify: [EventFd; 2],
    pub irq: Arc<CountingInterrupt>,
}

impl Guest {
    /// A guest and the context that activates a device with its queues.
    pub fn new() -> (Self, ActivateContext) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (hiprio, q0) = SplitQueueDriver::new(0, QUEUE_SIZE);
        let base = hiprio.end().next_multiple_of(0x1000);
        let (request, q1) = SplitQueueDriver::new(base, QUEUE_SIZE);
        assert!(request.end() <= BUF_START);
        let notify = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let irq = Arc::new(CountingInterrupt::default());
        let ctx = ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            acked_features: crate::virtio::VIRTIO_F_VERSION_1,
            queues: vec![
                ActiveQueue {
                    index: HIPRIO_QUEUE,
                    queue: q0,
                    notify: notify[0].try_clone().unwrap(),
                },
                ActiveQueue {
                    index: REQUEST_QUEUE,
                    queue: q1,
                    notify: notify[1].try_clone().unwrap(),
                },
            ],
        };
        let g = Self {
            mem,
            queues: [hiprio, request],
            bufs: BufAlloc::new(BUF_START, MEM_SIZE as u64),
            notify,
            irq,
        };
        (g, ctx)
    }

    pub fn alloc(&mut self, len: u32) -> u64 {
        self.bufs.alloc(len)
    }

    /// Copies `data` into a fresh buffer; returns its address.
    pub fn put(&mut self, data: &[u8]) -> u64 {
        let at = self.alloc(data.len() as u32);
        self.mem.write_slice(data, GuestAddress(at)).unwrap();
        at
    }

    pub fn bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b
    }

    /// Makes a chain available on `queue` and kicks; returns its head.
    pub fn submit(&mut self, queue: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.queues[queue].submit(&self.mem, bufs);
        self.notify[queue].write(1).unwrap();
        head
    }

    /// Used entries of `queue` since the last call: (head, len).
    pub fn used(&mut self, queue: usize) -> Vec<(u16, u32)> {
        self.queues[queue].used(&self.mem)
    }
}

/// A decoded reply.
#[derive(Debug)]
pub struct Reply {
    /// The used length the device reported.
    pub used: u32,
    pub out: OutHeader,
    /// The bytes after the out header, up to `out.len`.
    pub body: Vec<u8>,
}

impl Reply {
    /// The reply's errno (positive), 0 on success.
    pub fn errno(&self) -> i32 {
        -self.out.error
    }

    /// The body as a `T`, or the errno.
    pub fn ok<T: ByteValued + Default>(&self) -> Result<T, i32> {
        if self.out.error != 0 {
            return Err(self.errno());
        }
        let mut t = T::default();
        let n = std::mem::size_of::<T>();
        assert!(self.body.len() >= n, "short reply: {self:?}");
        t.as_mut_slice().copy_from_slice(&self.body[..n]);
        Ok(t)
    }

    /// Success with no body, or the errno.
    pub fn unit(&self) -> Result<(), i32> {
        if self.out.error != 0 {
            return Err(self.errno());
        }
        Ok(())
    }
}

/// A name argument: the bytes and a NUL.
pub fn cname(name: &[u8]) -> Vec<u8> {
    let mut v = name.to_vec();
    v.push(0);
    v
}

/// Concatenates a fixed argument struct and trailing bytes.
pub fn args<T: ByteValued>(fixed: T, tail: &[u8]) -> Vec<u8> {
    let mut v = fixed.as_slice().to_vec();
    v.extend_from_slice(tail);
    v
}

/// Room for most replies.
pub const REPLY_ROOM: u32 = 4096;

/// A device (over a temporary directory unless a template) under a real
/// event manager, activated, with a FUSE client.
pub struct Rig {
    pub dev: Arc<Mutex<Fs>>,
    pub em: EventManager<Subscriber>,
    pub guest: Guest,
    pub dir: Option<TempDir>,
    next_unique: u64,
}

impl Rig {
    /// A device over a new temporary directory.
    pub fn new(read_only: bool) -> Rig {
        let dir = TempDir::new_with_prefix("/tmp/husk-fs-").unwrap();
        let dev = Fs::new(FsConfig {
            tag: "share".to_string(),
            shared_dir: Some(dir.as_path().to_path_buf()),
            read_only,
        })
        .unwrap();
        Rig::with_device(dev, Some(dir))
    }

    /// Runs `dev` (whose directory, if any, is `dir`).
    pub fn with_device(dev: Fs, dir: Option<TempDir>) -> Rig {
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Subscriber>::new().unwrap();
        em.add_subscriber(dev.clone());
        let (guest, ctx) = Guest::new();
        dev.lock().unwrap().activate(ctx).unwrap();
        let mut rig = Rig {
            dev,
            em,
            guest,
            dir,
            next_unique: 1,
        };
        rig.pump();
        rig
    }

    /// The shared directory on the host.
    pub fn root(&self) -> &Path {
        self.dir.as_ref().unwrap().as_path()
    }

    /// `rel` inside the shared directory on the host.
    pub fn host(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn pump(&mut self) {
        pump(&mut self.em);
    }

    /// Submits a chain on `queue`, runs the loop, and returns the one used
    /// length.
    pub fn run(&mut self, queue: usize, bufs: &[(u64, u32, bool)]) -> u32 {
        let head = self.guest.submit(queue, bufs);
        self.pump();
        let used = self.guest.used(queue);
        assert_eq!(used.len(), 1, "one used entry");
        assert_eq!(used[0].0, head);
        used[0].1
    }

    /// An in-header for `op` on `nodeid` with `args_len` bytes of arguments.
    pub fn header(&mut self, op: u32, nodeid: u64, args_len: usize) -> InHeader {
        let unique = self.next_unique;
        self.next_unique += 1;
        InHeader {
            len: (std::mem::size_of::<InHeader>() + args_len) as u32,
            opcode: op,
            unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        }
    }

    /// Sends a request the way Linux lays it out (header, arguments; out
    /// header, room for the rest) on the request queue and decodes the
    /// reply.
    pub fn call(&mut self, op: u32, nodeid: u64, arg: &[u8], room: u32) -> Reply {
        let h = self.header(op, nodeid, arg.len());
        self.call_raw(REQUEST_QUEUE, h, arg, room)
    }

    /// Sends `header` and `arg` as given on `queue`.
    pub fn call_raw(&mut self, queue: usize, header: InHeader, arg: &[u8], room: u32) -> Reply {
        let h = self.guest.put(header.as_slice());
        let mut bufs = vec![(h, 40, false)];
        if !arg.is_empty() {
            let a = self.guest.put(arg);
            bufs.push((a, arg.len() as u32, false));
        }
        let out = self.guest.put(&[0xee; 16]);
        bufs.push((out, 16, true));
        let body = if room > 16 {
            let b = self.guest.alloc(room - 16);
            bufs.push((b, room - 16, true));
            b
        } else {
            0
        };
        let used = self.run(queue, &bufs);
        let mut o = OutHeader::default();
        o.as_mut_slice().copy_from_slice(&self.guest.bytes(out, 16));
        let body_len = (o.len as usize)
            .saturating_sub(16)
            .min(room.saturating_sub(16) as usize);
        let body = if body_len > 0 {
            self.guest.bytes(body, body_len)
        } else {
            Vec::new()
        };
        if used >= 16 {
            assert_eq!(o.unique, header.unique, "reply to the request");
            assert_eq!(o.len, used, "used length is the reply's");
        }
        Reply { used, out: o, body }
    }

    pub fn init(&mut self) -> Result<InitOut, i32> {
        self.init_with_flags(0)
    }

    pub fn init_with_flags(&mut self, flags: u32) -> Result<InitOut, i32> {
        let arg = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 * 1024,
            flags,
        };
        self.call(opcode::INIT, 0, arg.as_slice(), REPLY_ROOM).ok()
    }

    /// DESTROY (the guest unmounts).
    pub fn destroy(&mut self) -> Result<(), i32> {
        self.call(opcode::DESTROY, 0, &[], REPLY_ROOM).unit()
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<EntryOut, i32> {
        self.call(opcode::LOOKUP, parent, &cname(name), REPLY_ROOM)
            .ok()
    }

    pub fn getattr(&mut self, node: u64) -> Result<AttrOut, i32> {
        self.call(
            opcode::GETATTR,
            node,
            GetattrIn::default().as_slice(),
            REPLY_ROOM,
        )
        .ok()
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let arg = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call(opcode::OPEN, node, arg.as_slice(), REPLY_ROOM)
            .ok::<OpenOut>()
            .map(|o| o.fh)
    }

    pub fn release(&mut self, node: u64, fh: u64) -> Result<(), i32> {
        let arg = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(opcode::RELEASE, node, arg.as_slice(), REPLY_ROOM)
            .unit()
    }

    /// CREATE: the new entry and its file handle.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(EntryOut, u64), i32> {
        let arg = CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | mode,
            umask: 0,
            fuse_flags: 0,
        };
        let r = self.call(opcode::CREATE, parent, &args(arg, &cname(name)), REPLY_ROOM);
        let entry: EntryOut = r.ok()?;
        let n = std::mem::size_of::<EntryOut>();
        let mut open = OpenOut::default();
        open.as_mut_slice()
            .copy_from_slice(&r.body[n..n + std::mem::size_of::<OpenOut>()]);
        Ok((entry, open.fh))
    }

    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let arg = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        self.call(opcode::WRITE, node, &args(arg, data), REPLY_ROOM)
            .ok::<WriteOut>()
            .map(|w| w.size)
    }

    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let r = self.call(opcode::READ, node, arg.as_slice(), size + 16);
        r.unit()?;
        Ok(r.body)
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32) -> Result<EntryOut, i32> {
        let arg = MkdirIn { mode, umask: 0 };
        self.call(opcode::MKDIR, parent, &args(arg, &cname(name)), REPLY_ROOM)
            .ok()
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<(), i32> {
        self.call(opcode::UNLINK, parent, &cname(name), REPLY_ROOM)
            .unit()
    }

    pub fn rename(&mut self, olddir: u64, old: &[u8], newdir: u64, new: &[u8]) -> Result<(), i32> {
        let mut tail = cname(old);
        tail.extend(cname(new));
        let arg = RenameIn { newdir };
        self.call(opcode::RENAME, olddir, &args(arg, &tail), REPLY_ROOM)
            .unit()
    }

    /// SYMLINK `name` in `parent` pointing to `target`.
    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> Result<EntryOut, i32> {
        let mut arg = cname(name);
        arg.extend(cname(target));
        self.call(opcode::SYMLINK, parent, &arg, REPLY_ROOM).ok()
    }

    pub fn readlink(&mut self, node: u64) -> Result<Vec<u8>, i32> {
        let r = self.call(opcode::READLINK, node, &[], REPLY_ROOM);
        r.unit()?;
        Ok(r.body)
    }

    pub fn setattr(&mut self, node: u64, arg: SetattrIn) -> Result<AttrOut, i32> {
        self.call(opcode::SETATTR, node, arg.as_slice(), REPLY_ROOM)
            .ok()
    }
}
