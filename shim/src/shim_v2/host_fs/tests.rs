//! The pod tree and the removal walk on the real host file system, each
//! test in a mount namespace of its own thread (private: nothing reaches
//! the host's, and the mounts die with the thread). They need root; they
//! say SKIP without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use husk_shim_protos::mount::Mount;

use super::*;
use crate::shim_v2::spec::Volume;

fn temp_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "husk-hostfs-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `f` on a thread in a private mount namespace of its own. None when
/// this process may not (not root).
fn in_private_mount_ns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare of this thread's fs/mount namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return None;
        }
        // SAFETY: valid NUL-terminated strings; no data.
        let r = unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return None;
        }
        Some(f())
    })
    .join()
    .unwrap()
}

/// The mount points at or below `dir` in the calling thread's namespace.
fn mounts_below(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let d = dir.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| *mp == d || mp.starts_with(&format!("{d}/")))
        .map(str::to_owned)
        .collect()
}

/// The mount options (field 6) of the mount at `path`.
fn mount_opts(path: &Path) -> String {
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let p = path.display().to_string();
    text.lines()
        .rfind(|l| l.split(' ').nth(4) == Some(p.as_str()))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_else(|| panic!("{p} is not a mount point"))
        .to_owned()
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

macro_rules! root_test {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            let dir = temp_dir(stringify!($name));
            let d = dir.clone();
            let done = in_private_mount_ns(move || ($body)(d));
            if done.is_none() {
                eprintln!(
                    "SKIP {}: no mount namespace of its own (not root)",
                    stringify!($name)
                );
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    };
}

fn vol(index: usize, source: PathBuf, recursive: bool, read_only: bool) -> Volume {
    Volume {
        what: format!("mounts[{index}] (/v{index})"),
        index,
        source,
        recursive,
        read_only,
    }
}

/// Sources: a rootfs dir, a read-only dir with a submount, a file, a
/// read-write dir.
fn sources(d: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let src = d.join("src");
    let rootfs = src.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/sh"), "#!\n").unwrap();
    let ro = src.join("ro");
    std::fs::create_dir_all(ro.join("sub")).unwrap();
    std::fs::write(ro.join("greeting"), "hello\n").unwrap();
    // A submount in the read-only source (rbind,ro takes it along, and it
    // must be read-only too).
    let sub = std::ffi::CString::new(ro.join("sub").to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            sub.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    std::fs::write(ro.join("sub/inner"), "inner\n").unwrap();
    let file = src.join("file");
    std::fs::write(&file, "a file\n").unwrap();
    let rw = src.join("rw");
    std::fs::create_dir_all(&rw).unwrap();
    (rootfs, ro, file, rw)
}

root_test!(
    the_guest_sees_a_read_only_tree_with_its_mounts,
    |d: PathBuf| {
        let (rootfs, ro, file, rw) = sources(&d);
        let pod_dir = d.join("pods/0123");
        let tree = PodTree::create("p1", &pod_dir).unwrap();
        let vm = tree.dir().to_owned();
        let share = tree.share_dir();
        assert_eq!(
            std::fs::metadata(&pod_dir).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(&vm).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        // The share: read-only, nosuid, nodev, noexec.
        let o = mount_opts(&share);
        for f in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(o.split(',').any(|x| x == f), "{f} missing in {o}");
        }
        tree.attach_rootfs("c1", &[], &rootfs).unwrap();
        tree.attach_volumes(
            "c1",
            &[
                vol(3, ro.clone(), true, true),
                vol(4, file.clone(), false, true),
                vol(5, rw.clone(), false, false),
            ],
        )
        .unwrap();
        let c = share.join("c1");
        // What the guest sees, through the share.
        assert_eq!(
            std::fs::read_to_string(c.join("rootfs/bin/sh")).unwrap(),
            "#!\n"
        );
        assert_eq!(
            std::fs::read_to_string(c.join("mounts/3/greeting")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            std::fs::read_to_string(c.join("mounts/3/sub/inner")).unwrap(),
            "inner\n"
        );
        assert_eq!(
            std::fs::read_to_string(c.join("mounts/4")).unwrap(),
            "a file\n"
        );
        // It writes in the rootfs and the read-write volume...
        std::fs::write(c.join("rootfs/new"), "x").unwrap();
        assert!(rootfs.join("new").is_file());
        std::fs::write(c.join("mounts/5/out"), "y").unwrap();
        assert_eq!(std::fs::read_to_string(rw.join("out")).unwrap(), "y");
        // ...and nowhere else: not the read-only volume (its submount too),
        // not the tree the shim walks.
        assert_eq!(
            errno(std::fs::write(c.join("mounts/3/new"), "x")),
            Some(libc::EROFS)
        );
        assert_eq!(
            errno(std::fs::write(c.join("mounts/3/sub/new"), "x")),
            Some(libc::EROFS)
        );
        assert_eq!(
            errno(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(c.join("mounts/4"))
            ),
            Some(libc::EROFS)
        );
        assert_eq!(
            errno(std::fs::write(share.join("fill"), "x")),
            Some(libc::EROFS)
        );
        assert_eq!(
            errno(std::fs::rename(c.join("mounts"), c.join("old"))),
            Some(libc::EROFS)
        );
        assert_eq!(
            errno(std::os::unix::fs::symlink("/etc", c.join("evil"))),
            Some(libc::EROFS)
        );
        assert_eq!(
            errno(std::fs::create_dir(share.join("c2"))),
            Some(libc::EROFS)
        );
        assert_eq!(
            errno(std::fs::remove_dir(c.join("mounts"))),
            Some(libc::EROFS)
        );
        // Every bind is nosuid,nodev; read-only ones recursively read-only.
        for (p, ro) in [
            ("rootfs", false),
            ("mounts/3", true),
            ("mounts/4", true),
            ("mounts/5", false),
        ] {
            let o = mount_opts(&c.join(p));
            for f in ["nosuid", "nodev"] {
                assert!(o.split(',').any(|x| x == f), "{p}: {f} missing in {o}");
            }
            assert_eq!(o.split(',').any(|x| x == "ro"), ro, "{p}: {o}");
        }
        let o = mount_opts(&c.join("mounts/3/sub"));
        assert!(o.split(',').any(|x| x == "ro"), "submount: {o}");
        // A second attach of the same id is refused and disturbs nothing.
        assert!(matches!(
            tree.attach_rootfs("c1", &[], &rootfs),
            Err(HostFsError::Attached { .. })
        ));
        assert!(c.join("rootfs/bin/sh").is_file());

        tree.detach("c1").unwrap();
        assert!(
            mounts_below(&vm.join(MOUNTS)).len() == 1,
            "{:?}",
            mounts_below(&vm)
        );
        assert!(!vm.join(MOUNTS).join("c1").exists());
        assert!(!share.join("c1").exists(), "the unmount reached the share");
        // The sources are whole.
        assert!(ro.join("greeting").is_file() && file.is_file() && rw.join("out").is_file());
        assert!(rootfs.join("bin/sh").is_file());
        tree.release();
        assert!(
            mounts_below(&pod_dir).is_empty(),
            "{:?}",
            mounts_below(&pod_dir)
        );
        assert!(!pod_dir.exists(), "the pod directory goes with its last VM");
    }
);

root_test!(
    a_missing_source_is_the_callers_error_and_undoes_the_rest,
    |d: PathBuf| {
        let (rootfs, ro, _file, _rw) = sources(&d);
        let tree = PodTree::create("p1", &d.join("pods/1")).unwrap();
        tree.attach_rootfs("c1", &[], &rootfs).unwrap();
        let e = tree
            .attach_volumes(
                "c1",
                &[
                    vol(0, ro.clone(), true, true),
                    vol(1, d.join("gone"), true, false),
                ],
            )
            .unwrap_err();
        assert!(matches!(e, HostFsError::Source { .. }), "{e}");
        let m = e.to_string();
        assert!(m.contains("mounts[1] (/v1)") && m.contains("gone"), "{m}");
        let c = tree.dir().join(MOUNTS).join("c1");
        assert!(!c.join("mounts").exists(), "volumes undone");
        assert_eq!(
            mounts_below(&c).len(),
            1,
            "the rootfs stays: {:?}",
            mounts_below(&c)
        );
        drop(tree);
        assert!(!d.join("pods/1").exists());
    }
);

root_test!(an_overlay_rootfs_like_containerds, |d: PathBuf| {
    let (lower, ..) = sources(&d);
    let (upper, work) = (d.join("upper"), d.join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let m = Mount {
        type_: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={}", lower.display()),
        ],
        ..Default::default()
    };
    let tree = PodTree::create("p1", &d.join("pods/2")).unwrap();
    tree.attach_rootfs("c1", &[m], Path::new("/nonexistent"))
        .unwrap();
    let r = tree.share_dir().join("c1/rootfs");
    assert!(r.join("bin/sh").is_file());
    std::fs::write(r.join("written"), "z").unwrap();
    assert!(upper.join("written").is_file());
    let o = mount_opts(&r);
    assert!(o.contains("nosuid") && o.contains("nodev"), "{o}");
    // A bad mount leaves nothing of the container.
    let bad = Mount {
        type_: "overlay".into(),
        source: "overlay".into(),
        options: vec!["lowerdir=/nonexistent-husk".into()],
        ..Default::default()
    };
    assert!(tree.attach_rootfs("c2", &[bad], Path::new("/x")).is_err());
    assert!(!tree.dir().join(MOUNTS).join("c2").exists());
    drop(tree);
    assert!(!d.join("pods/2").exists());
});

// What a hostile guest (or anyone) might plant in the tree the shim walks:
// nothing outside the tree is touched, and removal never follows a link.
root_test!(planted_links_are_never_followed, |d: PathBuf| {
    let (rootfs, ro, ..) = sources(&d);
    let canary = d.join("canary");
    std::fs::create_dir_all(canary.join("sub")).unwrap();
    std::fs::write(canary.join("a"), "keep").unwrap();
    let tree = PodTree::create("p1", &d.join("pods/3")).unwrap();
    let m = tree.dir().join(MOUNTS);
    // Before Create: `<cid>` is a link to the canary.
    std::os::unix::fs::symlink(&canary, m.join("c1")).unwrap();
    assert!(tree.attach_rootfs("c1", &[], &rootfs).is_err());
    std::fs::remove_file(m.join("c1")).unwrap();
    // Before Create: `<cid>/rootfs` is a link.
    std::fs::create_dir(m.join("c2")).unwrap();
    std::os::unix::fs::symlink(&canary, m.join("c2/rootfs")).unwrap();
    assert!(tree.attach_rootfs("c2", &[], &rootfs).is_err());
    assert!(mounts_below(&canary).is_empty());
    // Before Delete: `<cid>/mounts` renamed and replaced by a link.
    tree.attach_rootfs("c3", &[], &rootfs).unwrap();
    tree.attach_volumes("c3", &[vol(0, ro.clone(), true, true)])
        .unwrap();
    std::fs::rename(m.join("c3/mounts"), m.join("c3/old")).unwrap();
    std::os::unix::fs::symlink(&canary, m.join("c3/mounts")).unwrap();
    assert!(tree.detach("c3").is_err());
    tree.release();
    // The pod's directory itself a link: refused, nothing made there.
    let pod_link = d.join("pods/linked");
    std::os::unix::fs::symlink(&canary, &pod_link).unwrap();
    assert!(PodTree::create("p2", &pod_link).is_err());
    assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 2);
    // The canary is whole; nothing was mounted on it.
    assert_eq!(std::fs::read_to_string(canary.join("a")).unwrap(), "keep");
    assert!(canary.join("sub").is_dir());
    assert!(mounts_below(&canary).is_empty());
    // The sources too.
    assert!(ro.join("greeting").is_file() && rootfs.join("bin/sh").is_file());
});

root_test!(removal_stops_at_mount_points_and_links, |d: PathBuf| {
    let outside = d.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("a"), "keep").unwrap();
    let t = d.join("tree");
    std::fs::create_dir_all(t.join("x/y")).unwrap();
    std::fs::write(t.join("x/y/f"), "f").unwrap();
    std::os::unix::fs::symlink(&outside, t.join("x/link")).unwrap();
    std::os::unix::fs::symlink(outside.join("a"), t.join("x/flink")).unwrap();
    remove_host_tree(&t).unwrap();
    assert!(!t.exists());
    assert_eq!(std::fs::read_to_string(outside.join("a")).unwrap(), "keep");
    // A mount below: kept, and what is in it too.
    std::fs::create_dir_all(t.join("m")).unwrap();
    std::fs::write(t.join("plain"), "p").unwrap();
    let c = std::ffi::CString::new(t.join("m").to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    std::fs::write(t.join("m/data"), "d").unwrap();
    let e = remove_host_tree(&t).unwrap_err();
    assert!(matches!(e, RemoveError::MountPoint { .. }), "{e}");
    assert!(t.join("m/data").is_file());
    // A link given as the tree itself is removed, not followed.
    let l = d.join("l");
    std::os::unix::fs::symlink(&outside, &l).unwrap();
    remove_host_tree(&l).unwrap();
    assert!(outside.join("a").is_file() && !l.exists());
    // Missing: nothing to do.
    remove_host_tree(&d.join("none")).unwrap();
});

root_test!(vm_incarnations_of_a_pod_are_apart, |d: PathBuf| {
    let (rootfs, ..) = sources(&d);
    let pod_dir = d.join("pods/4");
    let old = PodTree::create("p1", &pod_dir).unwrap();
    old.attach_rootfs("c1", &[], &rootfs).unwrap();
    let new = PodTree::create("p1", &pod_dir).unwrap();
    new.attach_rootfs("c1", &[], &rootfs).unwrap();
    assert_ne!(old.dir(), new.dir());
    // The old VM's teardown leaves the new one's files and mounts alone.
    old.release();
    assert!(new.share_dir().join("c1/rootfs/bin/sh").is_file());
    assert!(pod_dir.is_dir());
    let fd = sys::open_host_dir(new.dir()).unwrap();
    assert!(sys::mount_id(fd.as_fd()).is_ok());
    new.release();
    assert!(!pod_dir.exists());
});
