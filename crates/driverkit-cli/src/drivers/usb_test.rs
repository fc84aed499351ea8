//! DriverKitUsbTestDriver: exercises the USB family from a dext against the
//! built-in `vendor-bulk` device, and publishes what it saw for tests.
//!
//! - `UsbTestDevice` matches the device (idVendor + idProduct), reads its
//!   descriptors and strings, sends vendor request 1 (`TestFirmware`) and an
//!   unknown one (`TestStallStatus`), then selects configuration 1 with
//!   interface matching: the device is vendor-class, so nothing else would.
//! - `UsbTestInterface` matches interface 0 of configuration 1, reads its
//!   descriptor (`TestInterfaceClass`, `TestEndpoints`), copies its bulk
//!   pipes, sends a message out and reads the echo back
//!   (`TestEcho`), waits on an IN pipe with a timeout
//!   (`TestTimeoutStatus`), and starts an asynchronous read that it aborts
//!   (`TestAbortStatus`). Then it takes interface 1 through the device,
//!   selects its alternate setting 1 and echoes through its pipes
//!   (`TestAltEcho`). Last, it keeps 8 asynchronous reads in flight on
//!   the IN pipe while another thread sends 256 numbered packets to be
//!   echoed: each completion must carry the next number
//!   (`TestOrderedReads`, `TestOrderedMisplaced`), as DriverKit delivers a
//!   pipe's completions in the device's order.
//! - `VirtualHIDKeyboard` is an `IOUserHIDDevice` on `IOUserResources`: a
//!   keyboard made by a dext. Every 50 ms a timer makes it press and
//!   release "h" through `handle_report`.
//! - `MouseEventService` is an `IOUserHIDEventService` on the built-in
//!   `mouse` that keeps the SDK's own `handle_report`, which dispatches
//!   what each report changed as the system's event service would.
//! - `FtdiTestDevice` and `FtdiTestInterface` drive a real FTDI FT232
//!   (QEMU's `usb-serial`, 0403:6001) through the Linux USB backend: the
//!   device's descriptors and strings, its configuration, FTDI's vendor
//!   requests (reset, 115200 baud), a line written through bulk OUT
//!   (`TestFtdiSent`), and bulk IN read continuously with asynchronous
//!   transfers, each packet's two modem-status bytes stripped
//!   (`TestFtdiReceived`).

use driverkit_wire::sync::Locked;
use std::sync::Mutex;

use driverkit::prelude::*;
use driverkit::runtime::ClassEntry;
use driverkit_usb::Setup;

pub const EXECUTABLE: &str = "DriverKitUsbTestDriver";

/// What the driver is entitled to.
pub const ENTITLEMENTS: &str = include_str!("UsbTestDriver.Entitlements.plist");

pub const INFO_PLIST: &str = include_str!("UsbTestDriver.Info.plist");

pub fn classes() -> Vec<ClassEntry> {
    vec![
        driverkit::runtime::class::<UsbTestDevice>(),
        driverkit::runtime::class::<UsbTestInterface>(),
        driverkit::runtime::class::<VirtualHIDKeyboard>(),
        driverkit::runtime::class::<MouseEventService>(),
        driverkit::runtime::class::<FtdiTestDevice>(),
        driverkit::runtime::class::<FtdiTestInterface>(),
    ]
}

#[derive(Default)]
pub struct FtdiTestDeviceIvars {
    descriptor: Mutex<Option<IOBufferMemoryDescriptor>>,
}

/// The FTDI device: strings, its device descriptor again by an
/// asynchronous control request, then configuration 1 with interface nubs.
#[driverkit::service(superclass = IOService, ivars = FtdiTestDeviceIvars)]
pub struct FtdiTestDevice;

impl IOServiceImpl for FtdiTestDevice {
    fn init(&self) -> IOResult<FtdiTestDeviceIvars> {
        Ok(FtdiTestDeviceIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let device = IOUSBHostDevice::from_provider(provider);
        let d = device.copy_descriptors()?;
        let view = d.device()?;
        let product = device.copy_string_descriptor(view.product_index())?;
        self.set_property("TestFtdiProduct", product)?;
        self.set_property(
            "TestFtdiInterfaces",
            d.configuration()?.interfaces.len() as i64,
        )?;
        let buffer = IOBufferMemoryDescriptor::create(64)?;
        let done = self.create_action_descriptor_done(0)?;
        device.async_device_request(
            Setup::get_descriptor(driverkit_usb::kind::DEVICE, 0, 0, 18),
            &buffer,
            &done,
            2000,
        )?;
        *self.ivars().descriptor.locked() = Some(buffer);
        device.set_configuration(1, true)?;
        self.register_service()
    }
}

#[driverkit::actions]
impl FtdiTestDevice {
    /// The asynchronous GET_DESCRIPTOR(Device): its length and vendor.
    #[action(IOService::CompleteAsync)]
    fn descriptor_done(&self, _action: &OSAction, status: IOReturn, actual: u64) {
        let buffer = self.ivars().descriptor.locked().take();
        let mut bytes = vec![0u8; actual as usize];
        if let Some(map) = buffer.as_ref().and_then(|b| b.create_mapping().ok()) {
            let _ = map.read(0, &mut bytes);
        }
        let vendor = bytes.get(8..10).map(|v| u16::from_le_bytes([v[0], v[1]]));
        let _ = self.set_property(
            "TestFtdiAsyncDescriptor",
            format!(
                "{} {actual} bytes, idVendor {:04x}",
                status.name().unwrap_or("?"),
                vendor.unwrap_or(0)
            ),
        );
    }
}

#[derive(Default)]
pub struct FtdiTestInterfaceIvars {
    /// The IN pipe and one buffer per read kept in flight, by the index
    /// each read's action carries in its reference.
    reading: Mutex<Option<(IOUSBHostPipe, Vec<IOBufferMemoryDescriptor>)>>,
    received: Mutex<Vec<u8>>,
}

/// Bulk-IN reads the FTDI driver keeps in flight at once.
const FTDI_READS: usize = 4;

/// FTDI's interface: vendor requests, a line out, and reading in forever.
#[driverkit::service(superclass = IOService, ivars = FtdiTestInterfaceIvars)]
pub struct FtdiTestInterface;

/// FTDI's vendor requests (host to device, vendor, device).
const FTDI_RESET: u8 = 0;
const FTDI_SET_BAUD_RATE: u8 = 3;

impl IOServiceImpl for FtdiTestInterface {
    fn init(&self) -> IOResult<FtdiTestInterfaceIvars> {
        Ok(FtdiTestInterfaceIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let interface = IOUSBHostInterface::from_provider(provider);
        let out_pipe = interface.copy_pipe(0x02)?;
        let in_pipe = interface.copy_pipe(0x81)?;
        let vendor = |request: u8, value: u16| Setup {
            request_type: 0x40,
            request,
            value,
            index: 0,
            length: 0,
        };
        interface.device_request(vendor(FTDI_RESET, 0), &[], 1000)?;
        // 115200 baud: the FT232's 3 MHz clock divided by 26.
        interface.device_request(vendor(FTDI_SET_BAUD_RATE, 26), &[], 1000)?;
        let line = b"hello from a dext\n";
        let buffer = IOBufferMemoryDescriptor::create(64)?;
        buffer.create_mapping()?.write(0, line)?;
        // CLEAR_FEATURE(ENDPOINT_HALT) on a pipe that is not stalled is
        // harmless, and exercises the path.
        out_pipe.clear_stall(true)?;
        self.set_property("TestFtdiClearStall", "ok")?;
        let sent = out_pipe.io(&buffer, line.len(), 2000)?;
        self.set_property("TestFtdiSent", sent as i64)?;
        let mut buffers = Vec::new();
        let mut reads = Vec::new();
        for i in 0..FTDI_READS {
            buffers.push(IOBufferMemoryDescriptor::create(64)?);
            let done = self.create_action_ftdi_read(8)?;
            done.reference()[0] = i as u8;
            reads.push(done);
        }
        *self.ivars().reading.locked() = Some((in_pipe, buffers.clone()));
        for (buffer, done) in buffers.iter().zip(&reads) {
            in_pipe.async_io(buffer, 64, done, 0)?;
        }
        self.set_property("TestFtdiReadsInFlight", FTDI_READS as i64)?;
        self.register_service()
    }
}

#[driverkit::actions]
impl FtdiTestInterface {
    /// One bulk-IN packet: two modem-status bytes, then data. Read again.
    #[action(IOService::CompleteAsync)]
    fn ftdi_read(&self, action: &OSAction, status: IOReturn, actual: u64) {
        if status != IOReturn::SUCCESS {
            let _ = self.set_property("TestFtdiReadStatus", status.name().unwrap_or("?"));
            return;
        }
        let reading = self.ivars().reading.locked();
        let Some((pipe, buffers)) = &*reading else {
            return;
        };
        let index = usize::from(action.reference()[0]);
        let Some(buffer) = buffers.get(index) else {
            return;
        };
        let mut packet = vec![0; actual as usize];
        if let Ok(map) = buffer.create_mapping() {
            let _ = map.read(0, &mut packet);
        }
        if packet.len() > 2 {
            let text = {
                let mut received = self.ivars().received.locked();
                received.extend_from_slice(&packet[2..]);
                String::from_utf8_lossy(&received).into_owned()
            };
            let _ = self.set_property("TestFtdiReceived", text);
        } else {
            // Status only: FTDI reports every latency period; wait a little.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = pipe.async_io(buffer, 64, action, 0);
    }
}

#[driverkit::service(superclass = IOService, ivars = ())]
pub struct UsbTestDevice;

impl IOServiceImpl for UsbTestDevice {
    fn init(&self) -> IOResult<()> {
        Ok(())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let device = IOUSBHostDevice::from_provider(provider);
        let d = device.copy_descriptors()?;
        let view = d.device()?;
        let mut out = plist::Dictionary::new();
        out.insert("TestVendor".into(), i64::from(view.vendor_id()).into());
        out.insert(
            "TestInterfaces".into(),
            (d.configuration()?.interfaces.len() as i64).into(),
        );
        out.insert(
            "TestProduct".into(),
            device.copy_string_descriptor(view.product_index())?.into(),
        );
        let version = Setup {
            request_type: 0xc0,
            request: 1,
            value: 0,
            index: 0,
            length: 64,
        };
        let firmware = device.device_request(version, &[], 1000)?;
        out.insert("TestFirmware".into(), plist::Value::Data(firmware));
        let unknown = Setup {
            request: 0x42,
            ..version
        };
        let stalled = device.device_request(unknown, &[], 1000);
        out.insert(
            "TestStallStatus".into(),
            stalled
                .err()
                .and_then(|e| e.name())
                .unwrap_or("none")
                .into(),
        );
        self.set_properties(out)?;
        device.set_configuration(1, true)?;
        self.register_service()
    }
}

#[derive(Default)]
pub struct UsbTestInterfaceIvars {
    pending: Mutex<Option<(IOUSBHostPipe, IOBufferMemoryDescriptor)>>,
    ordered: Mutex<Option<Ordered>>,
}

/// Reads in flight on one pipe, and what their completions carried.
struct Ordered {
    pipe: IOUSBHostPipe,
    buffers: Vec<IOBufferMemoryDescriptor>,
    /// The number the next completion must carry.
    next: u32,
    misplaced: u32,
}

/// Reads kept in flight, and numbered packets echoed through them.
const ORDERED_READS: usize = 8;
const ORDERED_PACKETS: u32 = 256;

#[driverkit::service(superclass = IOService, ivars = UsbTestInterfaceIvars)]
pub struct UsbTestInterface;

impl IOServiceImpl for UsbTestInterface {
    fn init(&self) -> IOResult<UsbTestInterfaceIvars> {
        Ok(UsbTestInterfaceIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let interface = IOUSBHostInterface::from_provider(provider);
        let descriptor = interface.descriptor()?;
        self.set_property("TestInterfaceClass", i64::from(descriptor.class))?;
        self.set_property(
            "TestEndpoints",
            plist::Value::Array(
                descriptor
                    .endpoints
                    .iter()
                    .map(|e| i64::from(e.address).into())
                    .collect(),
            ),
        )?;
        let out_pipe = interface.copy_pipe(0x02)?;
        let in_pipe = interface.copy_pipe(0x82)?;
        let message = b"echo through a pipe";
        let buffer = IOBufferMemoryDescriptor::create(512)?;
        let map = buffer.create_mapping()?;
        map.write(0, message)?;
        let sent = out_pipe.io(&buffer, message.len(), 1000)?;
        let back = IOBufferMemoryDescriptor::create(512)?;
        let got = in_pipe.io(&back, 512, 1000)?;
        let mut data = vec![0; got];
        back.create_mapping()?.read(0, &mut data)?;
        let mut props = plist::Dictionary::new();
        props.insert("TestSent".into(), (sent as i64).into());
        props.insert(
            "TestEcho".into(),
            String::from_utf8_lossy(&data).into_owned().into(),
        );
        let timed_out = in_pipe.io(&back, 512, 50);
        props.insert(
            "TestTimeoutStatus".into(),
            timed_out
                .err()
                .and_then(|e| e.name())
                .unwrap_or("none")
                .into(),
        );
        self.set_properties(props)?;
        // An asynchronous read nothing will answer, then Abort.
        let done = self.create_action_read_done(0)?;
        in_pipe.async_io(&back, 512, &done, 0)?;
        *self.ivars().pending.locked() = Some((in_pipe, back));
        in_pipe.abort()?;
        self.set_properties(alternate_setting_echo(&interface)?)?;
        self.start_ordered_reads(&interface)?;
        self.register_service()
    }
}

impl UsbTestInterface {
    /// Arms [`ORDERED_READS`] reads on the IN pipe, then sends the numbered
    /// packets from a thread of its own (the completions run on this
    /// service's queue meanwhile).
    fn start_ordered_reads(&self, interface: &IOUSBHostInterface) -> IOResult<()> {
        let (out_pipe, in_pipe) = (interface.copy_pipe(0x02)?, interface.copy_pipe(0x82)?);
        let mut buffers = Vec::new();
        let mut actions = Vec::new();
        for i in 0..ORDERED_READS {
            buffers.push(IOBufferMemoryDescriptor::create(64)?);
            let done = self.create_action_ordered_read(8)?;
            done.reference()[0] = i as u8;
            actions.push(done);
        }
        *self.ivars().ordered.locked() = Some(Ordered {
            pipe: in_pipe,
            buffers: buffers.clone(),
            next: 0,
            misplaced: 0,
        });
        for (buffer, done) in buffers.iter().zip(&actions) {
            in_pipe.async_io(buffer, 64, done, 0)?;
        }
        let packet = IOBufferMemoryDescriptor::create(4)?;
        std::thread::spawn(move || {
            for n in 0..ORDERED_PACKETS {
                let sent = packet
                    .create_mapping()
                    .and_then(|m| m.write(0, &n.to_le_bytes()))
                    .and_then(|()| out_pipe.io(&packet, 4, 1000));
                if sent.is_err() {
                    driverkit::info!("ordered reads: packet {n} not sent: {sent:?}");
                    return;
                }
            }
        });
        Ok(())
    }
}

/// The device's interface 1, reached from interface 0's driver through the
/// device (`CopyDevice`, `CopyInterface`): no pipe in alternate setting 0,
/// an echo through bulk 0x03/0x83 in alternate setting 1, and a setting the
/// interface does not have refused.
fn alternate_setting_echo(interface: &IOUSBHostInterface) -> IOResult<plist::Dictionary> {
    let device = interface.copy_device()?;
    let interfaces = device.copy_interfaces()?;
    let numbers: Vec<plist::Value> = interfaces
        .iter()
        .map(|i| i.interface_number().map(|n| i64::from(n).into()))
        .collect::<IOResult<_>>()?;
    let second = *interfaces.get(1).ok_or(IOReturn::NOT_FOUND)?;
    let name = |r: IOResult<()>| r.err().and_then(|e| e.name()).unwrap_or("ok");
    let mut props = plist::Dictionary::new();
    props.insert("TestInterfaceNumbers".into(), plist::Value::Array(numbers));
    props.insert(
        "TestAlt0PipeStatus".into(),
        name(second.copy_pipe(0x03).map(drop)).into(),
    );
    props.insert(
        "TestAlt7Status".into(),
        name(second.select_alternate_setting(7)).into(),
    );
    second.select_alternate_setting(1)?;
    props.insert(
        "TestAlternateSetting".into(),
        i64::from(second.alternate_setting()?).into(),
    );
    let (out, back) = (second.copy_pipe(0x03)?, second.copy_pipe(0x83)?);
    let message = b"through alternate setting 1";
    let buffer = IOBufferMemoryDescriptor::create(512)?;
    buffer.create_mapping()?.write(0, message)?;
    out.io(&buffer, message.len(), 1000)?;
    let got = back.io(&buffer, 512, 1000)?;
    let mut data = vec![0; got];
    buffer.create_mapping()?.read(0, &mut data)?;
    props.insert(
        "TestAltEcho".into(),
        String::from_utf8_lossy(&data).into_owned().into(),
    );
    Ok(props)
}

#[driverkit::actions]
impl UsbTestInterface {
    #[action(IOService::CompleteAsync)]
    fn read_done(&self, _action: &OSAction, status: IOReturn, _actual: u64) {
        let _ = self.set_property("TestAbortStatus", status.name().unwrap_or("?"));
    }

    /// One numbered packet: it must be the next; read again until all came.
    #[action(IOService::CompleteAsync)]
    fn ordered_read(&self, action: &OSAction, status: IOReturn, actual: u64) {
        let mut ordered = self.ivars().ordered.locked();
        let Some(o) = ordered.as_mut() else { return };
        let index = usize::from(action.reference()[0]);
        let Some(buffer) = o.buffers.get(index) else {
            return;
        };
        if status != IOReturn::SUCCESS || actual != 4 {
            let _ = self.set_property("TestOrderedStatus", status.name().unwrap_or("?"));
            return;
        }
        let mut number = [0u8; 4];
        if let Ok(map) = buffer.create_mapping() {
            let _ = map.read(0, &mut number);
        }
        if u32::from_le_bytes(number) != o.next {
            o.misplaced += 1;
        }
        o.next += 1;
        if o.next == ORDERED_PACKETS {
            let mut props = plist::Dictionary::new();
            props.insert("TestOrderedReads".into(), i64::from(o.next).into());
            props.insert("TestOrderedMisplaced".into(), i64::from(o.misplaced).into());
            let _ = self.set_properties(props);
        }
        // Re-armed while packets remain for the reads in flight.
        if o.next + ORDERED_READS as u32 <= ORDERED_PACKETS {
            let _ = o.pipe.async_io(buffer, 64, action, 0);
        }
    }
}

#[derive(Default)]
pub struct VirtualHIDKeyboardIvars {
    timer: Mutex<Option<IOTimerDispatchSource>>,
}

#[driverkit::service(superclass = IOUserHIDDevice, ivars = VirtualHIDKeyboardIvars)]
pub struct VirtualHIDKeyboard;

impl IOUserHIDDeviceImpl for VirtualHIDKeyboard {
    fn new_device_description(&self) -> plist::Dictionary {
        let mut d = plist::Dictionary::new();
        d.insert("VendorID".into(), 0x1209i64.into());
        d.insert("ProductID".into(), 0x0010i64.into());
        d.insert("Product".into(), "Virtual HID Keyboard".into());
        d
    }

    /// The built-in virtual USB keyboard's descriptor.
    fn new_report_descriptor(&self) -> Vec<u8> {
        driverkitd::backends::virtual_device::builtin_report_descriptor("keyboard", 0)
            .unwrap_or_default()
    }
}

impl IOServiceImpl for VirtualHIDKeyboard {
    fn init(&self) -> IOResult<VirtualHIDKeyboardIvars> {
        Ok(VirtualHIDKeyboardIvars::default())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        let queue = self.copy_dispatch_queue("Default")?;
        let timer = IOTimerDispatchSource::create(&queue)?;
        timer.set_handler(&self.create_action_type_key(8)?)?;
        timer.wake_after(std::time::Duration::from_millis(50))?;
        *self.ivars().timer.locked() = Some(timer);
        self.register_service()
    }

    fn stop(&self, provider: &IOService) -> IOResult<()> {
        let timer = self.ivars().timer.locked().take();
        if let Some(t) = timer {
            // The handler runs on this (Default) queue after Stop returns;
            // cancelling is enough for the timer never to fire again.
            t.cancel(|| ())?;
        }
        self.super_stop(provider)
    }
}

#[driverkit::actions]
impl VirtualHIDKeyboard {
    /// Alternately press and release "h" (usage 0x0b), then re-arm.
    #[action(IOTimerDispatchSource::TimerOccurred)]
    fn type_key(&self, action: &OSAction, _time: u64) {
        let down = {
            let mut r = action.reference();
            r[0] ^= 1;
            r[0] == 1
        };
        let report = if down {
            [0, 0, 0x0b, 0, 0, 0, 0, 0]
        } else {
            [0; 8]
        };
        let _ = self.handle_report(&report);
        if let Some(t) = &*self.ivars().timer.locked() {
            let _ = t.wake_after(std::time::Duration::from_millis(50));
        }
    }
}

/// An event service that overrides nothing of the HID family: the SDK's
/// `handle_report` turns the mouse's reports into pointer and scroll events.
#[driverkit::service(superclass = IOUserHIDEventService, ivars = ())]
pub struct MouseEventService;

impl IOUserHIDEventServiceImpl for MouseEventService {}

impl IOServiceImpl for MouseEventService {
    fn init(&self) -> IOResult<()> {
        Ok(())
    }

    fn start(&self, provider: &IOService) -> IOResult<()> {
        self.super_start(provider)?;
        self.register_service()
    }
}
