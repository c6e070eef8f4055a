//! Sequences of well-formed FUSE requests that name entries (CREATE,
//! MKDIR, MKNOD, SYMLINK, LINK, RENAME, RENAME2, LOOKUP, SETATTR of the
//! mode) with hostile names and modes, served by a whole virtio-fs device
//! (fuse-backend-rs passthrough) over `<scratch>/jail/share`. The share
//! holds bait: a directory, a file, and symlinks to `../../sentinel` and to
//! the sentinel's absolute path. Names come from the input or from a list
//! of hostile ones (absolute paths into the sentinel, `.`, `..`, `../x`,
//! names with `/`, empty, with a NUL, 255/256/4096 bytes); parents and
//! sources are node ids the device returned earlier (or junk).
//!
//! Checks after each input: `<scratch>/sentinel` (a sibling of the jail)
//! is empty, the jail holds only the share, the scratch directory only the
//! jail and the sentinel; no entry in the share has S_ISUID or S_ISGID;
//! every request got a FUSE reply for it.
//!
//! Input: up to 24 requests, each: op u8, parent selector u8, then per op
//! (see `Op`): names (a name is a selector u8: bit 7 set picks a hostile
//! name, else that many bytes (0..=127) of input), a mode u16, a selector
//! for a second node, RENAME2 flags u8.
//!
//! run.sh: -max_len=4096
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use husk_devices::virtio::fs::{Fs, FsConfig};
use husk_devices::virtio::{ActivateContext, ActiveQueue, VirtioDevice};
use husk_fuzz::{guest_memory, pump, scratch_dir, CountingInterrupt, Input, Subscriber, Vring};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RING_SIZE: u16 = 256;
const REQUEST_RING: u64 = 0x2_0000;
/// Requests and replies live in the high region.
const REQ: u64 = husk_fuzz::HIGH_REGION;
const REQ_ROOM: usize = 0xc000;
const REPLY: u64 = REQ + REQ_ROOM as u64;
const REPLY_ROOM: u32 = 0x1000;
const MAX_REQUESTS: usize = 24;

const LOOKUP: u32 = 1;
const SETATTR: u32 = 4;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const INIT: u32 = 26;
const CREATE: u32 = 35;
const RENAME2: u32 = 45;
const FATTR_MODE: u32 = 1;

/// Hostile names; `{S}` is the sentinel's absolute path, `{J}` the jail's.
const HOSTILE: &[&str] = &[
    "..",
    ".",
    "",
    "/",
    "../x",
    "../../sentinel/x",
    "{S}/x",
    "{S}",
    "{J}/x",
    "a/b",
    "x/",
    "in\0../../sentinel/x",
    "up",
    "abs",
    "dir",
    "file",
    "up/x",
    "abs/x",
    "//",
    "./x",
];
/// Long names: 255 (legal), 256 and 4096 bytes, `../` repeated.
const LONG: &[(u8, usize)] = &[(b'n', 255), (b'n', 256), (b'n', 4096), (b'.', 4096)];

struct Scratch {
    root: PathBuf,
    jail: PathBuf,
    share: PathBuf,
    sentinel: PathBuf,
}

fn scratch() -> Scratch {
    let root = scratch_dir("fuse_names");
    let jail = root.join("jail");
    let share = jail.join("share");
    let sentinel = root.join("sentinel");
    // A previous input's share goes; its files are inside, by the checks.
    let _ = std::fs::remove_dir_all(&jail);
    std::fs::create_dir_all(share.join("dir")).expect("share");
    std::fs::create_dir_all(&sentinel).expect("sentinel");
    std::fs::write(share.join("file"), b"in the share\n").expect("share file");
    std::os::unix::fs::symlink("../../sentinel", share.join("up")).expect("bait");
    std::os::unix::fs::symlink(&sentinel, share.join("abs")).expect("bait");
    Scratch {
        root,
        jail,
        share,
        sentinel,
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// No entry beneath `dir` (not following links) has a set-id bit.
fn assert_no_setid(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        let m = std::fs::symlink_metadata(&p).expect("metadata");
        assert_eq!(m.mode() & 0o6000, 0, "{} has a set-id bit", p.display());
        if m.is_dir() {
            assert_no_setid(&p);
        }
    }
}

fn assert_contained(s: &Scratch) {
    assert_eq!(names(&s.sentinel), Vec::<String>::new(), "the sentinel");
    assert_eq!(names(&s.jail), ["share"], "the share's parent");
    assert_eq!(names(&s.root), ["jail", "sentinel"], "the scratch dir");
    assert_no_setid(&s.share);
}

fn name(input: &mut Input, s: &Scratch) -> Vec<u8> {
    let sel = input.u8();
    if sel & 0x80 == 0 {
        return input.bytes(usize::from(sel)).to_vec();
    }
    let i = usize::from(sel & 0x7f);
    if let Some(h) = HOSTILE.get(i % (HOSTILE.len() + LONG.len())) {
        return h
            .replace("{S}", &s.sentinel.to_string_lossy())
            .replace("{J}", &s.jail.to_string_lossy())
            .into_bytes();
    }
    let (b, n) = LONG[i % (HOSTILE.len() + LONG.len()) - HOSTILE.len()];
    if b == b'.' {
        return b"../".repeat(n / 3);
    }
    vec![b; n]
}

fn cstr(v: &mut Vec<u8>, name: &[u8]) {
    v.extend_from_slice(name);
    v.push(0);
}

fn u32s(v: &mut Vec<u8>, xs: &[u32]) {
    for x in xs {
        v.extend_from_slice(&x.to_le_bytes());
    }
}

/// A mode from the input: any permission and set-id bits, a file type
/// from a short list.
fn mode(input: &mut Input) -> u32 {
    let m = u32::from(input.u16());
    let kind = [
        libc::S_IFREG,
        libc::S_IFDIR,
        libc::S_IFIFO,
        libc::S_IFSOCK,
        libc::S_IFCHR,
        libc::S_IFLNK,
    ][usize::from((m >> 12) as u8) % 6];
    kind | (m & 0o7777)
}

struct Guest {
    mem: GuestMemoryMmap,
    ring: Vring,
    notify: EventFd,
    em: EventManager<Subscriber>,
    next_desc: u16,
    unique: u64,
}

impl Guest {
    /// Sends one request; returns the reply's error (0 or minus an errno)
    /// and, for entry replies, the node id.
    fn call(&mut self, op: u32, nodeid: u64, args: &[u8]) -> (i32, Option<u64>) {
        self.unique += 1;
        let len = 40 + args.len();
        let mut req = Vec::with_capacity(len);
        u32s(&mut req, &[len as u32, op]);
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&nodeid.to_le_bytes());
        req.extend_from_slice(&[0u8; 16]); // uid, gid, pid (root), extlen
        req.extend_from_slice(args);
        let req = &req[..req.len().min(REQ_ROOM)];
        self.mem
            .write_slice(req, GuestAddress(REQ))
            .expect("request");
        self.mem
            .write_slice(&[0xff; 16], GuestAddress(REPLY))
            .expect("reply");
        let first = self.next_desc;
        self.next_desc = self.next_desc.wrapping_add(2) % RING_SIZE;
        self.ring.add_chain(
            &self.mem,
            first,
            &[
                (REQ, req.len() as u32, 0),
                (REPLY, REPLY_ROOM, husk_fuzz::F_WRITE),
            ],
        );
        self.notify.write(1).expect("kick");
        assert!(pump(&mut self.em), "the device keeps the event loop busy");
        let used = self.ring.take_used(&self.mem);
        assert_eq!(used.len(), 1, "one answer per request");
        assert!(used[0].1 >= 16, "a FUSE reply");
        let unique: u64 = self.mem.read_obj(GuestAddress(REPLY + 8)).expect("unique");
        assert_eq!(unique, self.unique, "the reply answers the request");
        let error: i32 = self.mem.read_obj(GuestAddress(REPLY + 4)).expect("error");
        let entry = matches!(op, LOOKUP | SYMLINK | MKNOD | MKDIR | LINK | CREATE);
        let node = (error == 0 && entry)
            .then(|| self.mem.read_obj(GuestAddress(REPLY + 16)).ok())
            .flatten();
        (error, node)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let s = scratch();
    // The fuzzing thread gets its own umask once: the server's INIT then
    // needs no helper thread.
    husk_devices::virtio::fs::isolate_umask().expect("CLONE_FS");
    let dev = Fs::new(FsConfig {
        tag: "fuzz".into(),
        shared_dir: Some(s.share.clone()),
        read_only: false,
    })
    .expect("virtio-fs device");
    let dev = Arc::new(Mutex::new(dev));
    let mem = guest_memory();
    let rings = [
        Vring::new(&mem, 0, RING_SIZE),
        Vring::new(&mem, REQUEST_RING, RING_SIZE),
    ];
    let notify = [
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ];
    let queues = (0..2)
        .map(|i| ActiveQueue {
            index: i,
            queue: rings[i].queue(husk_devices::virtio::fs::QUEUE_SIZE),
            notify: notify[i].try_clone().expect("eventfd clone"),
        })
        .collect();
    dev.lock()
        .expect("device lock")
        .activate(ActivateContext {
            mem: mem.clone(),
            interrupt: Arc::new(CountingInterrupt::default()),
            acked_features: 0,
            queues,
        })
        .expect("activation");
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    let sub: Subscriber = dev.clone();
    em.add_subscriber(sub);
    let [_, ring] = rings;
    let [_, notify] = notify;
    let mut g = Guest {
        mem,
        ring,
        notify,
        em,
        next_desc: 0,
        unique: 0,
    };
    let mut init = Vec::new();
    u32s(&mut init, &[7, 36, 0x20000, 0]);
    assert_eq!(g.call(INIT, 0, &init).0, 0, "INIT");

    // Node ids to pick from: the root, then what the device returned.
    let mut nodes: Vec<u64> = vec![1];
    for _ in 0..MAX_REQUESTS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let pick = |input: &mut Input, nodes: &[u64]| {
            let sel = input.u8();
            // A few selectors give junk node ids.
            match sel {
                0xff => 0xdead_beef,
                0xfe => 0,
                _ => nodes[usize::from(sel) % nodes.len()],
            }
        };
        let parent = pick(&mut input, &nodes);
        let mut args = Vec::new();
        let opcode = match op % 9 {
            0 => {
                u32s(&mut args, &[libc::O_RDWR as u32, mode(&mut input), 0, 0]);
                cstr(&mut args, &name(&mut input, &s));
                CREATE
            }
            1 => {
                u32s(&mut args, &[mode(&mut input), 0]);
                cstr(&mut args, &name(&mut input, &s));
                MKDIR
            }
            2 => {
                u32s(&mut args, &[mode(&mut input), 0, 0, 0]);
                cstr(&mut args, &name(&mut input, &s));
                MKNOD
            }
            3 => {
                cstr(&mut args, &name(&mut input, &s));
                cstr(&mut args, &name(&mut input, &s));
                SYMLINK
            }
            4 => {
                args.extend_from_slice(&pick(&mut input, &nodes).to_le_bytes());
                cstr(&mut args, &name(&mut input, &s));
                LINK
            }
            5 => {
                args.extend_from_slice(&pick(&mut input, &nodes).to_le_bytes());
                cstr(&mut args, &name(&mut input, &s));
                cstr(&mut args, &name(&mut input, &s));
                RENAME
            }
            6 => {
                args.extend_from_slice(&pick(&mut input, &nodes).to_le_bytes());
                let flags = [
                    0,
                    libc::RENAME_NOREPLACE,
                    libc::RENAME_EXCHANGE,
                    libc::RENAME_WHITEOUT,
                ][usize::from(input.u8() % 4)];
                u32s(&mut args, &[flags, 0]);
                cstr(&mut args, &name(&mut input, &s));
                cstr(&mut args, &name(&mut input, &s));
                RENAME2
            }
            7 => {
                // fuse_setattr_in: valid, padding, fh, size, lock_owner,
                // atime, mtime, ctime, 3 nsec, mode, unused, uid, gid, unused.
                u32s(&mut args, &[FATTR_MODE, 0]);
                args.extend_from_slice(&[0u8; 48 + 12]);
                u32s(&mut args, &[mode(&mut input), 0, 0, 0, 0]);
                SETATTR
            }
            _ => {
                cstr(&mut args, &name(&mut input, &s));
                LOOKUP
            }
        };
        let (_, node) = g.call(opcode, parent, &args);
        if let Some(n) = node {
            if nodes.len() < 64 {
                nodes.push(n);
            }
        }
        assert_contained(&s);
    }
    drop(g);
    drop(dev);
    assert_contained(&s);
});
