//! One bulk or interrupt endpoint of a claimed interface, driven by a thread
//! of its own so that many transfers are in flight at once: callers hand it
//! transfers and wait for their own completion; it submits each at once
//! (usbfs queues them in order) and hands completions back in order.
//!
//! usbfs cancels per endpoint, not per transfer. An abort cancels every
//! transfer submitted so far. A transfer whose time ran out is cancelled
//! the same way: the others cancelled with it that moved no data are
//! submitted again, so a timeout never costs a neighbour its transfer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use driverkit_wire::{IOResult, IOReturn};
use nusb::transfer::{Buffer, BulkOrInterrupt, Completion, EndpointDirection, TransferError};

use crate::families::usb::Completed;

/// A transfer on its way to the endpoint's thread.
pub struct Request {
    /// OUT data, or empty for IN.
    pub data: Vec<u8>,
    /// IN: bytes asked for.
    pub length: usize,
    pub deadline: Option<Instant>,
    /// The abort generation the transfer was asked under.
    pub submitted: u64,
    pub reply: mpsc::SyncSender<IOResult<Completed>>,
}

pub enum Command {
    Transfer(Request),
    /// Cancel everything submitted so far (`kIOReturnAborted`).
    Abort,
}

/// The endpoint's thread, as callers see it.
pub struct EndpointThread {
    pub commands: mpsc::Sender<Command>,
    /// Aborts so far: a transfer asked under an older generation is
    /// aborted without being submitted.
    pub generation: Arc<AtomicU64>,
}

struct InFlight {
    request: Request,
    /// Set when the transfer's own deadline cancelled it.
    timed_out: bool,
    /// Set when an abort cancelled it.
    aborted: bool,
}

/// Runs an endpoint until every sender of commands is gone.
pub fn run<T: BulkOrInterrupt, D: EndpointDirection>(
    mut endpoint: nusb::Endpoint<T, D>,
    commands: mpsc::Receiver<Command>,
    generation: Arc<AtomicU64>,
) {
    let is_in = endpoint.endpoint_address() & 0x80 != 0;
    let packet = endpoint.max_packet_size().max(1);
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        // Take new commands: wait for one when nothing is in flight.
        loop {
            let command = if in_flight.is_empty() && open {
                match commands.recv() {
                    Ok(c) => c,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            } else {
                match commands.try_recv() {
                    Ok(c) => c,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        endpoint.cancel_all();
                        break;
                    }
                }
            };
            match command {
                Command::Transfer(request) => {
                    if generation.load(Ordering::Acquire) > request.submitted {
                        let _ = request.reply.send(Err(IOReturn::ABORTED));
                        continue;
                    }
                    endpoint.submit(buffer_for(&request, is_in, packet));
                    in_flight.push_back(InFlight {
                        request,
                        timed_out: false,
                        aborted: false,
                    });
                }
                Command::Abort => {
                    for t in &mut in_flight {
                        t.aborted = true;
                    }
                    endpoint.cancel_all();
                }
            }
        }
        if in_flight.is_empty() {
            continue;
        }
        let now = Instant::now();
        let wait = in_flight
            .iter()
            .filter(|t| !t.timed_out && !t.aborted)
            .filter_map(|t| t.request.deadline)
            .min()
            .map_or(Duration::from_millis(20), |d| {
                d.saturating_duration_since(now)
                    .min(Duration::from_millis(20))
            });
        match endpoint.wait_next_complete(wait) {
            Some(completion) => {
                let Some(t) = in_flight.pop_front() else {
                    continue;
                };
                finish(&mut endpoint, &mut in_flight, t, completion, is_in, packet);
            }
            None => {
                let now = Instant::now();
                let expired = in_flight.iter_mut().filter(|t| {
                    !t.timed_out && !t.aborted && t.request.deadline.is_some_and(|d| d <= now)
                });
                let mut any = false;
                for t in expired {
                    t.timed_out = true;
                    any = true;
                }
                if any {
                    endpoint.cancel_all();
                }
            }
        }
    }
}

/// Hands a completion to its caller, or submits a transfer again that was
/// cancelled only because a neighbour's time ran out.
fn finish<T: BulkOrInterrupt, D: EndpointDirection>(
    endpoint: &mut nusb::Endpoint<T, D>,
    in_flight: &mut VecDeque<InFlight>,
    t: InFlight,
    completion: Completion,
    is_in: bool,
    packet: usize,
) {
    let actual = completion.actual_len;
    let result = match completion.status {
        Ok(()) => Ok(completed(completion, &t.request, is_in)),
        Err(TransferError::Cancelled) if actual > 0 => Ok(completed(completion, &t.request, is_in)),
        Err(TransferError::Cancelled) if t.aborted => Err(IOReturn::ABORTED),
        Err(TransferError::Cancelled) if t.timed_out => Err(IOReturn::TIMEOUT),
        Err(TransferError::Cancelled) => {
            // A bystander of another transfer's timeout: again.
            endpoint.submit(buffer_for(&t.request, is_in, packet));
            in_flight.push_back(t);
            return;
        }
        Err(TransferError::Stall) => Err(IOReturn::USB_PIPE_STALLED),
        Err(TransferError::Disconnected) => Err(IOReturn::NO_DEVICE),
        Err(TransferError::Fault) => Err(IOReturn::IO_ERROR),
        Err(TransferError::InvalidArgument) => Err(IOReturn::BAD_ARGUMENT),
        Err(TransferError::Unknown(_)) => Err(IOReturn::IO_ERROR),
    };
    let _ = t.request.reply.send(result);
}

/// The buffer of a transfer: OUT data, or room for an IN transfer rounded
/// up to whole packets (usbfs wants that).
fn buffer_for(request: &Request, is_in: bool, packet: usize) -> Buffer {
    if is_in {
        let len = request.length.max(1).div_ceil(packet) * packet;
        Buffer::new(len)
    } else {
        let mut b = Buffer::new(request.data.len());
        b.extend_from_slice(&request.data);
        b
    }
}

/// What the caller gets: never more IN data than it asked for.
fn completed(completion: Completion, request: &Request, is_in: bool) -> Completed {
    let actual = completion.actual_len;
    if is_in {
        let mut data = completion.buffer.into_vec();
        data.truncate(actual.min(request.length));
        Completed {
            actual: data.len(),
            data,
        }
    } else {
        Completed {
            data: Vec::new(),
            actual: actual.min(request.data.len()),
        }
    }
}
