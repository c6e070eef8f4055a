//! The Task service against a guest (and a containerd) that does not
//! behave: a flood of OOM events, transient failures, racing requests,
//! ids containerd would refuse.

use super::fake::Flood;
use super::*;

/// Waits until `cond` holds, at most [`BOUND`].
fn await_until(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < end, "{what} within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A fresh pod with task c1 running whose agent answers every WaitEvent
/// at once with `flood` for `window`: how many calls the pump made, and
/// the OOM events published.
fn flooded(flood: Flood, window: Duration) -> (usize, Vec<TaskOOM>) {
    let h = H::new("oomflood");
    h.create("c1");
    h.start("c1", "");
    let vm = h.vm();
    vm.lock().flood = Some(flood);
    // Wakes the long poll in progress (an id of no task, dropped).
    vm.oom("wake");
    std::thread::sleep(window);
    let calls = {
        let mut g = vm.lock();
        g.flood = None;
        g.event_calls
    };
    (calls, h.of::<TaskOOM>(topic::OOM))
}

/// A hostile agent answers every WaitEvent at once: with megabyte ids,
/// with ids of no task of this pod, with the long poll cut short. Nothing
/// is published, and the pump backs off instead of spinning.
#[test]
fn oom_flood_of_junk_publishes_nothing_and_backs_off() {
    let window = Duration::from_millis(1500);
    for flood in [
        Flood::Oom("x".repeat(1 << 20)),
        Flood::Oom("c1\nfake log line".into()),
        Flood::Oom("other-pods-container".into()),
        Flood::Nothing,
    ] {
        let what = format!("{flood:?}").chars().take(40).collect::<String>();
        let (calls, ooms) = flooded(flood, window);
        // The first long poll, then 0.2 + 0.4 + 0.8 s of back-off.
        assert!(
            calls <= 6,
            "{what}: {calls} calls in {window:?}: no back-off"
        );
        assert!(calls >= 3, "{what}: {calls} calls: the pump stopped");
        assert!(ooms.is_empty(), "{what}: published {ooms:?}");
    }
}

/// The agent floods its own container's OOM: published, at most once a
/// second.
#[test]
fn oom_flood_of_a_real_container_is_rate_limited() {
    let window = Duration::from_millis(1500);
    let (calls, ooms) = flooded(Flood::Oom("c1".into()), window);
    assert!(calls <= 12, "{calls} calls in {window:?}");
    assert!(
        (1..=2).contains(&ooms.len()),
        "{} OOM events in {window:?}",
        ooms.len()
    );
    assert!(ooms.iter().all(|o| o.container_id == "c1"));
}

/// A connect or WaitProcess that fails while the VM runs is tried again:
/// no exit 255 for a process that still runs; its real exit is reported.
#[test]
fn transient_wait_errors_are_no_exit() {
    let h = H::new("transient");
    h.create("c1");
    let vm = h.vm();
    {
        let mut g = vm.lock();
        g.fail_connects = 2;
        g.fail_waits = 2;
    }
    h.start("c1", "");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(h.status("c1", ""), Status::RUNNING);
    assert!(
        h.of::<TaskExit>(topic::EXIT).is_empty(),
        "no exit published"
    );
    await_until("the failures used up", || {
        let g = vm.lock();
        g.fail_connects == 0 && g.fail_waits == 0
    });
    vm.exit("c1", None, 3);
    assert_eq!(h.wait("c1", ""), 3);
    h.await_events(topic::EXIT, 1);
    let exits = h.of::<TaskExit>(topic::EXIT);
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0].exit_status, 3);
}

/// The guest halts (`poweroff -f` without ACPI: the VM does not end)
/// and its agent never answers again: after the grace the VM is stopped,
/// and every process ends with 255, once.
#[test]
fn an_agent_that_stays_unreachable_ends_the_vm() {
    let h = H::with_graces(
        "agentlost",
        super::super::tasks::KILL_CONFIRM,
        Duration::from_millis(600),
    );
    h.create("c1");
    h.start("c1", "");
    h.create("c2");
    h.start("c2", "");
    let vm = h.vm();
    vm.lock().fail_connects = usize::MAX;
    vm.cut_connections();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.status("c1", ""), Status::RUNNING, "not before the grace");
    assert_eq!(h.wait("c1", ""), VM_GONE_EXIT);
    assert_eq!(h.wait("c2", ""), VM_GONE_EXIT);
    assert!(vm.lock().powered_off, "the VM was stopped");
    h.await_events(topic::EXIT, 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.of::<TaskExit>(topic::EXIT).len(), 2, "one exit each");
}

/// A pod with task c0 and a Create of c1 held in the guest (on a thread
/// of its own, whose result `rx` gets once the fake releases it).
fn create_held(
    name: &str,
) -> (
    H,
    Arc<Fake>,
    mpsc::Receiver<Result<husk_shim_protos::shim::CreateTaskResponse, TaskError>>,
) {
    let h = H::new(name);
    h.create("c0");
    let vm = h.vm();
    vm.lock().hold_create = true;
    let io = h.fifos("c1", false);
    let req = h.create_req("c1", &io);
    let tasks = h.tasks.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(tasks.create(&req));
    });
    vm.await_creating();
    (h, vm, rx)
}

/// Shutdown that comes while a Create is held in the guest is refused
/// (the VM stays up under the Create), and the Create completes.
#[test]
fn shutdown_waits_for_a_create_in_flight() {
    let (h, vm, rx) = create_held("shuthold");
    // c0 goes: the pod is empty but for the Create in flight.
    let tasks = h.tasks.clone();
    let deleted = std::thread::spawn(move || {
        tasks.delete(&DeleteRequest {
            id: "c0".into(),
            ..Default::default()
        })
    });
    // c0's Delete is not held by the guest (remove_container): wait for it.
    deleted.join().unwrap().unwrap();
    assert!(!h.tasks.try_shutdown(), "a Create is in flight");
    assert!(!vm.lock().powered_off, "the VM stays under the Create");
    vm.release_create();
    rx.recv_timeout(BOUND).expect("Create returned").unwrap();
    assert_eq!(h.status("c1", ""), Status::CREATED);
    assert!(!h.tasks.try_shutdown(), "c1 is a task");
    h.delete("c1", "").unwrap();
    h.tasks.join_power_off();
    assert!(vm.lock().powered_off);
    assert!(h.tasks.try_shutdown());
    let e = h.tasks.create(&h.create_req("c2", &h.fifos("c2", false)));
    assert_eq!(code(e), Code::FAILED_PRECONDITION, "refused after Shutdown");
}

/// Two Creates of one id at once: the second fails ALREADY_EXISTS before
/// it touches any mount; the first completes.
#[test]
fn concurrent_creates_of_one_id() {
    let (h, vm, rx) = create_held("dupcreate");
    let io2 = h.fifos("c1-second", false);
    assert_eq!(
        code(h.tasks.create(&h.create_req("c1", &io2))),
        Code::ALREADY_EXISTS
    );
    {
        let g = vm.lock();
        assert_eq!(g.attached, ["c0", "c1"], "the loser attached nothing");
        assert!(g.detached.is_empty(), "the loser detached nothing");
    }
    vm.release_create();
    rx.recv_timeout(BOUND).expect("Create returned").unwrap();
    assert_eq!(h.status("c1", ""), Status::CREATED);
    assert_eq!(
        code(h.tasks.create(&h.create_req("c1", &io2))),
        Code::ALREADY_EXISTS
    );
}

/// An exec still running when its container is deleted gets its
/// TaskExit (before the TaskDelete), once.
#[test]
fn exec_exits_are_published_on_delete() {
    let h = H::new("execdel");
    h.create("c1");
    h.start("c1", "");
    h.exec("c1", "e1");
    h.start("c1", "e1");
    let vm = h.vm();
    vm.exit("c1", None, 0);
    assert_eq!(h.wait("c1", ""), 0);
    h.await_events(topic::EXIT, 1);
    h.delete("c1", "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let exits: Vec<(String, String)> = h
        .of::<TaskExit>(topic::EXIT)
        .into_iter()
        .map(|e| (e.container_id, e.id))
        .collect();
    assert_eq!(
        exits,
        [("c1".into(), "c1".into()), ("c1".into(), "e1".into())]
    );
    let topics = h.topics();
    assert_eq!(topics.last(), Some(&topic::DELETE), "{topics:?}");
}

/// A new VM for the pod starts only once the previous one has powered
/// off (its teardown must not race the new VM's host files).
#[test]
fn a_new_vm_waits_for_the_old_ones_power_off() {
    let h = H::new("restartvm");
    h.create("c0");
    h.vm().lock().power_off_delay = Duration::from_millis(300);
    h.delete("c0", "").unwrap();
    h.create("c1");
    assert_eq!(h.vm_count(), 2);
    assert!(
        h.vm().previous_off,
        "the new VM started before the old one was off"
    );
}

/// Ids containerd itself would refuse (`.`, `..`, a leading or doubled
/// separator) are refused at the door, for tasks and execs.
#[test]
fn ids_follow_containerds_rule() {
    let h = H::new("ids");
    for bad in [
        ".",
        "..",
        ".hidden",
        "a..b",
        "a.-b",
        "-a",
        "a_",
        "a b",
        &"x".repeat(65),
    ] {
        let io = h.fifos(&format!("bad{}", bad.len()), false);
        let mut req = h.create_req("ok", &io);
        req.id = bad.to_owned();
        assert_eq!(
            code(h.tasks.create(&req)),
            Code::INVALID_ARGUMENT,
            "{bad:?}"
        );
        std::fs::remove_file(&io.stdout).unwrap();
        std::fs::remove_file(&io.stderr).unwrap();
    }
    assert_eq!(h.vm_count(), 0);
    h.create("a.b-c_d9");
    h.start("a.b-c_d9", "");
    for bad in ["..", ".e", "e-"] {
        let io = h.fifos(&format!("e{}", bad.len()), false);
        assert_eq!(
            code(h.tasks.exec(&h.exec_req("a.b-c_d9", bad, &io))),
            Code::INVALID_ARGUMENT,
            "{bad:?}"
        );
        std::fs::remove_file(&io.stdout).unwrap();
        std::fs::remove_file(&io.stderr).unwrap();
    }
    h.exec("a.b-c_d9", "exec-1.a");
}
