//! Whole-device tests: a device over a temporary directory, driven with FUSE
//! requests through its queues on mock memory under a real event manager.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::Ordering;

use fuse_backend_rs::abi::fuse_abi::{ForgetIn, InHeader, SetattrIn};
use vm_memory::{ByteValued, Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use super::request::{opcode, HEAD_BYTES};
use super::test_utils::{args, cname, Rig, MEM_SIZE, REPLY_ROOM, ROOT};
use super::{
    Fs, FsConfig, FsError, FsState, HIPRIO_QUEUE, MAX_REQUEST_BYTES, QUEUE_SIZE, REQUEST_QUEUE,
};
use crate::virtio::{device_type, VirtioDevice, VIRTIO_F_VERSION_1};

const FATTR_MODE: u32 = 0x1;
const FATTR_SIZE: u32 = 0x8;

fn config(tag: &str, dir: Option<&std::path::Path>, read_only: bool) -> FsConfig {
    FsConfig {
        tag: tag.to_string(),
        shared_dir: dir.map(|d| d.to_path_buf()),
        read_only,
    }
}

#[test]
fn config_space_and_features() {
    let rig = Rig::new(false);
    let dev = rig.dev.lock().unwrap();
    assert_eq!(dev.device_type(), device_type::FS);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(dev.features(), VIRTIO_F_VERSION_1);
    assert_eq!(dev.acked_features(), VIRTIO_F_VERSION_1);
    let mut tag = [0xffu8; 36];
    dev.read_config(0, &mut tag);
    assert_eq!(&tag[..5], b"share");
    assert!(tag[5..].iter().all(|b| *b == 0));
    let mut word = [0u8; 4];
    dev.read_config(36, &mut word);
    assert_eq!(u32::from_le_bytes(word), 1, "num_request_queues");
    // Partial and out-of-range reads.
    let mut two = [0u8; 2];
    dev.read_config(1, &mut two);
    assert_eq!(&two, b"ha");
    dev.read_config(40, &mut word);
    assert_eq!(word, [0; 4]);
    assert_eq!(dev.queue_states().unwrap().len(), 2);
    assert_eq!(dev.tag(), "share");
    assert!(!dev.read_only());
}

#[test]
fn tag_validation() {
    let dir = TempDir::new_with_prefix("/tmp/husk-fs-tag-").unwrap();
    let d = Some(dir.as_path());
    let long = "t".repeat(37);
    assert!(matches!(
        Fs::new(config("", d, false)),
        Err(FsError::TagLength { len: 0, .. })
    ));
    let e = Fs::new(config(&long, d, false)).err().unwrap();
    assert!(matches!(e, FsError::TagLength { len: 37, .. }));
    assert!(e.to_string().contains(&long));
    assert!(matches!(
        Fs::new(config("a\0b", d, false)),
        Err(FsError::TagByte { .. })
    ));
    assert!(matches!(
        Fs::new(config("a\nb", None, false)),
        Err(FsError::TagByte { .. })
    ));
    let max = "m".repeat(36);
    let dev = Fs::new(config(&max, d, false)).unwrap();
    let mut tag = [0u8; 36];
    dev.read_config(0, &mut tag);
    assert_eq!(&tag[..], max.as_bytes());
}

#[test]
fn shared_dir_errors_name_tag_and_dir() {
    let dir = TempDir::new_with_prefix("/tmp/husk-fs-dir-").unwrap();
    let missing = dir.as_path().join("missing");
    let e = Fs::new(config("vol", Some(&missing), false)).err().unwrap();
    assert!(matches!(e, FsError::SharedDir { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("vol") && msg.contains(missing.to_str().unwrap()),
        "{msg}"
    );

    let file = dir.as_path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = Fs::new(config("vol", Some(&file), false)).err().unwrap();
    assert!(matches!(e, FsError::NotADirectory { .. }), "{e}");
    assert!(e.to_string().contains(file.to_str().unwrap()));

    // A symlink to a directory is served as the directory it names.
    let link = dir.as_path().join("link");
    std::os::unix::fs::symlink(dir.as_path(), &link).unwrap();
    let dev = Fs::new(config("vol", Some(&link), false)).unwrap();
    assert_eq!(
        dev.shared_dir().unwrap(),
        std::fs::canonicalize(dir.as_path()).unwrap()
    );
}

#[test]
fn fuse_traffic_reaches_the_host_directory() {
    let mut rig = Rig::new(false);
    let init = rig.init().unwrap();
    assert_eq!(init.major, 7);
    // The largest WRITE the guest may send fits the request bound.
    assert!(
        init.max_write + 80 <= MAX_REQUEST_BYTES,
        "{}",
        init.max_write
    );
    assert!(rig.dev.lock().unwrap().mounted());

    assert_eq!(rig.lookup(ROOT, b"nothing").err(), Some(libc::ENOENT));
    let root = rig.getattr(ROOT).unwrap();
    assert_eq!(root.attr.mode & libc::S_IFMT, libc::S_IFDIR);

    // CREATE + WRITE + READ.
    let (file, fh) = rig.create(ROOT, b"hello.txt", 0o644, libc::O_RDWR).unwrap();
    assert_eq!(rig.write(file.nodeid, fh, 0, b"hello, world").unwrap(), 12);
    assert_eq!(rig.write(file.nodeid, fh, 7, b"virtio").unwrap(), 6);
    assert_eq!(
        rig.read(file.nodeid, fh, 0, 4096).unwrap(),
        b"hello, virtio".to_vec()
    );
    assert_eq!(rig.read(file.nodeid, fh, 7, 3).unwrap(), b"vir".to_vec());
    rig.release(file.nodeid, fh).unwrap();
    assert_eq!(
        std::fs::read(rig.host("hello.txt")).unwrap(),
        b"hello, virtio"
    );
    assert_eq!(rig.getattr(file.nodeid).unwrap().attr.size, 13);
    let again = rig.lookup(ROOT, b"hello.txt").unwrap();
    assert_eq!(again.nodeid, file.nodeid);

    // MKDIR, a file inside, RENAME across directories, UNLINK.
    let dir = rig.mkdir(ROOT, b"sub", 0o755).unwrap();
    assert_eq!(dir.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    assert!(rig.host("sub").is_dir());
    let (inner, fh) = rig
        .create(dir.nodeid, b"inner", 0o600, libc::O_WRONLY)
        .unwrap();
    rig.write(inner.nodeid, fh, 0, b"data").unwrap();
    rig.release(inner.nodeid, fh).unwrap();
    rig.rename(dir.nodeid, b"inner", ROOT, b"moved").unwrap();
    assert!(!rig.host("sub/inner").exists());
    assert_eq!(std::fs::read(rig.host("moved")).unwrap(), b"data");
    rig.unlink(ROOT, b"moved").unwrap();
    assert!(!rig.host("moved").exists());
    assert_eq!(rig.lookup(ROOT, b"moved").err(), Some(libc::ENOENT));

    // SYMLINK + READLINK.
    let link = rig.symlink(ROOT, b"ln", b"hello.txt").unwrap();
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(rig.readlink(link.nodeid).unwrap(), b"hello.txt".to_vec());
    assert_eq!(
        std::fs::read_link(rig.host("ln")).unwrap().to_str(),
        Some("hello.txt")
    );

    // SETATTR: chmod, then truncate.
    let attr = rig
        .setattr(
            file.nodeid,
            SetattrIn {
                valid: FATTR_MODE,
                mode: 0o600,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(attr.attr.mode & 0o7777, 0o600);
    let meta = std::fs::metadata(rig.host("hello.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let attr = rig
        .setattr(
            file.nodeid,
            SetattrIn {
                valid: FATTR_SIZE,
                size: 5,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(attr.attr.size, 5);
    assert_eq!(std::fs::read(rig.host("hello.txt")).unwrap(), b"hello");

    // OPENDIR + READDIR list what the host holds.
    let dh = rig
        .call(
            opcode::OPENDIR,
            ROOT,
            fuse_backend_rs::abi::fuse_abi::OpenIn::default().as_slice(),
            REPLY_ROOM,
        )
        .ok::<fuse_backend_rs::abi::fuse_abi::OpenOut>()
        .unwrap()
        .fh;
    let read = fuse_backend_rs::abi::fuse_abi::ReadIn {
        fh: dh,
        size: 4096,
        ..Default::default()
    };
    let r = rig.call(opcode::READDIR, ROOT, read.as_slice(), 4096 + 16);
    r.unit().unwrap();
    let mut names = dirent_names(&r.body);
    names.sort();
    assert_eq!(names, vec!["hello.txt", "ln", "sub"]);

    // FORGET on the hiprio queue: consumed, no reply.
    let h = rig.header(opcode::FORGET, file.nodeid, 8);
    let r = rig.call_raw(HIPRIO_QUEUE, h, ForgetIn { nlookup: 1 }.as_slice(), 0);
    assert_eq!(r.used, 0);
    assert!(rig.guest.irq.queue.load(Ordering::SeqCst) > 0);
}

/// The names in a READDIR reply (`struct fuse_dirent`: ino, off, namelen,
/// type, name, padded to 8 bytes).
fn dirent_names(mut b: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while b.len() >= 24 {
        let namelen = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
        names.push(String::from_utf8(b[24..24 + namelen].to_vec()).unwrap());
        let step = (24 + namelen).next_multiple_of(8).min(b.len());
        b = &b[step..];
    }
    names
}

#[test]
fn large_requests_within_the_bounds() {
    let mut rig = Rig::new(false);
    rig.init().unwrap();
    let (file, fh) = rig.create(ROOT, b"big", 0o644, libc::O_RDWR).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    // 1 MiB of payload over 256 descriptors, as Linux sends it.
    let wi = fuse_backend_rs::abi::fuse_abi::WriteIn {
        fh,
        size: data.len() as u32,
        ..Default::default()
    };
    let h = rig.header(opcode::WRITE, file.nodeid, 40 + data.len());
    let hdr = rig.guest.put(h.as_slice());
    let arg = rig.guest.put(wi.as_slice());
    let mut bufs = vec![(hdr, 40, false), (arg, 40, false)];
    for page in data.chunks(4096) {
        bufs.push((rig.guest.put(page), 4096, false));
    }
    let out = rig.guest.alloc(24);
    bufs.push((out, 24, true));
    assert_eq!(rig.run(REQUEST_QUEUE, &bufs), 24);
    assert_eq!(std::fs::read(rig.host("big")).unwrap(), data);
    let back = rig.read(file.nodeid, fh, 0, 1 << 20).unwrap();
    assert!(back == data);
}

#[test]
fn host_changes_show_in_the_guest() {
    let mut rig = Rig::new(false);
    rig.init().unwrap();
    assert_eq!(rig.lookup(ROOT, b"late").err(), Some(libc::ENOENT));
    std::fs::write(rig.host("late"), b"first").unwrap();
    let e = rig.lookup(ROOT, b"late").unwrap();
    assert_eq!(e.attr.size, 5);
    let fh = rig.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(rig.read(e.nodeid, fh, 0, 100).unwrap(), b"first".to_vec());
    std::fs::write(rig.host("late"), b"second version").unwrap();
    assert_eq!(
        rig.read(e.nodeid, fh, 0, 100).unwrap(),
        b"second version".to_vec()
    );
    assert_eq!(rig.getattr(e.nodeid).unwrap().attr.size, 14);
    std::fs::remove_file(rig.host("late")).unwrap();
    assert_eq!(rig.lookup(ROOT, b"late").err(), Some(libc::ENOENT));
}

/// A directory next to the share, with a file the guest must not reach.
fn outside() -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new_with_prefix("/tmp/husk-fs-outside-").unwrap();
    let secret = dir.as_path().join("secret");
    std::fs::write(&secret, b"host secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    (dir, secret)
}

fn assert_untouched(dir: &TempDir, secret: &std::path::Path) {
    let meta = std::fs::symlink_metadata(secret).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(secret).unwrap(), b"host secret");
    let names: Vec<_> = std::fs::read_dir(dir.as_path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
}

#[test]
fn the_guest_cannot_leave_the_share() {
    let (out_dir, secret) = outside();
    let mut rig = Rig::new(false);
    rig.init().unwrap();
    let root_ino = std::fs::metadata(rig.root()).unwrap().ino();

    // `..` at the root is the root; `.` too.
    let up = rig.lookup(ROOT, b"..").unwrap();
    assert_eq!(up.attr.ino, root_ino);
    assert_eq!(up.nodeid, ROOT);
    assert_eq!(rig.lookup(ROOT, b".").unwrap().attr.ino, root_ino);

    // Names with a slash, and `..` in creations.
    assert_eq!(rig.lookup(ROOT, b"a/b").err(), Some(libc::EINVAL));
    let rel = format!(
        "../{}",
        out_dir.as_path().file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(rig.lookup(ROOT, rel.as_bytes()).err(), Some(libc::EINVAL));
    assert_eq!(
        rig.create(ROOT, b"../escaped", 0o644, libc::O_RDWR).err(),
        Some(libc::EINVAL)
    );
    assert_eq!(rig.mkdir(ROOT, b"..", 0o755).err(), Some(libc::EINVAL));
    assert_eq!(rig.symlink(ROOT, b"x/y", b"t").err(), Some(libc::EINVAL));
    assert_eq!(
        rig.rename(ROOT, b"..", ROOT, b"z").err(),
        Some(libc::EINVAL)
    );

    // Symlinks are looked up as links, never followed on the host.
    let passwd = rig.symlink(ROOT, b"passwd", b"/etc/passwd").unwrap();
    let entry = rig.lookup(ROOT, b"passwd").unwrap();
    assert_eq!(entry.nodeid, passwd.nodeid);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(entry.attr.size, "/etc/passwd".len() as u64);
    if let Ok(meta) = std::fs::metadata("/etc/passwd") {
        assert_ne!(entry.attr.ino, meta.ino());
    }
    assert_eq!(rig.readlink(entry.nodeid).unwrap(), b"/etc/passwd".to_vec());
    assert_eq!(rig.lookup(entry.nodeid, b"x").err(), Some(libc::ENOTDIR));

    let updir = rig.symlink(ROOT, b"up", b"../../..").unwrap();
    let e = rig.lookup(ROOT, b"up").unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(rig.lookup(updir.nodeid, b"etc").err(), Some(libc::ENOTDIR));
    assert_eq!(rig.readlink(updir.nodeid).unwrap(), b"../../..".to_vec());

    // Links to the outside file and directory: opening, truncating,
    // chmod-ing, creating through them reach nothing outside.
    let file_link = rig
        .symlink(ROOT, b"secret", secret.to_str().unwrap().as_bytes())
        .unwrap();
    let dir_link = rig
        .symlink(
            ROOT,
            b"outdir",
            out_dir.as_path().to_str().unwrap().as_bytes(),
        )
        .unwrap();
    for flags in [libc::O_RDONLY, libc::O_RDWR | libc::O_TRUNC, libc::O_WRONLY] {
        assert!(
            rig.open(file_link.nodeid, flags).is_err(),
            "open {flags:#x}"
        );
    }
    assert!(rig
        .setattr(
            file_link.nodeid,
            SetattrIn {
                valid: FATTR_SIZE,
                size: 0,
                ..Default::default()
            }
        )
        .is_err());
    // chmod of a link is about the link itself, whatever the host says.
    let _ = rig.setattr(
        file_link.nodeid,
        SetattrIn {
            valid: FATTR_MODE,
            mode: 0o777,
            ..Default::default()
        },
    );
    assert_eq!(
        rig.lookup(dir_link.nodeid, b"secret").err(),
        Some(libc::ENOTDIR)
    );
    assert!(rig
        .create(dir_link.nodeid, b"planted", 0o644, libc::O_RDWR)
        .is_err());
    assert!(rig.mkdir(dir_link.nodeid, b"planted", 0o755).is_err());
    assert!(rig.open(dir_link.nodeid, libc::O_RDONLY).is_err());

    // No device nodes; FIFOs are fine.
    let mknod = |rig: &mut Rig, name: &[u8], mode: u32| {
        let arg = fuse_backend_rs::abi::fuse_abi::MknodIn {
            mode,
            rdev: 0x0801,
            umask: 0,
            padding: 0,
        };
        rig.call(opcode::MKNOD, ROOT, &args(arg, &cname(name)), REPLY_ROOM)
            .errno()
    };
    assert_eq!(mknod(&mut rig, b"sda", libc::S_IFBLK | 0o600), libc::EPERM);
    assert_eq!(mknod(&mut rig, b"mem", libc::S_IFCHR | 0o600), libc::EPERM);
    assert!(!rig.host("sda").exists() && !rig.host("mem").exists());
    assert_eq!(mknod(&mut rig, b"fifo", libc::S_IFIFO | 0o600), 0);
    let fifo = rig.lookup(ROOT, b"fifo").unwrap();
    assert_eq!(
        rig.open(fifo.nodeid, libc::O_RDONLY).err(),
        Some(libc::EBADF)
    );

    // Unknown node ids are refused.
    assert_eq!(rig.getattr(0xdead_beef).err(), Some(libc::EBADF));
    assert_eq!(rig.lookup(0xdead_beef, b"x").err(), Some(libc::EBADF));

    assert_untouched(&out_dir, &secret);
    // The links are in the share, as links.
    assert!(std::fs::symlink_metadata(rig.host("secret"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn read_only_share_refuses_changes() {
    let mut rig = Rig::new(true);
    std::fs::write(rig.host("file"), b"read me").unwrap();
    std::fs::create_dir(rig.host("dir")).unwrap();
    let before = listing(&rig);
    rig.init().unwrap();
    let file = rig.lookup(ROOT, b"file").unwrap();
    let dir = rig.lookup(ROOT, b"dir").unwrap();

    let fh = rig.open(file.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(
        rig.read(file.nodeid, fh, 0, 100).unwrap(),
        b"read me".to_vec()
    );
    assert_eq!(rig.write(file.nodeid, fh, 0, b"x").err(), Some(libc::EROFS));
    for flags in [
        libc::O_RDWR,
        libc::O_WRONLY,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_RDONLY | libc::O_APPEND,
    ] {
        assert_eq!(rig.open(file.nodeid, flags).err(), Some(libc::EROFS));
    }
    let erofs = Some(libc::EROFS);
    assert_eq!(rig.create(ROOT, b"new", 0o644, libc::O_RDWR).err(), erofs);
    assert_eq!(rig.mkdir(ROOT, b"newdir", 0o755).err(), erofs);
    assert_eq!(rig.unlink(ROOT, b"file").err(), erofs);
    assert_eq!(rig.rename(ROOT, b"file", dir.nodeid, b"f").err(), erofs);
    assert_eq!(rig.symlink(ROOT, b"l", b"file").err(), erofs);
    let chmod = SetattrIn {
        valid: FATTR_MODE,
        mode: 0o777,
        ..Default::default()
    };
    assert_eq!(rig.setattr(file.nodeid, chmod).err(), erofs);
    let truncate = SetattrIn {
        valid: FATTR_SIZE,
        ..Default::default()
    };
    assert_eq!(rig.setattr(file.nodeid, truncate).err(), erofs);
    let rmdir = rig.call(opcode::RMDIR, ROOT, &cname(b"dir"), REPLY_ROOM);
    assert_eq!(rmdir.errno(), libc::EROFS);
    assert_eq!(rmdir.used, 16);
    // Reading the directory still works.
    let dh = rig
        .call(
            opcode::OPENDIR,
            dir.nodeid,
            fuse_backend_rs::abi::fuse_abi::OpenIn::default().as_slice(),
            REPLY_ROOM,
        )
        .ok::<fuse_backend_rs::abi::fuse_abi::OpenOut>()
        .unwrap();
    assert_ne!(dh.fh, 0);
    assert!(rig.dev.lock().unwrap().read_only());
    assert_eq!(listing(&rig), before);
    assert_eq!(std::fs::read(rig.host("file")).unwrap(), b"read me");
}

/// (name, mode, content) of every entry of the shared directory.
fn listing(rig: &Rig) -> Vec<(String, u32, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(rig.root())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            let content = if meta.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (
                e.file_name().into_string().unwrap(),
                meta.permissions().mode(),
                content,
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn template_device_answers_enodev() {
    let dev = Fs::new(config("template", None, false)).unwrap();
    assert!(dev.shared_dir().is_none());
    let mut rig = Rig::with_device(dev, None);
    assert_eq!(rig.init().err(), Some(libc::ENODEV));
    assert_eq!(rig.lookup(ROOT, b"x").err(), Some(libc::ENODEV));
    let h = rig.header(opcode::FORGET, 5, 8);
    let r = rig.call_raw(HIPRIO_QUEUE, h, ForgetIn { nlookup: 1 }.as_slice(), 0);
    assert_eq!(r.used, 0);
    assert!(!rig.dev.lock().unwrap().mounted());
    let state = rig.dev.lock().unwrap().state().unwrap();
    assert_eq!(state.tag, "template");
}

#[test]
fn malformed_chains_do_not_stop_the_device() {
    let mut rig = Rig::new(false);
    rig.init().unwrap();
    std::fs::write(rig.host("ok"), b"1").unwrap();
    let q = REQUEST_QUEUE;
    let reply = rig.guest.alloc(REPLY_ROOM);

    // Header shorter than fuse_in_header.
    let short = rig.guest.put(&[1u8; 20]);
    assert_eq!(
        rig.run(q, &[(short, 20, false), (reply, REPLY_ROOM, true)]),
        0
    );

    // `len` larger than the chain: answered EINVAL.
    let mut h = rig.header(opcode::GETATTR, ROOT, 16);
    h.len = 4000;
    let r = rig.call_raw(q, h, &[0u8; 16], REPLY_ROOM);
    assert_eq!((r.used, r.errno()), (16, libc::EINVAL));
    // `len` smaller than the header.
    let mut h = rig.header(opcode::GETATTR, ROOT, 16);
    h.len = 8;
    let r = rig.call_raw(q, h, &[0u8; 16], REPLY_ROOM);
    assert_eq!((r.used, r.errno()), (16, libc::EINVAL));

    // Unknown opcodes, and the holes fuse-backend-rs cannot represent.
    for op in [0, 7, 19, 41, 47, 48, 50, 51, 999, u32::MAX] {
        let r = rig.call(op, ROOT, &[0u8; 64], REPLY_ROOM);
        assert_eq!((r.used, r.errno()), (16, libc::ENOSYS), "opcode {op}");
    }

    // A write-only "header": nothing readable.
    assert_eq!(rig.run(q, &[(reply, REPLY_ROOM, true)]), 0);
    // Readable after writable.
    let h = rig.header(opcode::GETATTR, ROOT, 16);
    let hdr = rig.guest.put(h.as_slice());
    assert_eq!(
        rig.run(q, &[(reply, 16, true), (hdr, 40, false), (reply, 64, true)]),
        0
    );
    // Huge descriptor lengths.
    assert_eq!(
        rig.run(q, &[(hdr, u32::MAX, false), (reply, REPLY_ROOM, true)]),
        0
    );
    assert_eq!(rig.run(q, &[(hdr, 40, false), (reply, u32::MAX, true)]), 0);
    // Addresses outside guest memory, and straddling its end.
    let beyond = MEM_SIZE as u64 + 0x1000;
    assert_eq!(
        rig.run(q, &[(beyond, 40, false), (reply, REPLY_ROOM, true)]),
        0
    );
    assert_eq!(
        rig.run(q, &[(MEM_SIZE as u64 - 8, 40, false), (reply, 64, true)]),
        0
    );
    assert_eq!(rig.run(q, &[(hdr, 40, false), (beyond, 64, true)]), 0);
    // A request larger than the bound.
    let big = MAX_REQUEST_BYTES + 1;
    assert_eq!(rig.run(q, &[(0x20_0000, big, false), (reply, 64, true)]), 0);
    // No writable descriptor: nowhere to answer.
    let h = rig.header(opcode::LOOKUP, ROOT, 3);
    let hdr = rig.guest.put(h.as_slice());
    let name = rig.guest.put(&cname(b"ok"));
    assert_eq!(rig.run(q, &[(hdr, 40, false), (name, 3, false)]), 0);
    // Too little room for the reply: the server fails, no room for an error.
    let h = rig.header(opcode::LOOKUP, ROOT, 3);
    let hdr = rig.guest.put(h.as_slice());
    assert_eq!(
        rig.run(q, &[(hdr, 40, false), (name, 3, false), (reply, 8, true)]),
        0
    );
    let h = rig.header(opcode::LOOKUP, ROOT, 3);
    let r = rig.call_raw(q, h, &cname(b"ok"), 40);
    assert_eq!((r.used, r.errno()), (16, libc::EIO));
    // Arguments the server cannot decode: SYMLINK without its second name.
    let r = rig.call(opcode::SYMLINK, ROOT, b"name\0target", REPLY_ROOM);
    assert_eq!((r.used, r.errno()), (16, libc::EINVAL));
    assert!(!rig.host("name").exists());
    // WRITE whose size exceeds its payload.
    let e = rig.lookup(ROOT, b"ok").unwrap();
    let fh = rig.open(e.nodeid, libc::O_RDWR).unwrap();
    let wi = fuse_backend_rs::abi::fuse_abi::WriteIn {
        fh,
        size: 1 << 20,
        ..Default::default()
    };
    let r = rig.call(opcode::WRITE, e.nodeid, &args(wi, b"abc"), REPLY_ROOM);
    assert!(r.used >= 16);
    assert!(std::fs::metadata(rig.host("ok")).unwrap().len() <= 3);
    // One-way requests with garbage: consumed, no reply.
    let h = rig.header(opcode::BATCH_FORGET, ROOT, 8);
    let r = rig.call_raw(HIPRIO_QUEUE, h, &[0xff; 8], 0);
    assert_eq!(r.used, 0);
    let h = rig.header(opcode::FORGET, ROOT, 0);
    let r = rig.call_raw(HIPRIO_QUEUE, h, &[], 0);
    assert_eq!(r.used, 0);

    // A descriptor that chains to itself ends with the queue's size.
    let h = rig.header(opcode::GETATTR, ROOT, 16);
    let hdr = rig.guest.put(h.as_slice());
    let driver = &mut rig.guest.queues[q];
    driver.write_desc(&rig.guest.mem, 900, hdr, 40, 1, 900);
    driver.make_available(&rig.guest.mem, 900);
    rig.guest.notify[q].write(1).unwrap();
    rig.pump();
    let used = rig.guest.used(q);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, 900);

    // An indirect table with more descriptors than a queue holds.
    let n = QUEUE_SIZE as u64 + 8;
    let table = rig.guest.alloc((16 * n) as u32);
    for i in 0..n {
        let at = GuestAddress(table + 16 * i);
        let flags: u16 = if i + 1 < n { 1 } else { 0 };
        rig.guest.mem.write_obj(hdr, at).unwrap();
        rig.guest
            .mem
            .write_obj(1u32, GuestAddress(at.0 + 8))
            .unwrap();
        rig.guest
            .mem
            .write_obj(flags, GuestAddress(at.0 + 12))
            .unwrap();
        rig.guest
            .mem
            .write_obj((i + 1) as u16, GuestAddress(at.0 + 14))
            .unwrap();
    }
    let driver = &mut rig.guest.queues[q];
    driver.write_desc(&rig.guest.mem, 901, table, (16 * n) as u32, 4, 0);
    driver.make_available(&rig.guest.mem, 901);
    rig.guest.notify[q].write(1).unwrap();
    rig.pump();
    assert_eq!(rig.guest.used(q), vec![(901, 0)]);

    // Still serving.
    let e = rig.lookup(ROOT, b"ok").unwrap();
    assert_eq!(
        e.attr.size,
        std::fs::metadata(rig.host("ok")).unwrap().len()
    );
    assert_eq!(
        rig.getattr(ROOT).unwrap().attr.mode & libc::S_IFMT,
        libc::S_IFDIR
    );
}

#[test]
fn head_split_over_byte_descriptors() {
    // The device copies the head out of many tiny descriptors and the
    // server reads that copy, then the rest from guest memory (the copy
    // itself is tested in `relay`).
    let mut rig = Rig::new(true);
    std::fs::write(rig.host("f"), b"x").unwrap();
    rig.init().unwrap();
    let h = rig.header(opcode::LOOKUP, ROOT, 2);
    let mut bytes = h.as_slice().to_vec();
    bytes.extend(cname(b"f"));
    assert!(bytes.len() < HEAD_BYTES);
    let mut bufs = Vec::new();
    for b in &bytes {
        bufs.push((rig.guest.put(&[*b]), 1, false));
    }
    let out = rig.guest.alloc(REPLY_ROOM);
    bufs.push((out, REPLY_ROOM, true));
    let used = rig.run(REQUEST_QUEUE, &bufs);
    assert!(used > 16);
    let mut o = fuse_backend_rs::abi::fuse_abi::OutHeader::default();
    o.as_mut_slice().copy_from_slice(&rig.guest.bytes(out, 16));
    assert_eq!((o.error, o.unique), (0, h.unique));
}

#[test]
fn state_round_trip_serves_the_new_directory() {
    let rig = Rig::new(true);
    let state = rig.dev.lock().unwrap().state().unwrap();
    assert_eq!(
        state,
        FsState {
            tag: "share".to_string(),
            read_only: true,
            acked_features: VIRTIO_F_VERSION_1,
            mounted: false,
        }
    );
    let json = serde_json::to_string(&state).unwrap();
    let back: FsState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    assert!(serde_json::from_str::<FsState>(&json.replace("\"tag\"", "\"tag2\"")).is_err());

    let newdir = TempDir::new_with_prefix("/tmp/husk-fs-new-").unwrap();
    std::fs::write(newdir.as_path().join("only-here"), b"new").unwrap();
    let dev = Fs::from_state(&back, Some(newdir.as_path().to_path_buf())).unwrap();
    assert_eq!(dev.state().unwrap(), state);
    let mut rig2 = Rig::with_device(dev, Some(newdir));
    rig2.init().unwrap();
    let e = rig2.lookup(ROOT, b"only-here").unwrap();
    assert_eq!(e.attr.size, 3);
    assert_eq!(
        rig2.create(ROOT, b"x", 0o644, libc::O_RDWR).err(),
        Some(libc::EROFS)
    );

    // A template restored from it stays one; a bad directory is refused.
    let t = Fs::from_state(&state, None).unwrap();
    assert!(t.shared_dir().is_none());
    assert!(matches!(
        Fs::from_state(&state, Some("/nonexistent/husk".into())),
        Err(FsError::SharedDir { .. })
    ));
}

#[test]
fn a_pristine_mount_restores_mounted_on_the_new_directory() {
    let mut rig = Rig::new(false);
    rig.init().unwrap();
    rig.getattr(ROOT).unwrap();
    let state = rig.dev.lock().unwrap().state().unwrap();
    assert!(state.mounted);
    let json = serde_json::to_string(&state).unwrap();
    let back: FsState = serde_json::from_str(&json).unwrap();

    let newdir = TempDir::new_with_prefix("/tmp/husk-fs-new-").unwrap();
    std::fs::write(newdir.as_path().join("only-here"), b"new").unwrap();
    let dev = Fs::from_state(&back, Some(newdir.as_path().to_path_buf())).unwrap();
    assert!(dev.mounted());
    // Saved again at once, it is still a pristine mount.
    assert_eq!(dev.state().unwrap(), back);
    // The guest goes on without a new INIT: the root is the new directory.
    let mut rig2 = Rig::with_device(dev, Some(newdir));
    let e = rig2.lookup(ROOT, b"only-here").unwrap();
    assert_eq!(e.attr.size, 3);
    let fh = rig2.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(rig2.read(e.nodeid, fh, 0, 16).unwrap(), b"new");
    assert!(rig2.dev.lock().unwrap().snapshot_check().is_err());
}

#[test]
fn snapshots_are_refused_once_the_mount_is_used() {
    let mut rig = Rig::new(false);
    rig.dev.lock().unwrap().snapshot_check().unwrap();
    rig.init().unwrap();
    // Mounted, only the root's attributes asked: it can be saved.
    rig.getattr(ROOT).unwrap();
    rig.dev.lock().unwrap().snapshot_check().unwrap();
    assert!(rig.dev.lock().unwrap().state().unwrap().mounted);
    // A lookup (even one that finds nothing: the guest caches that) can't.
    assert_eq!(rig.lookup(ROOT, b"nothing-here").err(), Some(libc::ENOENT));
    let e = rig.dev.lock().unwrap().snapshot_check().unwrap_err();
    assert!(matches!(e, FsError::Mounted { .. }));
    assert_eq!(
        e.to_string(),
        "virtio-fs share: the guest has used the mounted share; take templates before anything but the mount"
    );
    assert!(rig.dev.lock().unwrap().state().is_err());

    // A snapshot with the share mounted needs a directory at restore.
    let mounted = FsState {
        tag: "share".into(),
        read_only: false,
        acked_features: VIRTIO_F_VERSION_1,
        mounted: true,
    };
    assert!(matches!(
        Fs::from_state(&mounted, None),
        Err(FsError::MountedNoDir { .. })
    ));

    // DESTROY (umount) ends the session: snapshots are possible again.
    let r = rig.call(opcode::DESTROY, 0, &[], REPLY_ROOM);
    assert_eq!((r.used, r.errno()), (16, 0));
    rig.dev.lock().unwrap().snapshot_check().unwrap();
    assert!(!rig.dev.lock().unwrap().state().unwrap().mounted);
    rig.init().unwrap();
    rig.lookup(ROOT, b"nothing-here").unwrap_err();
    assert!(rig.dev.lock().unwrap().snapshot_check().is_err());

    // So does a device reset; the device serves again once reactivated.
    rig.dev.lock().unwrap().reset();
    rig.pump();
    rig.dev.lock().unwrap().snapshot_check().unwrap();
    assert!(rig.dev.lock().unwrap().queue_states().is_none());
    let (guest, ctx) = super::test_utils::Guest::new();
    rig.guest = guest;
    rig.dev.lock().unwrap().activate(ctx).unwrap();
    rig.pump();
    std::fs::write(rig.host("after-reset"), b"ok").unwrap();
    rig.init().unwrap();
    assert_eq!(rig.lookup(ROOT, b"after-reset").unwrap().attr.size, 2);
}

#[test]
fn activation_needs_both_queues() {
    let dev = Fs::new(config("q", None, false)).unwrap();
    let mut dev = dev;
    let (_guest, mut ctx) = super::test_utils::Guest::new();
    ctx.queues.pop();
    assert!(dev.activate(ctx).is_err());
    let (_guest, mut ctx) = super::test_utils::Guest::new();
    ctx.queues.swap(0, 1);
    assert!(dev.activate(ctx).is_err());
}

#[test]
fn in_header_matches_the_abi() {
    assert_eq!(
        std::mem::size_of::<InHeader>(),
        super::request::IN_HEADER_SIZE
    );
}

#[test]
fn init_turns_on_large_requests_the_guest_offered() {
    use super::init::{BIG_WRITES, MAX_PAGES, MAX_REQ_PAGES, MAX_WRITE};
    // Offered: 1 MiB writes and 256-page requests, within the bounds.
    let mut rig = Rig::new(false);
    let init = rig.init_with_flags(BIG_WRITES | MAX_PAGES | 1).unwrap();
    assert_eq!(
        init.flags & (BIG_WRITES | MAX_PAGES),
        BIG_WRITES | MAX_PAGES
    );
    assert_eq!((init.max_write, init.max_pages), (MAX_WRITE, MAX_REQ_PAGES));
    assert!(init.max_write + 80 <= MAX_REQUEST_BYTES);
    assert!(init.max_write + 16 <= super::MAX_REPLY_BYTES);
    let (entry, fh) = rig.create(ROOT, b"big", 0o644, libc::O_RDWR).unwrap();
    let node = entry.nodeid;
    let data: Vec<u8> = (0..MAX_WRITE).map(|i| (i % 251) as u8).collect();
    assert_eq!(rig.write(node, fh, 0, &data).unwrap(), MAX_WRITE);
    assert_eq!(rig.read(node, fh, 0, MAX_WRITE).unwrap(), data);

    // Not offered: the server's reply stands.
    let mut rig = Rig::new(false);
    let init = rig.init_with_flags(0).unwrap();
    assert_eq!(init.flags & (BIG_WRITES | MAX_PAGES), 0);
    assert!(init.max_write <= 4096, "{}", init.max_write);
}

#[test]
fn a_broken_ring_stops_the_device_until_a_reset() {
    use std::sync::atomic::Ordering;
    let mut rig = Rig::new(false);
    rig.init().unwrap();
    // The driver publishes an available index more than a ring ahead.
    let mem = rig.guest.mem.clone();
    rig.guest.queues[REQUEST_QUEUE].set_avail_idx(&mem, QUEUE_SIZE + 5);
    rig.guest.notify[REQUEST_QUEUE].write(1).unwrap();
    rig.pump();
    assert_eq!(rig.guest.irq.needs_reset.load(Ordering::SeqCst), 1);
    // Further kicks are ignored (no second reset request, no spin).
    rig.guest.notify[REQUEST_QUEUE].write(1).unwrap();
    rig.pump();
    assert_eq!(rig.guest.irq.needs_reset.load(Ordering::SeqCst), 1);
    // After a reset and a fresh activation the share is served again.
    rig.dev.lock().unwrap().reset();
    let (guest, ctx) = super::test_utils::Guest::new();
    rig.dev.lock().unwrap().activate(ctx).unwrap();
    rig.guest = guest;
    rig.pump();
    rig.init().unwrap();
    assert_eq!(
        rig.getattr(ROOT).unwrap().attr.mode & libc::S_IFMT,
        libc::S_IFDIR
    );
}

/// The `Umask:` line of `/proc/self/task/<tid>/status`.
fn umask_of(tid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .unwrap()
        .to_string()
}

#[test]
fn guest_init_and_destroy_never_change_the_process_umask() {
    // The main thread shares the process's fs_struct with every thread
    // that did not unshare it (the shim's other threads, other pods' VMs).
    let main = std::process::id();
    let before = umask_of(main);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                // Each worker stands for the event loop of its own VM.
                for _ in 0..10 {
                    let mut rig = Rig::new(false);
                    for _ in 0..20 {
                        rig.init().unwrap();
                        rig.destroy().unwrap();
                    }
                }
            })
        })
        .collect();
    let mut checks = 0u32;
    while !workers.iter().all(|w| w.is_finished()) {
        assert_eq!(umask_of(main), before, "after {checks} checks");
        checks += 1;
    }
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(umask_of(main), before);
}
