//! NullDriver: the smallest useful dext, like Apple's NullDriver sample.
//!
//! It needs no hardware: its personality matches `IOUserResources` with
//! `IOResourceMatch = IOKit`, so the system starts it as soon as the driver
//! is loaded. It logs each step of its lifecycle and publishes a property
//! that `driverkit ioreg -l` shows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use driverkit::prelude::*;

/// The bundle's Info.plist, for hosts that assemble the bundle themselves
/// (`driverkit run` embeds this driver).
pub const INFO_PLIST: &str = include_str!("../Info.plist");

/// What the driver is entitled to: `Entitlements.plist`, installed in its bundle.
pub const ENTITLEMENTS: &str = include_str!("../Entitlements.plist");

/// NullDriver's state. A service has no fields: its state lives here,
/// allocated by `init` and released after `free`.
#[derive(Default)]
pub struct NullDriverIvars {
    started_at: AtomicU64,
}

#[driverkit::service(superclass = IOService, ivars = NullDriverIvars)]
pub struct NullDriver;

impl IOServiceImpl for NullDriver {
    fn init(&self) -> IOResult<NullDriverIvars> {
        driverkit::info!("init: ivars allocated");
        Ok(NullDriverIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        // The superclass's Start runs in the system (SUPERDISPATCH).
        self.super_start(provider)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.ivars().started_at.store(now, Ordering::Relaxed);
        self.set_property("NullDriverGreeting", "Hello from a dext")?;
        self.set_property("NullDriverPID", std::process::id() as i64)?;
        self.register_service()?;
        driverkit::info!(
            "start: registered as {:#x} on provider {:#x}",
            self.registry_entry_id(),
            provider.registry_entry_id()
        );
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let started = self.ivars().started_at.load(Ordering::Relaxed);
        driverkit::info!("stop: ran since {started} (unix time)");
        // Nothing asynchronous to cancel; super comes last.
        self.super_stop(provider)
    }

    fn free(&self) {
        driverkit::info!("free: releasing ivars");
    }

    /// Apps open type 0 only: its user client is `UserClientProperties`.
    fn new_user_client(&self, kind: u32) -> IOResult<String> {
        match kind {
            0 => Ok("UserClientProperties".into()),
            _ => Err(IOReturn::UNSUPPORTED),
        }
    }
}

/// The user client's selectors.
pub mod selector {
    /// Scalars `[a, b]` in, `[a + b]` out.
    pub const ADD: u64 = 0;
    /// A structure in, the same bytes reversed out.
    pub const REVERSE: u64 = 1;
    /// Asynchronous: scalars `[value, delay_ms]`; completes after the
    /// delay with `[value * 2]`.
    pub const DOUBLE_LATER: u64 = 2;
    /// A structure of any size in (large ones arrive as shared memory),
    /// `[byte sum, length]` out.
    pub const CHECKSUM: u64 = 3;
    /// A slow operation, as talking to hardware can be: `[ms]` in (at most
    /// 10 s), returns after that long.
    pub const DELAY: u64 = 4;
}

/// The memory type of the greeting buffer apps map.
pub const GREETING_MEMORY: u64 = 0;
/// What the greeting buffer starts with.
pub const GREETING: &[u8] = b"Hello from NullDriver's shared memory";

/// A completion owed to the app, and when.
struct Owed {
    due: std::time::Instant,
    value: u64,
    completion: IOUserClientCompletion,
}

/// The user client's state: the greeting buffer, and the asynchronous
/// calls a timer will complete.
#[derive(Default)]
pub struct NullDriverUserClientIvars {
    greeting: std::sync::OnceLock<IOBufferMemoryDescriptor>,
    owed: std::sync::Mutex<Vec<Owed>>,
    timer: std::sync::Mutex<Option<IOTimerDispatchSource>>,
}

/// What `IOServiceOpen` on NullDriver creates (its personality's
/// `UserClientProperties`): one per open connection.
#[driverkit::service(superclass = IOUserClient, ivars = NullDriverUserClientIvars)]
pub struct NullDriverUserClient;

use driverkit::user_client::{
    dispatch_external_method, IOUserClientCompletion, IOUserClientMethodArguments,
    IOUserClientMethodDispatch, VARIABLE_STRUCTURE_SIZE,
};

fn add(_: &NullDriverUserClient, args: &mut IOUserClientMethodArguments) -> IOResult<()> {
    let sum = args.scalar_input[0].wrapping_add(args.scalar_input[1]);
    args.scalar_output = vec![sum];
    Ok(())
}

fn reverse(_: &NullDriverUserClient, args: &mut IOUserClientMethodArguments) -> IOResult<()> {
    if args.structure_input.len() > args.structure_output_maximum_size as usize {
        return Err(IOReturn::BAD_ARGUMENT);
    }
    args.structure_output = args.structure_input.iter().rev().copied().collect();
    Ok(())
}

fn double_later(uc: &NullDriverUserClient, args: &mut IOUserClientMethodArguments) -> IOResult<()> {
    let completion = args.completion.take().ok_or(IOReturn::BAD_ARGUMENT)?;
    let delay = std::time::Duration::from_millis(args.scalar_input[1]);
    uc.ivars().owed.locked().push(Owed {
        due: std::time::Instant::now() + delay,
        value: args.scalar_input[0],
        completion,
    });
    let timer = uc.ivars().timer.locked();
    timer.as_ref().ok_or(IOReturn::NOT_READY)?.wake_after(delay)
}

fn checksum(_: &NullDriverUserClient, args: &mut IOUserClientMethodArguments) -> IOResult<()> {
    let sum = args.structure_input.iter().map(|b| u64::from(*b)).sum();
    args.scalar_output = vec![sum, args.structure_input.len() as u64];
    Ok(())
}

fn delay(_: &NullDriverUserClient, args: &mut IOUserClientMethodArguments) -> IOResult<()> {
    std::thread::sleep(std::time::Duration::from_millis(
        args.scalar_input[0].min(10_000),
    ));
    Ok(())
}

impl IOUserClientImpl for NullDriverUserClient {
    fn external_method(
        &self,
        selector: u64,
        args: &mut IOUserClientMethodArguments,
    ) -> IOResult<()> {
        const METHODS: &[IOUserClientMethodDispatch<NullDriverUserClient>] = &[
            IOUserClientMethodDispatch {
                function: add,
                check_completion_exists: false,
                check_scalar_input_count: 2,
                check_structure_input_size: 0,
                check_scalar_output_count: 1,
                check_structure_output_size: 0,
            },
            IOUserClientMethodDispatch {
                function: reverse,
                check_completion_exists: false,
                check_scalar_input_count: 0,
                check_structure_input_size: VARIABLE_STRUCTURE_SIZE,
                check_scalar_output_count: 0,
                check_structure_output_size: VARIABLE_STRUCTURE_SIZE,
            },
            IOUserClientMethodDispatch {
                function: double_later,
                check_completion_exists: true,
                check_scalar_input_count: 2,
                check_structure_input_size: 0,
                check_scalar_output_count: 0,
                check_structure_output_size: 0,
            },
            IOUserClientMethodDispatch {
                function: checksum,
                check_completion_exists: false,
                check_scalar_input_count: 0,
                check_structure_input_size: VARIABLE_STRUCTURE_SIZE,
                check_scalar_output_count: 2,
                check_structure_output_size: 0,
            },
            IOUserClientMethodDispatch {
                function: delay,
                check_completion_exists: false,
                check_scalar_input_count: 1,
                check_structure_input_size: 0,
                check_scalar_output_count: 0,
                check_structure_output_size: 0,
            },
        ];
        dispatch_external_method(self, selector, args, METHODS)
    }

    fn copy_client_memory_for_type(&self, memory_type: u64) -> IOResult<IOBufferMemoryDescriptor> {
        if memory_type != GREETING_MEMORY {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.ivars()
            .greeting
            .get()
            .cloned()
            .ok_or(IOReturn::NOT_READY)
    }
}

impl IOServiceImpl for NullDriverUserClient {
    fn init(&self) -> IOResult<NullDriverUserClientIvars> {
        Ok(NullDriverUserClientIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let greeting = IOBufferMemoryDescriptor::create(4096)?;
        greeting.create_mapping()?.write(0, GREETING)?;
        let _ = self.ivars().greeting.set(greeting);
        let queue = self.copy_dispatch_queue("Default")?;
        let timer = IOTimerDispatchSource::create(&queue)?;
        timer.set_handler(&self.create_action_complete_owed(0)?)?;
        *self.ivars().timer.locked() = Some(timer);
        driverkit::info!("user client: an app opened NullDriver");
        Ok(())
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        // The app closed the connection or died: what was held for it goes.
        let released = std::mem::take(&mut *self.ivars().owed.locked());
        if let Some(t) = self.ivars().timer.locked().take() {
            t.cancel(|| ())?;
        }
        driverkit::info!(
            "user client: the app is gone; released {} pending completion(s)",
            released.len()
        );
        self.super_stop(provider)
    }
}

#[driverkit::actions]
impl NullDriverUserClient {
    /// Completes the asynchronous calls that are due; re-arms for the next.
    #[action(IOTimerDispatchSource::TimerOccurred)]
    fn complete_owed(&self, _action: &OSAction, _time: u64) {
        let now = std::time::Instant::now();
        let due: Vec<Owed> = {
            let mut owed = self.ivars().owed.locked();
            let (due, later) = std::mem::take(&mut *owed)
                .into_iter()
                .partition(|o| o.due <= now);
            *owed = later;
            due
        };
        for o in due {
            let _ = o
                .completion
                .complete(IOReturn::SUCCESS, &[o.value.wrapping_mul(2)]);
        }
        let next = self.ivars().owed.locked().iter().map(|o| o.due).min();
        if let Some(next) = next {
            if let Some(t) = self.ivars().timer.locked().as_ref() {
                let _ = t.wake_after(next.saturating_duration_since(now));
            }
        }
    }
}
