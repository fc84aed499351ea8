//! Terminating a service and what stands on it, bottom-up, and what its
//! provider is offered next.

use super::*;

impl Inner {
    /// Terminates `id` and everything above it, bottom-up, then lets its
    /// provider match again (a driver went away; it is not offered the same
    /// provider again, or a driver that terminates itself would loop).
    /// Requests in flight to the departing devices complete first, with
    /// `kIOReturnAborted`, so that their drivers' Stop finds nothing pending.
    pub(crate) fn terminate(&self, id: EntryId) {
        self.end(id, Offer::Others);
    }

    /// `terminate`, where `offer` says whether the provider's next match
    /// may pick the same personality again.
    pub(super) fn end(&self, id: EntryId, offer: Offer) {
        // Marked first: from here nothing attaches below `id` (publishing
        // under a terminating entry fails), so the families hear of every
        // entry that will stop.
        let (order, provider) = {
            let mut st = self.lock();
            if let (Offer::Others, Some(e)) = (offer, st.registry.get(id).cloned()) {
                decline(&mut st.registry, &e);
            }
            let order = st.registry.subtree_bottom_up(id);
            for e in &order {
                if let Some(entry) = st.registry.get_mut(*e) {
                    entry.state.terminating = true;
                    entry.state.active = false;
                }
            }
            (order, st.registry.get(id).and_then(|e| e.provider))
        };
        for family in self.families.iter() {
            family.departing(&self.system, &order);
        }
        let aborted: Vec<PendingRequest> = {
            let mut st = self.lock();
            st.requests.remove_for(&order)
        };
        for request in aborted {
            complete(&request, IOReturn::ABORTED, 0);
        }
        for e in order {
            self.stop_and_remove(e);
        }
        if let Some(p) = provider {
            let alive = self
                .lock()
                .registry
                .get(p)
                .is_some_and(|e| !e.state.terminating);
            if alive {
                self.schedule_match(p);
            }
        }
    }

    pub(super) fn stop_and_remove(&self, id: EntryId) {
        let (entry, server) = {
            let st = self.lock();
            let Some(e) = st.registry.get(id) else { return };
            let server = e
                .hosting
                .as_ref()
                .and_then(|h| st.servers.get(&h.server))
                .map(|s| s.server.clone());
            (e.clone(), server)
        };
        if let Some(server) = server.filter(|s| s.is_alive()) {
            let provider = entry.provider.map_or(ObjectId(0), EntryId::object);
            let service = io_service_interface::Proxy {
                caller: &*server,
                object: id.object(),
                flags: 0,
            };
            let stopped = service.stop(provider);
            tracing::info!(
                "stop     {} [{id:#x}] in pid {}: {}",
                entry.name,
                server.pid,
                stopped.map_or_else(|e| e.to_string(), |()| "ok".into())
            );
            let lifecycle = io_user_server_interface::Proxy {
                caller: &*server,
                object: ObjectId::USER_SERVER,
                flags: 0,
            };
            let freed = lifecycle.free(id.object());
            tracing::info!(
                "free     {} [{id:#x}] in pid {}: {}",
                entry.name,
                server.pid,
                freed.map_or_else(|e| e.to_string(), |()| "ok".into())
            );
            self.forget(id);
            self.release_if_idle(&server);
        } else {
            self.forget(id);
        }
    }

    /// Removes `id` from the registry and the families.
    pub(super) fn forget(&self, id: EntryId) {
        {
            let mut st = self.lock();
            st.registry.remove(id);
            st.plugged.remove(&id);
        }
        self.families_forget(id);
        self.emit(Event::Removed { service: id });
    }

    /// Every family forgets `id`, which left the registry.
    pub(super) fn families_forget(&self, id: EntryId) {
        for family in self.families.iter() {
            family.removed(&self.system, id);
        }
    }

    pub(crate) fn schedule_terminate(&self, id: EntryId) {
        self.spawn_job("terminate", move |d| d.terminate(id));
    }
}

/// Whom a terminated driver's provider is offered to next.
#[derive(Clone, Copy)]
pub(super) enum Offer {
    /// Every personality but the departed one's (it stopped on its own or
    /// was displaced: offering it again would loop).
    Others,
    /// Every personality, the departed one's too (a restart).
    All,
}

pub(super) fn decline(registry: &mut Registry, client: &crate::registry::Entry) {
    let (Some(provider), Some(h)) = (client.provider, &client.hosting) else {
        return;
    };
    if let Some(p) = registry.get_mut(provider) {
        let key = format!("{}/{}", h.bundle, h.personality);
        if !p.declined.contains(&key) {
            p.declined.push(key);
        }
    }
}
