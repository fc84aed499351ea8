//! Device backends: where devices come from. Each backend turns its devices
//! into registry nubs and nothing else; families and matching take over
//! from there.

pub mod interrupts;
pub mod uinput;
pub mod usb;
pub mod virtual_device;
