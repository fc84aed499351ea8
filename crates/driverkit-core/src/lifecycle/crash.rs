//! A dext process that ended: its services go, its clients hear of it,
//! and its personalities relaunch with backoff until they are disabled.

use super::*;

/// The crashes of one personality (`bundle/personality`) since it was last
/// quiet for `relaunch_quiet`.
pub(super) struct Crashes {
    count: u32,
    last: Instant,
}

impl Inner {
    /// Called by a server's reader thread once its process has ended. The
    /// server leaves the table last, so that `shutdown` (which waits for an
    /// empty table) sees every exit fully handled.
    pub(crate) fn server_exited(&self, server: &Arc<UserServer>, status: &str) {
        let hosted: Vec<EntryId> = {
            let st = self.lock();
            st.registry
                .iter()
                .filter(|e| e.hosting.as_ref().is_some_and(|h| h.server == server.id))
                .map(|e| e.id)
                .collect()
        };
        let crashed = !server.exit_requested() || !hosted.is_empty();
        if crashed {
            self.handle_crash(server, status, hosted);
        } else {
            tracing::info!("exit     {} pid {}: {status}", server.name, server.pid);
        }
        self.emit(Event::Exited {
            pid: server.pid,
            crashed,
        });
        self.lock().servers.remove(&server.id);
        self.changed.notify_all();
    }

    pub(super) fn handle_crash(
        &self,
        server: &Arc<UserServer>,
        status: &str,
        hosted: Vec<EntryId>,
    ) {
        let names: Vec<String> = {
            let st = self.lock();
            hosted
                .iter()
                .filter_map(|id| st.registry.get(*id))
                .map(|e| format!("{} [{:#x}]", e.name, e.id))
                .collect()
        };
        tracing::error!(
            "crash    {} pid {}: {status}; it hosted {}",
            server.name,
            server.pid,
            names.join(", ")
        );
        for id in hosted {
            // Clients of a crashed service (in other processes) stop first.
            let clients = self
                .lock()
                .registry
                .get(id)
                .map(|e| e.clients.clone())
                .unwrap_or_default();
            for c in clients {
                self.terminate(c);
            }
            let Some(entry) = self.lock().registry.remove(id) else {
                continue;
            };
            self.lock().plugged.remove(&id);
            self.families_forget(id);
            self.emit(Event::Removed { service: id });
            let Some(provider) = entry.provider else {
                continue;
            };
            self.tell_client_crashed(provider, &entry.name, id);
            if let Some(h) = &entry.hosting {
                self.record_crash(&format!("{}/{}", h.bundle, h.personality), provider, status);
            }
        }
    }

    pub(super) fn tell_client_crashed(
        &self,
        provider: EntryId,
        client_name: &str,
        client: EntryId,
    ) {
        let (provider_name, server) = {
            let st = self.lock();
            let Some(p) = st.registry.get(provider) else {
                return;
            };
            let server = p
                .hosting
                .as_ref()
                .and_then(|h| st.servers.get(&h.server))
                .map(|s| s.server.clone());
            (p.name.clone(), server)
        };
        tracing::info!(
            "client_crashed: {provider_name} [{provider:#x}] lost {client_name} [{client:#x}]"
        );
        if let Some(server) = server {
            let proxy = io_service_interface::Proxy {
                caller: &*server,
                object: provider.object(),
                flags: 0,
            };
            let _ = proxy.client_crashed(client.object(), 0);
        }
    }

    /// Counts a crash of `key` and rematches the provider: after a backoff,
    /// or at once without it once the personality is given up (so that the
    /// next candidate can try).
    pub(super) fn record_crash(&self, key: &str, provider: EntryId, reason: &str) {
        let now = Instant::now();
        let (count, given_up) = {
            let mut st = self.lock();
            let count = {
                let c = st.relaunches.entry(key.to_owned()).or_insert(Crashes {
                    count: 0,
                    last: now,
                });
                // Quiet long enough: this crash is the first of a new series.
                if now.duration_since(c.last) > self.config.relaunch_quiet {
                    c.count = 0;
                }
                c.count += 1;
                c.last = now;
                c.count
            };
            let given_up = count > self.config.relaunch_limit;
            if given_up {
                st.disabled.insert(key.to_owned());
            }
            (count, given_up)
        };
        let delay = if given_up {
            tracing::error!(
                "giving up {key}: not relaunching after {} relaunches (last failure: {reason})",
                self.config.relaunch_limit
            );
            Duration::ZERO
        } else {
            let delay = self.config.relaunch_backoff * 2u32.saturating_pow(count - 1).min(64);
            tracing::warn!(
                "relaunch {key} in {} ms (relaunch {count} of {})",
                delay.as_millis(),
                self.config.relaunch_limit
            );
            delay
        };
        // What ioreg shows of it, on the provider it crashed on.
        let mut record = plist::Dictionary::new();
        record.insert("Crashes".into(), i64::from(count).into());
        record.insert("LastReason".into(), reason.into());
        record.insert("GivenUp".into(), given_up.into());
        if !given_up {
            record.insert(
                "NextRelaunchInMs".into(),
                (delay.as_millis().min(i64::MAX as u128) as i64).into(),
            );
        }
        if let Some(e) = self.lock().registry.get_mut(provider) {
            let mut crashes = e
                .properties
                .get("DriverKitCrashes")
                .and_then(plist::Value::as_dictionary)
                .cloned()
                .unwrap_or_default();
            crashes.insert(key.to_owned(), plist::Value::Dictionary(record));
            e.properties
                .insert("DriverKitCrashes".into(), plist::Value::Dictionary(crashes));
        }
        self.spawn_job_after(delay, "relaunch", move |d| d.run_matching(provider));
    }
}
