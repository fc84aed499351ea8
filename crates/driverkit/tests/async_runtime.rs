//! Dispatch queues, actions and dispatch sources, without a daemon.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use driverkit::prelude::*;
use driverkit::runtime::instantiate;
use driverkit::time::now_ns;

#[derive(Default)]
struct Ivars {
    log: Mutex<Vec<String>>,
    received: Mutex<Vec<Vec<u8>>>,
    serviced: AtomicUsize,
    source: Mutex<Option<IODataQueueDispatchSource>>,
    events: Mutex<Option<mpsc::Sender<String>>>,
}

#[driverkit::service(superclass = IOService, ivars = Ivars)]
struct Probe;

impl IOServiceImpl for Probe {
    fn init(&self) -> IOResult<Ivars> {
        Ok(Ivars::default())
    }
}

#[driverkit::actions]
impl Probe {
    #[action(IODataQueueDispatchSource::DataAvailable)]
    fn data_available(&self, _action: &OSAction) {
        let source = self.ivars().source.lock().unwrap().clone().unwrap();
        let mut out = Vec::new();
        while source.dequeue(&mut out).is_ok() {
            self.ivars().received.lock().unwrap().push(out.clone());
        }
        self.event("data");
    }

    #[action(IODataQueueDispatchSource::DataServiced)]
    fn data_serviced(&self, _action: &OSAction) {
        self.ivars().serviced.fetch_add(1, Ordering::SeqCst);
        self.event("serviced");
    }

    #[action(IOTimerDispatchSource::TimerOccurred, queue = "Timers")]
    fn timer_occurred(&self, _action: &OSAction, time: u64) {
        let on_timers = self.copy_dispatch_queue("Timers").unwrap().on_queue();
        self.event(&format!("timer {time} on Timers: {on_timers}"));
    }
}

impl Probe {
    fn event(&self, what: &str) {
        self.ivars().log.lock().unwrap().push(what.to_owned());
        if let Some(tx) = self.ivars().events.lock().unwrap().as_ref() {
            let _ = tx.send(what.to_owned());
        }
    }

    fn events(&self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        *self.ivars().events.lock().unwrap() = Some(tx);
        rx
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn reference_storage_is_zeroed_and_of_the_requested_size() {
    let probe = instantiate::<Probe>().unwrap();
    let action = probe.create_action_data_available(48).unwrap();
    assert_eq!(
        action.type_name(),
        "IODataQueueDispatchSource::DataAvailable"
    );
    assert_eq!(action.reference().len(), 48);
    assert!(action.reference().iter().all(|b| *b == 0));
    action.reference()[0] = 7;
    assert_eq!(action.reference()[0], 7);
    assert_eq!(
        probe
            .create_action_data_available(0)
            .unwrap()
            .reference()
            .len(),
        0
    );
}

#[test]
fn a_method_with_a_queue_name_runs_on_that_queue() {
    let probe = instantiate::<Probe>().unwrap();
    // No queue named Timers yet: the action cannot be made.
    assert_eq!(
        probe.create_action_timer_occurred(0).unwrap_err(),
        IOReturn::NOT_FOUND
    );
    probe.set_dispatch_queue("Timers", IODispatchQueue::create("Timers").unwrap());
    let events = probe.events();
    let timer =
        IOTimerDispatchSource::create(&probe.copy_dispatch_queue("Default").unwrap()).unwrap();
    timer
        .set_handler(&probe.create_action_timer_occurred(0).unwrap())
        .unwrap();
    let deadline = now_ns() + 2_000_000;
    timer.wake_at_time(deadline, 0).unwrap();
    let got = events.recv_timeout(WAIT).unwrap();
    let fired: u64 = got.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(fired >= deadline, "fired at {fired}, deadline {deadline}");
    assert!(got.ends_with("on Timers: true"), "{got}");
}

#[test]
fn a_source_refuses_an_action_of_another_type() {
    let probe = instantiate::<Probe>().unwrap();
    let q = probe.copy_dispatch_queue("Default").unwrap();
    let dq = IODataQueueDispatchSource::create(256, &q).unwrap();
    let serviced = probe.create_action_data_serviced(0).unwrap();
    assert_eq!(
        dq.set_data_available_handler(&serviced),
        Err(IOReturn::BAD_ARGUMENT)
    );
    let timer = IOTimerDispatchSource::create(&q).unwrap();
    assert_eq!(timer.set_handler(&serviced), Err(IOReturn::BAD_ARGUMENT));
}

#[test]
fn data_available_and_data_serviced_run_on_their_queue_in_order() {
    let probe = instantiate::<Probe>().unwrap();
    let q = probe.copy_dispatch_queue("Default").unwrap();
    let dq = IODataQueueDispatchSource::create(4096, &q).unwrap();
    *probe.ivars().source.lock().unwrap() = Some(dq.clone());
    let events = probe.events();
    dq.set_data_available_handler(&probe.create_action_data_available(0).unwrap())
        .unwrap();
    dq.set_data_serviced_handler(&probe.create_action_data_serviced(0).unwrap())
        .unwrap();
    for i in 0..100u32 {
        dq.enqueue(4, |s| s.copy_from_slice(&i.to_le_bytes()))
            .unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    while probe.ivars().received.lock().unwrap().len() < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} entries arrived",
            probe.ivars().received.lock().unwrap().len()
        );
        let _ = events.recv_timeout(Duration::from_millis(100));
    }
    let got: Vec<u32> = probe
        .ivars()
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|e| u32::from_le_bytes(e[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>(), "FIFO");
    while probe.ivars().serviced.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "DataServiced never ran"
        );
        let _ = events.recv_timeout(Duration::from_millis(100));
    }
}

#[test]
fn cancel_stops_callbacks_and_then_runs_the_handler() {
    let probe = instantiate::<Probe>().unwrap();
    let q = probe.copy_dispatch_queue("Default").unwrap();
    let dq = IODataQueueDispatchSource::create(4096, &q).unwrap();
    *probe.ivars().source.lock().unwrap() = Some(dq.clone());
    let events = probe.events();
    dq.set_data_available_handler(&probe.create_action_data_available(0).unwrap())
        .unwrap();
    dq.enqueue(1, |s| s[0] = 1).unwrap();
    assert_eq!(events.recv_timeout(WAIT).unwrap(), "data");
    let (done_tx, done_rx) = mpsc::channel();
    dq.cancel(move || done_tx.send(()).unwrap()).unwrap();
    done_rx.recv_timeout(WAIT).expect("the cancel handler runs");
    dq.enqueue(1, |s| s[0] = 2).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        probe.ivars().received.lock().unwrap().len(),
        1,
        "no callback after cancel"
    );

    // A cancelled timer never fires.
    probe.set_dispatch_queue("Timers", IODispatchQueue::create("Timers").unwrap());
    let timer = IOTimerDispatchSource::create(&q).unwrap();
    timer
        .set_handler(&probe.create_action_timer_occurred(0).unwrap())
        .unwrap();
    timer.wake_after(Duration::from_millis(50)).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    timer.cancel(move || done_tx.send(()).unwrap()).unwrap();
    done_rx.recv_timeout(WAIT).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!probe
        .ivars()
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.starts_with("timer")));
    assert_eq!(timer.wake_after(Duration::ZERO), Err(IOReturn::OFFLINE));
}

#[test]
fn a_cancelled_action_is_not_called() {
    let probe = instantiate::<Probe>().unwrap();
    let q = probe.copy_dispatch_queue("Default").unwrap();
    let action = probe.create_action_data_available(0).unwrap();
    let (tx, rx) = mpsc::channel();
    action.cancel(move || tx.send(()).unwrap()).unwrap();
    rx.recv_timeout(WAIT).unwrap();
    let dq = IODataQueueDispatchSource::create(256, &q).unwrap();
    *probe.ivars().source.lock().unwrap() = Some(dq.clone());
    dq.set_data_available_handler(&action).unwrap();
    dq.enqueue(1, |s| s[0] = 0).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(probe.ivars().received.lock().unwrap().is_empty());
}
