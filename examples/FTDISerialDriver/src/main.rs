driverkit::dext_main!(ftdi_serial_driver::FTDISerialDriver);
