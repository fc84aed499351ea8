driverkit::dext_main!(edu_driver::EduDriver, edu_driver::EduUserClient);
