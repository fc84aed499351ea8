//! `IOUSBHostPipe` as dexts call it: transfers, aborts and stalls.

use super::*;

impl IOUSBHostPipeInterface for UsbCall<'_> {
    fn io(&self, memory: u64, length: u64, timeout_ms: u32) -> IOResult<u64> {
        let pipe = self.pipe()?;
        let region = self.call.system.region(self.call.server, memory)?;
        let submitted = pipe.generation();
        pipe_transfer(
            &pipe,
            &region,
            length,
            timeout(timeout_ms),
            submitted,
            &mut || {},
        )
    }

    fn async_io(&self, memory: u64, length: u64, action: u64, timeout_ms: u32) -> IOResult<()> {
        let pipe = self.pipe()?;
        let region = self.call.system.region(self.call.server, memory)?;
        if length > region.len() as u64 {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        let device = pipe.hold.interface.device.entry;
        // An Abort after this call returns must end this transfer.
        let submitted = pipe.generation();
        let request = self
            .call
            .system
            .track_request(self.call.server, device, action)?;
        // Its place among the pipe's transfers: queued on the endpoint and
        // completed to the driver in the order the driver asked (`order`).
        let order = pipe.order.clone();
        let ticket = order.ticket();
        let system = self.call.system.clone();
        self.call.system.run_io(move || {
            order.wait_to_queue(ticket);
            let result = pipe_transfer(
                &pipe,
                &region,
                length,
                timeout(timeout_ms),
                submitted,
                &mut || order.queued(ticket),
            );
            // Failed before it had a place: the next may go.
            order.queued(ticket);
            let (status, actual) = completion(result);
            order.deliver(ticket, move || {
                system.finish_request(request, status, actual)
            });
        });
        Ok(())
    }

    fn abort(&self) -> IOResult<()> {
        let pipe = self.pipe()?;
        pipe.hold
            .interface
            .device
            .transport
            .abort(pipe.endpoint.address);
        Ok(())
    }

    fn clear_stall(&self, with_request: bool) -> IOResult<()> {
        let pipe = self.pipe()?;
        if with_request {
            let setup = Setup {
                request_type: 0x02,
                request: driverkit_usb::repr::request::CLEAR_FEATURE,
                value: 0, // ENDPOINT_HALT
                index: pipe.endpoint.address.into(),
                length: 0,
            };
            pipe.hold.interface.device.transport.control(
                setup,
                &[],
                Some(Duration::from_secs(5)),
            )?;
        }
        Ok(())
    }
}

/// A transfer's result as its completion reports it: a device gone while
/// it waited aborted it.
pub(super) fn completion(result: IOResult<u64>) -> (IOReturn, u64) {
    match result {
        Ok(n) => (IOReturn::SUCCESS, n),
        Err(IOReturn::NO_DEVICE) => (IOReturn::ABORTED, 0),
        Err(e) => (e, 0),
    }
}

/// One transfer on `pipe` through `region`; `queued` runs once it has its
/// place on the endpoint.
pub(super) fn pipe_transfer(
    pipe: &Pipe,
    region: &driverkit_wire::shm::SharedMemory,
    length: u64,
    timeout: Option<Duration>,
    submitted: u64,
    queued: &mut dyn FnMut(),
) -> IOResult<u64> {
    let length = usize::try_from(length).map_err(|_| IOReturn::BAD_ARGUMENT)?;
    if length > region.len() {
        return Err(IOReturn::BAD_ARGUMENT);
    }
    let address = pipe.endpoint.address;
    let transport = &pipe.hold.interface.device.transport;
    let transfer = |data, length| Transfer {
        address,
        data,
        length,
        timeout,
        submitted,
    };
    if address & 0x80 != 0 {
        let done = transport.transfer_queued(transfer(&[], length), queued)?;
        region.write(0, &done.data);
        Ok(done.data.len() as u64)
    } else {
        let mut out = vec![0u8; length];
        region.read(0, &mut out);
        Ok(transport.transfer_queued(transfer(&out, 0), queued)?.actual as u64)
    }
}
