//! The dext's executable: the system starts it when a personality matches.

driverkit::dext_main!(hid_keyboard_driver::HIDKeyboardDriver);
