//! Matching a provider and attaching the chosen driver: a bundle that
//! outranks a running driver, one match at a time per provider, the
//! process a personality runs in, and registerService.

use super::*;

pub(super) enum Attach {
    Started,
    Failed,
    /// The process died; crash handling owns what happens next.
    Crashed,
    /// The provider or the daemon is going away.
    Gone,
}

impl Inner {
    /// A bundle just loaded: where one of its personalities outranks the
    /// driver running on `provider` in the same match category, that driver
    /// stops (bottom-up, as on unplug), so that matching gives the provider
    /// to the better one. IOKit would wait for the device's next plug; a
    /// developer who activates a driver for a device the system already
    /// drives (the default daemon's examples, at score 0) expects it to run
    /// now, as Windows installs a better-ranked driver on a device in use.
    pub(super) fn yield_to(&self, bundle_id: &str, provider: EntryId) {
        let displaced: Vec<(EntryId, String, i64, String, i64)> = {
            let st = self.lock();
            let Some(entry) = st.registry.get(provider) else {
                return;
            };
            if !entry.state.registered || entry.state.terminating {
                return;
            }
            let mut candidates = st.candidates_for(entry);
            candidates.retain(|c| c.driver.bundle.identifier == bundle_id);
            by_category(candidates)
                .into_iter()
                .filter_map(|(category, group)| {
                    let best = group.first()?;
                    let running = entry.clients.iter().find_map(|c| {
                        let e = st.registry.get(*c)?;
                        (e.match_category.as_deref() == Some(category.as_str())
                            && !e.state.terminating)
                            .then_some(e)
                    })?;
                    let bundle = running
                        .properties
                        .get("CFBundleIdentifier")
                        .and_then(plist::Value::as_string);
                    let score = running
                        .properties
                        .get("IOProbeScore")
                        .and_then(plist::Value::as_signed_integer)
                        .unwrap_or(0);
                    (bundle != Some(bundle_id) && best.score > score).then(|| {
                        (
                            running.id,
                            running.name.clone(),
                            score,
                            best.driver.personality.user_class.clone(),
                            best.score,
                        )
                    })
                })
                .collect()
        };
        for (client, name, score, better, better_score) in displaced {
            tracing::info!(
                "yield    {name} [{client:#x}] (score {score}) stops for {better} (score {better_score}) from {bundle_id}"
            );
            if self.lock().registry.get(client).is_some() {
                self.terminate(client);
            }
        }
    }

    pub(crate) fn schedule_match(&self, provider: EntryId) {
        self.spawn_job("matching", move |d| d.run_matching(provider));
    }

    pub(super) fn run_matching(&self, provider: EntryId) {
        {
            let mut st = self.lock();
            if st.shutting_down {
                return;
            }
            if !st.matching.insert(provider) {
                st.rematch.insert(provider);
                return;
            }
        }
        loop {
            self.match_once(provider);
            let mut st = self.lock();
            if !st.rematch.remove(&provider) || st.shutting_down {
                st.matching.remove(&provider);
                return;
            }
        }
    }

    pub(super) fn match_once(&self, provider: EntryId) {
        let groups = {
            let st = self.lock();
            let Some(entry) = st.registry.get(provider) else {
                return;
            };
            if !entry.state.registered || entry.state.terminating {
                return;
            }
            let candidates = st.candidates_for(entry);
            let occupied: HashSet<&str> = entry
                .clients
                .iter()
                .filter_map(|c| st.registry.get(*c)?.match_category.as_deref())
                .collect();
            by_category(candidates)
                .into_iter()
                .filter(|(cat, _)| !occupied.contains(cat.as_str()))
                .collect::<Vec<_>>()
        };
        for (category, group) in groups {
            for candidate in group {
                match self.attach(provider, &candidate, &category) {
                    Attach::Started => break,
                    Attach::Failed => continue,
                    Attach::Crashed => break,
                    Attach::Gone => return,
                }
            }
        }
        let unclaimed = match self.lock().registry.get_mut(provider) {
            Some(e) => {
                e.state.matched = true;
                e.clients.is_empty() && !e.state.terminating
            }
            None => false,
        };
        // What the families do with a provider no driver took.
        if unclaimed {
            for family in self.families.iter() {
                family.unclaimed(&self.system, provider);
            }
        }
    }

    pub(super) fn attach(
        &self,
        provider: EntryId,
        candidate: &Candidate,
        category: &str,
    ) -> Attach {
        let driver = &candidate.driver;
        let p = &driver.personality;
        let (id, provider_name, properties) = {
            let mut st = self.lock();
            if st.shutting_down {
                return Attach::Gone;
            }
            let Some(prov) = st.registry.get(provider) else {
                return Attach::Gone;
            };
            if prov.state.terminating {
                return Attach::Gone;
            }
            let provider_name = prov.name.clone();
            let mut properties = p.properties.clone();
            properties.insert("IOMatchedPersonality".into(), p.name.clone().into());
            properties.insert(
                "IOProbeScore".into(),
                plist::Value::Integer(candidate.score.into()),
            );
            properties.insert("IOMatchCategory".into(), category.into());
            let chain = self.families.chain(&p.io_class);
            let family = self.families.owner(&chain);
            let id = st.registry.insert_with_chain(
                &p.user_class,
                chain,
                properties.clone(),
                Some(provider),
                family,
            );
            if let Some(e) = st.registry.get_mut(id) {
                e.match_category = Some(category.to_owned());
                e.state.matched = true;
            }
            (id, provider_name, properties)
        };
        tracing::info!(
            "match    {} ({}) -> {provider_name} [{provider:#x}], score {}, category {category}",
            p.user_class,
            driver.key(),
            candidate.score
        );
        let server = match self.server_for(driver) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("launch   {} failed: {e}", driver.bundle.identifier);
                self.lock().registry.remove(id);
                self.record_crash(&driver.key(), provider, &e.to_string());
                return Attach::Crashed;
            }
        };
        {
            let mut st = self.lock();
            if let Some(e) = st.registry.get_mut(id) {
                e.hosting = Some(Hosting {
                    server: server.id,
                    pid: server.pid,
                    bundle: driver.bundle.identifier.clone(),
                    personality: p.name.clone(),
                });
            }
            if let Some(slot) = st.servers.get_mut(&server.id) {
                slot.reserved -= 1;
            }
        }
        // create (init) and start travel together; see `Batch`.
        let began = Instant::now();
        let batch = Batch::new(&server);
        let lifecycle = io_user_server_interface::Proxy {
            caller: &batch,
            object: ObjectId::USER_SERVER,
            flags: 0,
        };
        let service = io_service_interface::Proxy {
            caller: &batch,
            object: id.object(),
            flags: 0,
        };
        let _ = lifecycle.create(
            id.object(),
            p.user_class.clone(),
            provider.object(),
            properties,
        );
        let _ = service.start(provider.object());
        let mut results = batch.finish().into_iter();
        let (created, started) = (
            results.next().unwrap_or(Err(IOReturn::INTERNAL_ERROR)),
            results.next(),
        );
        if let Err(e) = created {
            if !server.is_alive() {
                return Attach::Crashed;
            }
            tracing::warn!(
                "init     {} [{id:#x}] in pid {} failed: {e}",
                p.user_class,
                server.pid
            );
            self.discard(id, &server);
            return Attach::Failed;
        }
        match started.unwrap_or(Err(IOReturn::INTERNAL_ERROR)) {
            Ok(()) => {
                let took = began.elapsed();
                let active = match self.lock().registry.get_mut(id) {
                    Some(e) if !e.state.terminating => {
                        e.state.active = true;
                        true
                    }
                    _ => false,
                };
                tracing::info!(
                    "start    {} [{id:#x}] on {provider_name} in pid {}: ok ({:.1} ms)",
                    p.user_class,
                    server.pid,
                    took.as_secs_f64() * 1e3
                );
                if active {
                    self.emit(Event::Started {
                        service: id,
                        provider,
                        pid: server.pid,
                        at: Instant::now(),
                    });
                }
                Attach::Started
            }
            Err(_) if !server.is_alive() => Attach::Crashed,
            Err(e) => {
                tracing::warn!(
                    "start    {} [{id:#x}] on {provider_name} in pid {}: failed with {e}; trying the next candidate",
                    p.user_class,
                    server.pid
                );
                let lifecycle = io_user_server_interface::Proxy {
                    caller: &*server,
                    object: ObjectId::USER_SERVER,
                    flags: 0,
                };
                let _ = lifecycle.free(id.object());
                self.discard(id, &server);
                Attach::Failed
            }
        }
    }

    /// Removes a service that never started, remembers that its driver
    /// declined the provider, and lets its process go if it hosts nothing
    /// else.
    /// The process hosting service `id`, if a dext hosts it.
    pub(crate) fn server_of(&self, id: EntryId) -> Option<Arc<UserServer>> {
        let st = self.lock();
        let server = st.registry.get(id)?.hosting.as_ref()?.server;
        st.servers.get(&server).map(|s| s.server.clone())
    }

    pub(super) fn discard(&self, id: EntryId, server: &Arc<UserServer>) {
        {
            let mut st = self.lock();
            if let Some(e) = st.registry.remove(id) {
                decline(&mut st.registry, &e);
            }
        }
        self.families_forget(id);
        self.emit(Event::Removed { service: id });
        self.release_if_idle(server);
    }

    /// A process for `driver`: a shared one for `IOUserServerOneProcess`,
    /// otherwise a new one. The returned server is reserved once.
    pub(super) fn server_for(
        &self,
        driver: &crate::matching::Driver,
    ) -> Result<Arc<UserServer>, CoreError> {
        let p = &driver.personality;
        // Two attaches must not both start "the" shared process of a
        // server name; unshared processes start in parallel.
        let _spawning = p.one_process.then(|| self.spawn_lock.locked());
        if p.one_process {
            let mut st = self.lock();
            let shared = st.servers.values_mut().find(|s| {
                s.server.one_process
                    && s.server.name == p.server_name
                    && s.server.bundle == driver.bundle.identifier
                    && s.server.is_alive()
                    && !s.server.exit_requested()
            });
            if let Some(slot) = shared {
                slot.reserved += 1;
                return Ok(slot.server.clone());
            }
        }
        let id = {
            let mut st = self.lock();
            let id = st.next_server;
            st.next_server = id.next();
            id
        };
        let server = UserServer::spawn(
            Launch {
                id,
                name: &p.server_name,
                bundle: &driver.bundle.identifier,
                executable: &driver.bundle.executable,
                bundle_path: &driver.bundle.path,
                sandbox: &self.sandbox,
                one_process: p.one_process,
                call_timeout: self.config.call_timeout,
                limits: crate::sandbox::Limits::asked(
                    &p.properties,
                    self.config.sandbox.max,
                    &p.server_name,
                ),
            },
            self.system.weak(),
        )
        .map_err(|error| CoreError::Launch {
            executable: driver.bundle.executable.clone(),
            error,
        })?;
        tracing::info!(
            "launch   {} pid {} ({})",
            p.server_name,
            server.pid,
            driver.bundle.executable.display()
        );
        self.lock().servers.insert(
            id,
            ServerSlot {
                server: server.clone(),
                reserved: 1,
            },
        );
        Ok(server)
    }

    pub(super) fn release_if_idle(&self, server: &Arc<UserServer>) {
        let idle = {
            let st = self.lock();
            let hosting = st
                .registry
                .iter()
                .any(|e| e.hosting.as_ref().is_some_and(|h| h.server == server.id));
            let reserved = st.servers.get(&server.id).is_some_and(|s| s.reserved > 0);
            !hosting && !reserved
        };
        if idle && server.is_alive() && !server.exit_requested() {
            server.request_exit();
        }
    }

    pub(crate) fn set_registered(&self, id: EntryId) {
        let mut st = self.lock();
        let Some(e) = st.registry.get_mut(id) else {
            return;
        };
        e.state.registered = true;
        let name = e.name.clone();
        drop(st);
        tracing::debug!("register {name} [{id:#x}]");
        self.schedule_match(id);
    }
}
