//! The system's class hierarchy: the vocabulary the daemon, the SDK and
//! bundle validation share. Families add their classes here.

/// `(class, superclass)` for every class the system implements.
const CLASSES: &[(&str, Option<&str>)] = &[
    ("OSObject", None),
    ("IORegistryEntry", Some("OSObject")),
    ("IOService", Some("IORegistryEntry")),
    ("IOResources", Some("IOService")),
    ("IOUserResources", Some("IOService")),
    // The class of a dext's plain IOService subclass, as on macOS.
    ("IOUserService", Some("IOService")),
    // Virtual devices: a bus nub and the generic devices plugged into it.
    ("IOVirtualBus", Some("IOService")),
    ("IOVirtualDevice", Some("IOService")),
    // USB: host controllers, devices and their interfaces (matched with
    // the QA1076 ladder).
    ("IOUSBHostController", Some("IOService")),
    ("IOUSBHostDevice", Some("IOService")),
    ("IOUSBHostInterface", Some("IOService")),
    // HID: a device (the system's USB one, or a dext's virtual one), the
    // interface event services attach to, and the event services.
    ("IOHIDDevice", Some("IOService")),
    ("IOUSBHostHIDDevice", Some("IOHIDDevice")),
    ("IOUserHIDDevice", Some("IOHIDDevice")),
    ("IOHIDInterface", Some("IOService")),
    ("IOHIDEventService", Some("IOService")),
    ("IOUserHIDEventService", Some("IOHIDEventService")),
    // The system's own event service, used when no dext matches better.
    ("IOHIDEventDriver", Some("IOHIDEventService")),
    // User clients: a dext's door for apps (IOServiceOpen).
    ("IOUserClient", Some("IOService")),
    ("IOUserUserClient", Some("IOUserClient")),
    // PCI: a bus of real functions, and a function.
    ("IOPCIBridge", Some("IOService")),
    ("IOPCIDevice", Some("IOService")),
    // Serial: a dext's port (the system holds its tty) and the UARTs a
    // driver may drive (the virtual one).
    ("IOUserSerial", Some("IOService")),
    ("IOUARTDevice", Some("IOService")),
    // Ethernet: a dext's interface (the system holds its TAP) and the
    // virtual cable's NICs.
    ("IOUserNetworkEthernet", Some("IOService")),
    ("IOVirtualNIC", Some("IOService")),
];

/// The names Apple's DriverKit uses in a personality's `IOClass` for classes
/// this system calls otherwise, and the system class each stands for: a
/// macOS dext's Info.plist works unchanged.
const APPLE_NAMES: &[(&str, &str)] = &[
    ("AppleUserHIDEventService", "IOUserHIDEventService"),
    ("AppleUserHIDDevice", "IOUserHIDDevice"),
    ("AppleUserUSBHostHIDDevice", "IOUserHIDDevice"),
    ("IOUserHIDEventDriver", "IOUserHIDEventService"),
    ("IOUserUSBSerial", "IOUserSerial"),
];

/// DriverKit classes of families this system does not implement yet, and
/// the family's name, so that a refusal says so rather than "unknown".
const FAMILIES_TO_COME: &[(&str, &str)] = &[
    ("IOUserAudioDriver", "audio (AudioDriverKit)"),
    (
        "IOUserSCSIParallelInterfaceController",
        "SCSI (SCSIControllerDriverKit)",
    ),
    (
        "IOUserBlockStorageDevice",
        "block storage (BlockStorageDeviceDriverKit)",
    ),
];

/// The system class `name` stands for: itself when the system implements
/// it, the system's own name for an Apple one (`AppleUserHIDEventService`
/// is `IOUserHIDEventService`).
pub fn canonical(name: &str) -> Option<&'static str> {
    if let Some((_, system)) = APPLE_NAMES.iter().find(|(apple, _)| *apple == name) {
        return Some(system);
    }
    CLASSES.iter().find(|(c, _)| *c == name).map(|(c, _)| *c)
}

/// The family a DriverKit class belongs to, when this system does not
/// implement that family yet.
pub fn family_to_come(name: &str) -> Option<&'static str> {
    FAMILIES_TO_COME
        .iter()
        .find(|(c, _)| *c == name)
        .map(|(_, f)| *f)
}

/// The superclass of a system class; `None` for `OSObject` and unknown names.
pub fn superclass(class: &str) -> Option<&'static str> {
    CLASSES
        .iter()
        .find(|(c, _)| *c == class)
        .and_then(|(_, s)| *s)
}

/// True when the system implements `class`.
pub fn is_system_class(class: &str) -> bool {
    CLASSES.iter().any(|(c, _)| *c == class)
}

/// `class` followed by its superclasses up to `OSObject`.
///
/// ```
/// assert_eq!(driverkit_wire::classes::chain("IOUserResources"),
///            ["IOUserResources", "IOService", "IORegistryEntry", "OSObject"]);
/// ```
pub fn chain(class: &str) -> Vec<&str> {
    let mut out = vec![class];
    let mut current = class;
    while let Some(s) = superclass(current) {
        out.push(s);
        current = s;
    }
    out
}

/// Every system class, for listings and error messages.
pub fn all() -> impl Iterator<Item = &'static str> {
    CLASSES.iter().map(|(c, _)| *c)
}
