driverkit::dext_main!(cdc_ethernet_driver::CDCEthernetDriver);
