//! A template whose virtio-fs share has no directory yet: each VM restored
//! from it names its own directory, and the guest mounts the tag after the
//! restore. The template also has a virtio-blk disk the guest probed before
//! the snapshot: each restored VM names its own image for it and mounts it
//! through the restored queue. Before that, mounting the tag fails cleanly; once a share is
//! used (beyond the mount) the VM can no longer be snapshotted (the server's
//! open files are not state), and says so.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use husk_shim::agent_client::{AgentClient, ExecCommand, ExecStatus, MountSource, MountSpec};
use husk_tests::{debug_guest_image, kvm_available, temp_path};
use husk_vmm::{
    ExitReason, RestoreConfig, ShareConfig, VmConfig, VmmRequest, VmmResponse, VsockConfig,
};

fn sh(c: &AgentClient, script: &str) -> String {
    let out = c
        .exec(&ExecCommand::new(["/bin/sh", "-c", script]))
        .unwrap();
    assert_eq!(
        out.status,
        ExecStatus::Exited(0),
        "guest `{script}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn restore(
    tpl: &std::path::Path,
    sock: &std::path::Path,
    shares: Vec<(String, std::path::PathBuf)>,
    disks: Vec<std::path::PathBuf>,
    name: &str,
) -> Result<husk_vmm::VmmHandle, husk_vmm::StartError> {
    husk_vmm::restore(RestoreConfig {
        name: name.into(),
        snapshot_dir: tpl.to_path_buf(),
        console: husk_vmm::ConsoleConfig {
            file: Some(sock.with_extension("console")),
            log: false,
        },
        vsock_uds: Some(sock.to_path_buf()),
        mem_mib: None,
        vcpus: None,
        disks,
        shares,
        nets: Vec::new(),
        seccomp: Default::default(),
    })
}

#[test]
fn template_share_gets_its_directory_at_restore() {
    if !kvm_available("template_share_gets_its_directory_at_restore") {
        return;
    }
    let (kernel, initrd) = debug_guest_image();
    let dir = temp_path("template-share");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tpl = dir.join("tpl");
    let uds = dir.join("base.sock");
    // One ext4 image per VM (the template's and two restored ones), each
    // holding a file that names it.
    let image = |name: &str| {
        let src = dir.join(format!("img-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("disk.txt"), format!("disk {name}\n")).unwrap();
        let img = dir.join(format!("{name}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&img)
            .status()
            .expect("mkfs.ext4 (e2fsprogs) is needed");
        assert!(st.success());
        img
    };
    let base = husk_vmm::start(VmConfig {
        name: "template-share-base".into(),
        kernel,
        initrd: Some(initrd),
        console: husk_vmm::ConsoleConfig {
            file: Some(dir.join("base-console.log")),
            log: false,
        },
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        }),
        shares: vec![ShareConfig {
            tag: "pod".into(),
            shared_dir: None,
            read_only: false,
        }],
        disks: vec![husk_vmm::DiskConfig {
            path: image("base"),
            read_only: true,
            id: "rootfs".into(),
        }],
        ..VmConfig::default()
    })
    .unwrap();
    let client = AgentClient::connect(&uds, Duration::from_secs(600)).unwrap();
    // No directory yet: the mount fails, naming the tag and the mount point.
    let e = client
        .mount(&MountSpec::new(
            MountSource::Share("pod".into()),
            "/mnt/pod",
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pod") && e.contains("/mnt/pod"), "{e}");
    drop(client);
    assert_eq!(
        base.request(VmmRequest::Pause).unwrap(),
        VmmResponse::Paused
    );
    base.request(VmmRequest::Snapshot { dir: tpl.clone() })
        .unwrap();
    base.stop().unwrap();
    base.wait(Some(Duration::from_secs(30))).unwrap();

    // A tag the template does not have is refused.
    let e = restore(
        &tpl,
        &dir.join("bad.sock"),
        vec![("nope".into(), dir.clone())],
        Vec::new(),
        "bad",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("nope"), "{e}");

    // Two VMs, each with its own directory behind the same tag.
    let mut vms = Vec::new();
    for name in ["a", "b"] {
        let share = dir.join(format!("share-{name}"));
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("who.txt"), format!("pod {name}\n")).unwrap();
        let sock = dir.join(format!("{name}.sock"));
        let img = image(name);
        let h = restore(
            &tpl,
            &sock,
            vec![("pod".into(), share.clone())],
            vec![img],
            name,
        )
        .unwrap();
        let c = AgentClient::connect(&sock, Duration::from_secs(120)).unwrap();
        c.mount(&MountSpec::new(
            MountSource::Share("pod".into()),
            "/mnt/pod",
        ))
        .unwrap();
        // The disk the template's guest probed, now this VM's own image,
        // read through the restored queue.
        let mut disk = MountSpec::new(MountSource::Disk("rootfs".into()), "/mnt/disk");
        disk.read_only = true;
        c.mount(&disk).unwrap();
        assert_eq!(sh(&c, "cat /mnt/disk/disk.txt"), format!("disk {name}\n"));
        let out = sh(
            &c,
            &format!("cat /mnt/pod/who.txt && echo from {name} > /mnt/pod/guest.txt"),
        );
        assert_eq!(out, format!("pod {name}\n"));
        assert_eq!(
            std::fs::read_to_string(share.join("guest.txt")).unwrap(),
            format!("from {name}\n")
        );
        vms.push((h, c));
    }

    // A mounted share cannot be snapshotted; the VM runs on.
    let (h, c) = &vms[0];
    assert_eq!(h.request(VmmRequest::Pause).unwrap(), VmmResponse::Paused);
    let e = h
        .request(VmmRequest::Snapshot {
            dir: dir.join("tpl2"),
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("pod") && e.contains("mounted"), "{e}");
    assert!(!dir.join("tpl2").join("snapshot.json").exists());
    assert_eq!(h.request(VmmRequest::Resume).unwrap(), VmmResponse::Resumed);
    assert_eq!(sh(c, "cat /mnt/pod/who.txt"), "pod a\n");

    for (h, c) in &vms {
        c.shutdown().unwrap();
        let o = h.wait(Some(Duration::from_secs(60))).unwrap();
        assert_eq!(o.reason, ExitReason::GuestShutdown);
    }
    drop(vms);
    std::fs::remove_dir_all(&dir).unwrap();
}
