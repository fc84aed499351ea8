// Declaring a service without implementing its class's methods (at least
// `init`) does not compile: the runtime could not create it.
#[driverkit::service(superclass = driverkit::IOService)]
pub struct Forgotten;

fn main() {}
