// An action's method must have exactly the callback's signature:
// TimerOccurred is (action, time), not (action).
use driverkit::prelude::*;

#[driverkit::service(superclass = IOService)]
pub struct Ticker;

impl IOServiceImpl for Ticker {
    fn init(&self) -> IOResult<()> {
        Ok(())
    }
}

#[driverkit::actions]
impl Ticker {
    #[action(IOTimerDispatchSource::TimerOccurred)]
    fn tick(&self, _action: &OSAction) {}
}

fn main() {}
