driverkit::dext_main!(virtual_ethernet_driver::VirtualEthernetDriver);
