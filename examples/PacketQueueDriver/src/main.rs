driverkit::dext_main!(packet_queue_driver::PacketQueueDriver);
