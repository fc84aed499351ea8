driverkit::dext_main!(null_driver::NullDriver, null_driver::NullDriverUserClient);
