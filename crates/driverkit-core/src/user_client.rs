//! `IOServiceOpen`: who may open a service, and the connection the daemon
//! brokers between the app and the dext.
//!
//! The daemon identifies the app by the peer credentials of its control
//! connection: its PID, hence its executable, hence the app that executable
//! sits in (`NAME.app/Contents/MacOS/…`) and that app's entitlements. The
//! open is allowed when they name the dext (`userclient-access`) or the
//! dext allows any app (`allow-any-userclient-access`); otherwise it is
//! `kIOReturnNotPermitted`. Then the service's `NewUserClient(type)` names
//! the personality dictionary of the user client (`UserClientProperties`
//! by default), which is created in the dext's process and started, and
//! two socket pairs are made: one end of each goes to the dext, the other
//! to the app. From there on the daemon is not on the calls' path; it keeps
//! the app's control connection as the connection's lifetime, and when it
//! ends (IOServiceClose, or the app's death) the user client stops.

use std::os::fd::{AsFd, OwnedFd};

use driverkit_bundle::Entitlements;
use driverkit_wire::codec::{Encoder, Wire};
use driverkit_wire::interfaces::{
    io_service_interface, io_user_server_interface, IOServiceInterface, IOUserServerInterface,
};
use driverkit_wire::user_client::{ROLE_CALLS, ROLE_NOTIFICATIONS};
use driverkit_wire::{IOReturn, ObjectId};

use crate::registry::{EntryId, Hosting};
use crate::Core;

/// Why an open was refused: the status the app gets and, for a refusal
/// the app can act on (its entitlements, its signature), the reason in
/// words, which the app gets too (`IOServiceOpen`'s answer).
#[derive(Debug)]
pub struct Refusal {
    pub status: IOReturn,
    pub reason: Option<String>,
}

impl From<IOReturn> for Refusal {
    fn from(status: IOReturn) -> Refusal {
        Refusal {
            status,
            reason: None,
        }
    }
}

impl Refusal {
    fn not_permitted(reason: String) -> Refusal {
        tracing::warn!("open     refused: {reason}");
        Refusal {
            status: IOReturn::NOT_PERMITTED,
            reason: Some(reason),
        }
    }
}

/// An open connection: the user client's entry and the app's two sockets.
pub struct Opened {
    pub user_client: EntryId,
    pub calls: OwnedFd,
    pub notifications: OwnedFd,
}

impl Core {
    /// `IOServiceOpen(service, type)` for the control connection's `peer`.
    pub fn open_user_client(
        &self,
        service: EntryId,
        kind: u32,
        peer: &crate::peer::Peer,
    ) -> Result<Opened, Refusal> {
        let pid = peer.pid;
        let (properties, hosting) = {
            let st = self.inner.lock();
            let e = st.registry.get(service).ok_or(IOReturn::NOT_FOUND)?;
            // Registered is enough, as in IOKit: `register_service` in
            // Start is what makes a service visible to apps.
            if !e.state.registered || e.state.terminating {
                return Err(IOReturn::NOT_READY.into());
            }
            let hosting: Hosting = e.hosting.clone().ok_or(IOReturn::UNSUPPORTED)?;
            (e.properties.clone(), hosting)
        };
        self.check_access(&hosting.bundle, peer)?;
        let server = self.inner.server_of(service).ok_or(IOReturn::NOT_READY)?;
        // The driver names which of its personality's dictionaries
        // describes this type's user client.
        let key = io_service_interface::Proxy {
            caller: &*server,
            object: service.object(),
            flags: 0,
        }
        .new_user_client(kind)?;
        let uc = properties
            .get(&key)
            .and_then(plist::Value::as_dictionary)
            .ok_or(IOReturn::UNSUPPORTED)?;
        let user_class = uc
            .get("IOUserClass")
            .and_then(plist::Value::as_string)
            .ok_or(IOReturn::UNSUPPORTED)?
            .to_owned();
        let io_class = uc
            .get("IOClass")
            .and_then(plist::Value::as_string)
            .unwrap_or("IOUserUserClient")
            .to_owned();
        let mut props = uc.clone();
        props.insert("IOUserClientType".into(), i64::from(kind).into());
        props.insert("IOUserClientCreator".into(), format!("pid {pid}").into());
        props.insert("CFBundleIdentifier".into(), hosting.bundle.clone().into());
        let id = {
            let mut st = self.inner.lock();
            let id = st
                .registry
                .insert(&user_class, &io_class, props.clone(), Some(service));
            if let Some(e) = st.registry.get_mut(id) {
                e.state.matched = true;
                e.hosting = Some(Hosting {
                    personality: format!("{}/UserClientProperties", hosting.personality),
                    ..hosting.clone()
                });
            }
            id
        };
        let lifecycle = io_user_server_interface::Proxy {
            caller: &*server,
            object: ObjectId::USER_SERVER,
            flags: 0,
        };
        let client = io_service_interface::Proxy {
            caller: &*server,
            object: id.object(),
            flags: 0,
        };
        let started = lifecycle
            .create(id.object(), user_class.clone(), service.object(), props)
            .and_then(|()| client.start(service.object()));
        if let Err(e) = started {
            tracing::warn!("open     {user_class} [{id:#x}] for pid {pid} did not start: {e}");
            self.inner.terminate(id);
            return Err(e.into());
        }
        let sockets = (|| -> Result<Opened, IOReturn> {
            let (calls_app, calls_dext) =
                driverkit_wire::transport::socketpair().map_err(|_| IOReturn::NO_RESOURCES)?;
            let (notify_app, notify_dext) =
                driverkit_wire::transport::socketpair().map_err(|_| IOReturn::NO_RESOURCES)?;
            for (role, end) in [
                (ROLE_NOTIFICATIONS, &notify_dext),
                (ROLE_CALLS, &calls_dext),
            ] {
                let mut e = Encoder::new();
                id.object().encode(&mut e);
                role.encode(&mut e);
                let reply = server.call_with_fd(
                    ObjectId::USER_SERVER,
                    io_user_server_interface::CONNECT,
                    e.as_bytes(),
                    end.as_fd(),
                )?;
                driverkit_wire::decode_reply::<()>(&reply)?;
            }
            Ok(Opened {
                user_client: id,
                calls: calls_app.into_fd(),
                notifications: notify_app.into_fd(),
            })
        })();
        match sockets {
            Ok(opened) => {
                if let Some(e) = self.inner.lock().registry.get_mut(id) {
                    e.state.registered = true;
                    e.state.active = true;
                }
                tracing::info!(
                    "open     {user_class} [{id:#x}] on [{service:#x}] for pid {pid} (type {kind})"
                );
                Ok(opened)
            }
            Err(e) => {
                self.inner.terminate(id);
                Err(e.into())
            }
        }
    }

    /// `IOServiceClose`, or the app went away: the user client stops.
    pub fn close_user_client(&self, user_client: EntryId) {
        if self.inner.lock().registry.get(user_client).is_some() {
            tracing::info!("close    user client [{user_client:#x}]");
            self.inner.terminate(user_client);
        }
    }

    /// Whether `peer` may open a user client of dext `bundle`.
    fn check_access(&self, bundle: &str, peer: &crate::peer::Peer) -> Result<(), Refusal> {
        let pid = peer.pid;
        let dext = {
            let st = self.inner.lock();
            st.catalogue
                .bundles()
                .into_iter()
                .find(|b| b.identifier == bundle)
                .and_then(|b| b.entitlements.clone())
        };
        // Bundles made in code carry no entitlements and are not checked.
        let Some(dext) = dext else { return Ok(()) };
        if dext.allow_any_userclient_access {
            return Ok(());
        }
        let (developer, trusted) = self.trust();
        let app = peer
            .app(developer)
            .map_err(|e| Refusal::not_permitted(e.into()))?;
        let Some(app) = app else {
            return Err(Refusal::not_permitted(format!(
                "pid {pid} is not in an app, so nothing entitles it to {bundle}'s user clients (and the dext does not allow any app)"
            )));
        };
        // An app's entitlements are its own word: they count only when a
        // key the system trusts signed them with its executable, or in
        // developer mode.
        if !developer {
            if let Err(refusal) = driverkit_bundle::signature::verify(&app, &trusted) {
                return Err(Refusal::not_permitted(format!(
                    "pid {pid} ({}): an app's entitlements count only when the app is signed by a trusted key (driverkit build --sign, driverkit sysext trust) or in developer mode; {refusal}",
                    app.display()
                )));
            }
        }
        let allowed = Entitlements::load(
            &app.join("Contents")
                .join(driverkit_bundle::entitlements::FILE),
        )
        .is_ok_and(|e| e.userclient_access.iter().any(|b| b == bundle));
        if allowed {
            return Ok(());
        }
        Err(Refusal::not_permitted(format!(
            "pid {pid} ({}) is not entitled to {bundle}'s user clients \
             (its app's com.apple.developer.driverkit.userclient-access does not name it, \
             and the dext does not allow any app)",
            app.display()
        )))
    }
}
