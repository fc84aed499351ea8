// A DriverKit service keeps its state in ivars, never in fields.

pub struct CounterIvars;

#[driverkit::service(superclass = IOService, ivars = CounterIvars)]
pub struct Counter {
    count: u32,
}

fn main() {}
