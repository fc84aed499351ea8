driverkit::dext_main!(virtual_sensor_driver::VirtualSensorDriver);
