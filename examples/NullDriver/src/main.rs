driverkit::dext_main!(null_driver::NullDriver);
