use super::*;

/// Records what it hears; while told a device departs, tries to
/// attach a child below it (as a family's thread might, just then).
#[derive(Default)]
struct Eager {
    departing: Mutex<Vec<EntryId>>,
    removed: Mutex<Vec<EntryId>>,
    attached: Mutex<Option<EntryId>>,
}

impl Family for Eager {
    fn name(&self) -> &'static str {
        "eager"
    }
    fn classes(&self) -> Vec<(&'static str, Option<&'static str>)> {
        vec![("IOEagerDevice", Some("IOService"))]
    }
    fn kernel_call(&self, _call: &crate::Call<'_>) -> Option<IOResult<Vec<u8>>> {
        None
    }
    fn departing(&self, system: &System, entries: &[EntryId]) {
        self.departing.lock().unwrap().extend(entries);
        let mut attached = self.attached.lock().unwrap();
        if attached.is_none() {
            *attached = system
                .publish(crate::system::Nub {
                    name: "LateChild",
                    class: "IOEagerDevice",
                    properties: Default::default(),
                    provider: entries[entries.len() - 1],
                    family: None,
                    plugged_from: None,
                    matched: true,
                })
                .ok();
        }
    }
    fn removed(&self, _system: &System, entry: EntryId) {
        self.removed.lock().unwrap().push(entry);
    }
}

/// Every entry that stops was first announced as departing to the
/// families: nothing attaches below a device once its families heard
/// it depart (a child attached in that window was stopped unheard).
#[test]
fn the_families_hear_of_every_entry_that_stops() {
    let root = tempfile::tempdir().unwrap();
    let eager = Arc::new(Eager::default());
    let core = Core::start(Config::new(root.path().to_owned()), vec![eager.clone()]);
    let system = core.system();
    let device = system
        .publish(crate::system::Nub {
            name: "EagerDevice",
            class: "IOEagerDevice",
            properties: Default::default(),
            provider: system.root().unwrap(),
            family: None,
            plugged_from: Some("test".into()),
            matched: true,
        })
        .unwrap();
    core.unplug(device).unwrap();
    let departing = eager.departing.lock().unwrap().clone();
    let removed = eager.removed.lock().unwrap().clone();
    assert!(removed.contains(&device));
    for r in &removed {
        assert!(
            departing.contains(r),
            "{r:#x} stopped without its family hearing it depart (heard {departing:x?})"
        );
    }
    core.shutdown();
}

/// A family's handle outliving the core gets no root to hang a bus on
/// (it once got entry 0, and a bus hung there).
#[test]
fn a_system_outliving_its_core_has_no_root() {
    let root = tempfile::tempdir().unwrap();
    let core = Core::start(Config::new(root.path().to_owned()), Vec::new());
    assert!(core.system().root().is_ok_and(|r| r.raw() != 0));
    let orphan = System::orphan();
    assert_eq!(orphan.root(), Err(IOReturn::OFFLINE));
    assert!(orphan
        .publish(crate::system::Nub {
            name: "Bus",
            class: "IOBus",
            properties: Default::default(),
            provider: EntryId::from_raw(0),
            family: None,
            plugged_from: None,
            matched: true,
        })
        .is_err());
}

#[test]
fn a_bounded_subscriber_that_falls_behind_is_cut_off_and_the_others_go_on() {
    let root = tempfile::tempdir().unwrap();
    let core = Core::start(Config::new(root.path().to_owned()), Vec::new());
    let slow = core.subscribe_bounded(2);
    let inner = core.subscribe();
    for service in 0..3 {
        core.inner.emit(Event::Removed {
            service: EntryId::from_raw(service),
        });
    }
    // Two waited for it; the third cut it off.
    assert_eq!(slow.try_iter().count(), 2);
    assert!(matches!(
        slow.try_recv(),
        Err(mpsc::TryRecvError::Disconnected)
    ));
    assert_eq!(inner.try_iter().count(), 3);
}
