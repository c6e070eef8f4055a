//! What a hostile guest asks of the share: set-id modes (stripped) and
//! names meant to reach outside it (absolute, `..`, with `/`, empty, with a
//! NUL, too long), sent raw to every request that names a new entry.
//!
//! The share lives at `<scratch>/jail/share`; `<scratch>/sentinel` is a
//! sibling directory. After every request the sentinel must be empty, the
//! jail must hold only the share and the scratch directory only the jail
//! and the sentinel.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fuse_backend_rs::abi::fuse_abi::{EntryOut, SetattrIn};
use vmm_sys_util::tempdir::TempDir;

use super::request::opcode;
use super::test_utils::{cname, Rig, REPLY_ROOM, ROOT};
use super::{Fs, FsConfig};

const FATTR_MODE: u32 = 0x1;
const SETID: u32 = libc::S_ISUID | libc::S_ISGID;

struct Jail {
    scratch: TempDir,
    share: PathBuf,
    sentinel: PathBuf,
}

impl Jail {
    fn new() -> (Rig, Jail) {
        let scratch = TempDir::new_with_prefix("/tmp/husk-fs-jail-").unwrap();
        let share = scratch.as_path().join("jail/share");
        let sentinel = scratch.as_path().join("sentinel");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::create_dir(&sentinel).unwrap();
        let dev = Fs::new(FsConfig {
            tag: "share".into(),
            shared_dir: Some(share.clone()),
            read_only: false,
        })
        .unwrap();
        let mut rig = Rig::with_device(dev, None);
        rig.init().unwrap();
        let jail = Jail {
            scratch,
            share,
            sentinel,
        };
        (rig, jail)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Nothing exists outside the share.
    fn assert_contained(&self, what: &str) {
        assert_eq!(
            Self::names(&self.sentinel),
            Vec::<String>::new(),
            "{what}: the sentinel"
        );
        assert_eq!(
            Self::names(self.scratch.as_path()),
            ["jail", "sentinel"],
            "{what}: the scratch directory"
        );
        assert_eq!(
            Self::names(&self.share.with_file_name("")),
            ["share"],
            "{what}: the share's parent"
        );
    }
}

/// Raw FUSE arguments: fixed part then names, each NUL-terminated.
fn raw(fixed: &[u8], names: &[&[u8]]) -> Vec<u8> {
    let mut v = fixed.to_vec();
    for n in names {
        v.extend(cname(n));
    }
    v
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A request: what it is, opcode, node id, arguments.
type Request = (&'static str, u32, u64, Vec<u8>);

/// The requests that name a new entry, each with `name` where the guest
/// puts the new name (RENAME/RENAME2 also with `name` as the old name);
/// `src` is a file in the share (node id and name).
fn name_requests(src: (u64, &[u8]), name: &[u8]) -> Vec<Request> {
    let newdir = ROOT.to_le_bytes();
    let create = raw(
        &u32s(&[libc::O_RDWR as u32, libc::S_IFREG | 0o644, 0, 0]),
        &[name],
    );
    let fifo = u32s(&[libc::S_IFIFO | 0o644, 0, 0, 0]);
    let mut v: Vec<Request> = vec![
        ("CREATE", opcode::CREATE, ROOT, create),
        (
            "MKDIR",
            opcode::MKDIR,
            ROOT,
            raw(&u32s(&[0o755, 0]), &[name]),
        ),
        ("MKNOD", opcode::MKNOD, ROOT, raw(&fifo, &[name])),
        (
            "SYMLINK",
            opcode::SYMLINK,
            ROOT,
            raw(&[], &[name, b"target"]),
        ),
        (
            "LINK",
            opcode::LINK,
            ROOT,
            raw(&src.0.to_le_bytes(), &[name]),
        ),
        (
            "RENAME to",
            opcode::RENAME,
            ROOT,
            raw(&newdir, &[src.1, name]),
        ),
        (
            "RENAME from",
            opcode::RENAME,
            ROOT,
            raw(&newdir, &[name, b"x"]),
        ),
    ];
    for (what, flags) in [
        ("RENAME2 to", 0u32),
        ("RENAME2 noreplace", libc::RENAME_NOREPLACE),
        ("RENAME2 exchange", libc::RENAME_EXCHANGE),
    ] {
        let fixed = [&newdir[..], &u32s(&[flags, 0])].concat();
        v.push((what, opcode::RENAME2, ROOT, raw(&fixed, &[src.1, name])));
    }
    v
}

/// Sends each request; returns (what, errno).
fn send(rig: &mut Rig, reqs: Vec<Request>) -> Vec<(&'static str, i32)> {
    reqs.into_iter()
        .map(|(what, op, node, arg)| (what, rig.call(op, node, &arg, REPLY_ROOM).errno()))
        .collect()
}

/// Makes sure `src` exists in the share; returns its node id.
fn source(rig: &mut Rig, jail: &Jail) -> u64 {
    let p = jail.share.join("src");
    if !p.exists() {
        std::fs::write(&p, b"source").unwrap();
    }
    rig.lookup(ROOT, b"src").unwrap().nodeid
}

#[test]
fn hostile_names_stay_inside_the_share() {
    let (mut rig, jail) = Jail::new();
    let sentinel = jail.sentinel.to_str().unwrap().as_bytes().to_vec();
    let planted = [&sentinel[..], b"/planted"].concat();
    let long_255 = vec![b'n'; 255];
    let long_256 = vec![b'n'; 256];
    let long_path = b"../".repeat(1365);
    // Names the server must refuse: (class, name).
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("absolute", planted.clone()),
        ("absolute dir", sentinel.clone()),
        ("root", b"/".to_vec()),
        ("dot-dot", b"..".to_vec()),
        ("dot", b".".to_vec()),
        ("up one", b"../planted".to_vec()),
        ("up to the sentinel", b"../../sentinel/planted".to_vec()),
        ("slash", b"a/b".to_vec()),
        ("trailing slash", b"planted/".to_vec()),
        ("empty", Vec::new()),
        ("too long", long_256),
        ("long path", long_path),
    ];
    for (class, name) in &refused {
        let src = source(&mut rig, &jail);
        for (what, op, node, arg) in name_requests((src, b"src"), name) {
            let errno = rig.call(op, node, &arg, REPLY_ROOM).errno();
            assert_ne!(errno, 0, "{what} with a name that is {class} was served");
            jail.assert_contained(&format!("{what} {class}"));
        }
    }

    // A NUL ends the name: "in\0../../sentinel/x" is the name "in", inside.
    let src = source(&mut rig, &jail);
    let nul = b"in\0../../sentinel/planted";
    for (what, _) in send(&mut rig, name_requests((src, b"src"), nul)) {
        jail.assert_contained(&format!("{what} with a NUL"));
    }
    assert!(std::fs::symlink_metadata(jail.share.join("in")).is_ok());

    // Each request works with a plain name and with the longest legal one
    // (the requests are well formed: the refusals above are the names').
    for (k, stem) in [b"c".to_vec(), long_255[..250].to_vec()].iter().enumerate() {
        let count = name_requests((0, b"src"), b"x").len();
        for i in 0..count {
            let name = [&stem[..], format!("{i:02}").as_bytes()].concat();
            let (what, op, node, arg) = {
                let src = source(&mut rig, &jail);
                name_requests((src, b"src"), &name).swap_remove(i)
            };
            if what.contains("from") || what.contains("exchange") {
                std::fs::write(jail.share.join(std::str::from_utf8(&name).unwrap()), b"old")
                    .unwrap();
            }
            let errno = rig.call(op, node, &arg, REPLY_ROOM).errno();
            assert_eq!(errno, 0, "{what} with plain name {k} {i}");
            jail.assert_contained(what);
        }
    }

    // Links out of the share do not carry creations out of it.
    std::fs::create_dir(jail.share.join("d")).unwrap();
    let up = rig.symlink(ROOT, b"up", b"../../sentinel").unwrap();
    let abs = rig.symlink(ROOT, b"abs", &sentinel).unwrap();
    for link in [up.nodeid, abs.nodeid] {
        assert!(rig.mkdir(link, b"planted", 0o755).is_err());
        assert!(rig.create(link, b"planted", 0o644, libc::O_RDWR).is_err());
        let newdir = link.to_le_bytes();
        let e = rig
            .call(
                opcode::RENAME,
                ROOT,
                &raw(&newdir, &[b"src", b"planted"]),
                REPLY_ROOM,
            )
            .errno();
        assert_ne!(e, 0);
    }
    jail.assert_contained("through links");
}

fn host_mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode()
}

#[test]
fn setid_bits_never_reach_the_host() {
    let (mut rig, jail) = Jail::new();

    // chmod 04755 and 06777 through SETATTR.
    std::fs::write(jail.share.join("f"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(jail.share.join("f"), PermissionsExt::from_mode(0o644)).unwrap();
    let f = rig.lookup(ROOT, b"f").unwrap();
    for (asked, left) in [(0o4755, 0o755), (0o6777, 0o777), (0o2750, 0o750)] {
        let attr = rig
            .setattr(
                f.nodeid,
                SetattrIn {
                    valid: FATTR_MODE,
                    mode: libc::S_IFREG | asked,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            host_mode(&jail.share.join("f")) & 0o7777,
            left,
            "chmod {asked:o}"
        );
        assert_eq!(attr.attr.mode & 0o7777, left, "the guest is told {left:o}");
    }

    // CREATE, MKDIR and MKNOD with 06777: the permission bits pass (less
    // the umask), the set-id bits do not; the sticky bit passes.
    let (e, _fh): (EntryOut, u64) = rig.create(ROOT, b"created", 0o6777, libc::O_RDWR).unwrap();
    assert_eq!(e.attr.mode & SETID, 0);
    let d = rig.mkdir(ROOT, b"dir", 0o7777).unwrap();
    assert_eq!(d.attr.mode & SETID, 0);
    let mknod = raw(&u32s(&[libc::S_IFREG | 0o6755, 0, 0, 0]), &[b"node"]);
    assert_eq!(rig.call(opcode::MKNOD, ROOT, &mknod, REPLY_ROOM).errno(), 0);
    for (name, kind) in [
        ("created", libc::S_IFREG),
        ("dir", libc::S_IFDIR),
        ("node", libc::S_IFREG),
    ] {
        let m = host_mode(&jail.share.join(name));
        assert_eq!(m & libc::S_IFMT, kind, "{name}");
        assert_eq!(m & SETID, 0, "{name} is {m:o}");
        assert_eq!(m & 0o700, 0o700, "{name}'s owner bits pass");
    }
    assert_eq!(
        host_mode(&jail.share.join("dir")) & libc::S_ISVTX,
        libc::S_ISVTX
    );
    // Without FATTR_MODE a SETATTR's mode field means nothing.
    let size_only = SetattrIn {
        valid: 0x8,
        size: 3,
        mode: libc::S_IFREG | 0o4777,
        ..Default::default()
    };
    rig.setattr(f.nodeid, size_only).unwrap();
    assert_eq!(host_mode(&jail.share.join("f")) & 0o7777, 0o750);
    assert_eq!(std::fs::metadata(jail.share.join("f")).unwrap().len(), 3);
    jail.assert_contained("set-id requests");
}
