//! `driverkit call SERVICE SELECTOR`: pokes a driver's user client from the
//! shell, through `driverkit-app` as an app would (and so only where the
//! driver admits any app, or this binary sits in an app entitled to it).

use std::path::Path;

use clap::Args;
use driverkit_app::iokit::{io_service_get_matching_services, io_service_open, Matching};
use driverkit_app::System;

#[derive(Args)]
pub struct CallArgs {
    /// The service: a registry entry ID, or its name (the dext's IOUserClass).
    service: String,
    /// The method's selector.
    selector: u64,
    /// A scalar input (repeatable, at most 16).
    #[arg(long = "scalar", value_name = "N")]
    scalars: Vec<u64>,
    /// The structure input, as hex.
    #[arg(long = "struct", value_name = "HEX")]
    structure: Option<String>,
    /// How many scalars the method returns.
    #[arg(long, default_value_t = 0)]
    scalar_out: u32,
    /// The most structure bytes the method may return.
    #[arg(long, default_value_t = 0)]
    struct_out: u32,
    /// An asynchronous method: wait for its completion and print it.
    #[arg(long = "async")]
    asynchronous: bool,
    /// The user client type (IOServiceOpen's type).
    #[arg(long = "type", default_value_t = 0)]
    kind: u32,
}

pub fn call(root: &Path, args: CallArgs) -> Result<(), String> {
    // IOKit's API answers kIOReturnNotReady without a daemon; a person at
    // a shell is told what that means and what to do.
    super::client(root)?;
    let system = System::at(root);
    let service = match super::parse_id(&args.service) {
        Ok(id) => id.raw(),
        Err(_) => io_service_get_matching_services(&system, &Matching::name(&args.service))
            .map_err(|e| format!("finding {}: {e}", args.service))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("no service named {:?} is registered", args.service))?,
    };
    let structure = match &args.structure {
        Some(hex) => driverkit_wire::hex::decode(hex).map_err(|e| format!("--struct: {e}"))?,
        None => Vec::new(),
    };
    let connection = io_service_open(&system, service, args.kind).map_err(|e| {
        match driverkit_app::iokit::last_open_refusal() {
            Some(why) => format!("IOServiceOpen({service:#x}): {e}: {why}"),
            None => format!("IOServiceOpen({service:#x}): {e}"),
        }
    })?;
    let (scalars, bytes) = if args.asynchronous {
        let (tx, rx) = std::sync::mpsc::channel();
        let immediate = connection
            .call_async_method(
                args.selector,
                &args.scalars,
                &structure,
                args.scalar_out,
                args.struct_out,
                move |status, values| {
                    let _ = tx.send((status, values));
                },
            )
            .map_err(|e| refused(args.selector, e))?;
        let (status, values) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .map_err(|_| "no completion within 60 s".to_string())?;
        println!("completion: {status} {values:?}");
        immediate
    } else {
        connection
            .call_method(
                args.selector,
                &args.scalars,
                &structure,
                args.scalar_out,
                args.struct_out,
            )
            .map_err(|e| refused(args.selector, e))?
    };
    println!("scalars: {scalars:?}");
    println!("struct: {}", driverkit_wire::hex::encode(&bytes, " "));
    connection.close();
    Ok(())
}

/// The call's failure; for a refused argument, where to learn why.
fn refused(selector: u64, e: driverkit_wire::IOReturn) -> String {
    match driverkit_app::iokit::last_call_refusal() {
        // The driver's own words: what the method expects.
        Some(why) => format!("selector {selector}: {e}: {why}"),
        None if e == driverkit_wire::IOReturn::BAD_ARGUMENT => format!(
            "selector {selector}: {e}: the driver refused the call's shape (an unknown selector, or other scalar counts or structure sizes than it expects)"
        ),
        None => format!("selector {selector}: {e}"),
    }
}
