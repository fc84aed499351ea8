driverkit::dext_main!(virtual_serial_driver::VirtualSerialDriver);
