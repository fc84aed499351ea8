//! The asynchronous requests dexts make of their providers, and the
//! memory regions they hand each other, tracked until completed.

use super::*;

/// An asynchronous request a dext made of a family (`ReadAsync`, a USB
/// transfer): the core's number for it, from [`System::track_request`]
/// until the family finishes it or the device leaves. It never reaches the
/// dext, which knows the request by its completion action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

/// An asynchronous request a dext made, not yet completed.
pub(super) struct PendingRequest {
    device: EntryId,
    server: Arc<UserServer>,
    /// The dext's ID for its completion action.
    action: u64,
}

/// The asynchronous requests in flight, and how many each dext has, kept
/// together so that the per-dext limit costs no scan.
#[derive(Default)]
pub(super) struct Requests {
    by_id: HashMap<RequestId, PendingRequest>,
    per_server: HashMap<ServerId, usize>,
}

impl Requests {
    pub(super) fn of_server(&self, server: ServerId) -> usize {
        self.per_server.get(&server).copied().unwrap_or(0)
    }

    pub(super) fn insert(&mut self, id: RequestId, request: PendingRequest) {
        *self.per_server.entry(request.server.id).or_default() += 1;
        self.by_id.insert(id, request);
    }

    pub(super) fn remove(&mut self, id: RequestId) -> Option<PendingRequest> {
        let request = self.by_id.remove(&id)?;
        if let Some(n) = self.per_server.get_mut(&request.server.id) {
            *n -= 1;
            if *n == 0 {
                self.per_server.remove(&request.server.id);
            }
        }
        Some(request)
    }

    /// Takes out every request to one of `devices`.
    pub(super) fn remove_for(&mut self, devices: &[EntryId]) -> Vec<PendingRequest> {
        let ids: Vec<RequestId> = self
            .by_id
            .iter()
            .filter(|(_, r)| devices.contains(&r.device))
            .map(|(k, _)| *k)
            .collect();
        ids.into_iter().filter_map(|k| self.remove(k)).collect()
    }
}

impl Inner {
    /// The region `server` registered as `memory`, waiting for it (outside
    /// the state lock) if it is still on its way.
    pub(crate) fn region(
        &self,
        server: ServerId,
        memory: u64,
    ) -> IOResult<Arc<driverkit_wire::shm::SharedMemory>> {
        self.process(server)?.memory(memory)
    }

    /// Hands `shm` to process `server`; the ID a call's answer names it by.
    pub(crate) fn give_region(
        &self,
        server: ServerId,
        shm: std::os::fd::BorrowedFd<'_>,
    ) -> IOResult<u64> {
        self.process(server)?.give_memory(shm)
    }

    /// Process `server`, out of the state lock.
    pub(super) fn process(&self, server: ServerId) -> IOResult<Arc<UserServer>> {
        self.lock()
            .servers
            .get(&server)
            .map(|s| s.server.clone())
            .ok_or(IOReturn::OFFLINE)
    }

    /// Records an asynchronous request of `server` to `device`, to complete
    /// through `action`: by `finish_request`, or with `kIOReturnAborted` when
    /// the device leaves first.
    pub(crate) fn track_request(
        &self,
        server: ServerId,
        device: EntryId,
        action: u64,
    ) -> IOResult<RequestId> {
        let mut st = self.lock();
        let server = st
            .servers
            .get(&server)
            .map(|s| s.server.clone())
            .ok_or(IOReturn::OFFLINE)?;
        if st.requests.of_server(server.id) >= crate::user_server::limits::PENDING_REQUESTS {
            tracing::warn!(
                "limit    {server:?}: {} asynchronous requests already pending; refused",
                crate::user_server::limits::PENDING_REQUESTS
            );
            return Err(IOReturn::NO_RESOURCES);
        }
        st.next_request += 1;
        let request = RequestId(st.next_request);
        st.requests.insert(
            request,
            PendingRequest {
                device,
                server,
                action,
            },
        );
        Ok(request)
    }

    /// Completes a tracked request, unless it was already aborted.
    pub(crate) fn finish_request(&self, request: RequestId, status: IOReturn, actual: u64) {
        let request = self.lock().requests.remove(request);
        if let Some(request) = request {
            complete(&request, status, actual);
        }
    }

    /// True while `request` waits for its completion.
    pub(crate) fn is_pending(&self, request: RequestId) -> bool {
        self.lock().requests.by_id.contains_key(&request)
    }
}

/// Runs the dext's completion action of `request` with `status`.
pub(super) fn complete(request: &PendingRequest, status: IOReturn, actual: u64) {
    let server = io_user_server_interface::Proxy {
        caller: &*request.server,
        object: ObjectId::USER_SERVER,
        flags: 0,
    };
    if let Err(e) = server.complete_async(request.action, status.0, actual) {
        tracing::debug!(
            "completion of a request to {:?} not delivered: {e}",
            request.server
        );
    }
}
