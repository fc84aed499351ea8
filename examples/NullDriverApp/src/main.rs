//! NullDriverApp: finds NullDriver, opens its user client and calls each
//! method: scalars, a structure, a large structure (shared memory), an
//! asynchronous call completed by the driver's timer, and the memory the
//! driver shares. Run it while `driverkit run` is up:
//!
//!     cargo run -p null-driver-app [-- --root DIR]

use std::time::Duration;

use driverkit_app::iokit::*;
use driverkit_app::System;
use driverkit_wire::IOReturn;
use null_driver::{selector, GREETING_MEMORY};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let system = match args.iter().position(|a| a == "--root") {
        Some(i) if i + 1 < args.len() => System::at(&args[i + 1]),
        _ => System::default(),
    };
    if let Err(e) = run(&system) {
        eprintln!("NullDriverApp: {e}");
        std::process::exit(1);
    }
}

fn run(system: &System) -> Result<(), IOReturn> {
    let service = io_service_get_matching_services(system, &Matching::name("NullDriver"))?
        .into_iter()
        .next()
        .ok_or(IOReturn::NOT_FOUND)?;
    let properties = io_registry_entry_properties(system, service)?;
    let greeting = properties
        .get("NullDriverGreeting")
        .and_then(|v| v.as_string())
        .unwrap_or("nothing");
    println!("NullDriver is {service:#x}; it says \"{greeting}\"");
    let connection = io_service_open(system, service, 0)?;

    let sum = connection.call_scalar_method(selector::ADD, &[2, 40], 1)?;
    println!("ADD(2, 40)            = {}", sum[0]);

    let reversed = connection.call_struct_method(selector::REVERSE, b"stressed", 64)?;
    println!(
        "REVERSE(\"stressed\")   = \"{}\"",
        String::from_utf8_lossy(&reversed)
    );

    let big = vec![1u8; 1 << 20];
    let (checksum, _) = connection.call_method(selector::CHECKSUM, &[], &big, 2, 0)?;
    println!(
        "CHECKSUM(1 MiB of 1s) = [{}, {}] (sent as shared memory)",
        checksum[0], checksum[1]
    );

    let (tx, rx) = std::sync::mpsc::channel();
    connection.call_async_method(
        selector::DOUBLE_LATER,
        &[21, 100],
        &[],
        0,
        0,
        move |status, values| {
            let _ = tx.send((status, values));
        },
    )?;
    let (status, values) = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| IOReturn::TIMEOUT)?;
    println!(
        "DOUBLE_LATER(21)      = {:#010x} [{}] (completed by the driver's timer)",
        status.0,
        values.first().copied().unwrap_or(0)
    );

    let memory = connection.map_memory(GREETING_MEMORY, true)?;
    let mut greeting = vec![0; null_driver::GREETING.len()];
    memory.read(0, &mut greeting)?;
    println!(
        "shared memory ({} bytes, read-only) says \"{}\"",
        memory.len(),
        String::from_utf8_lossy(&greeting)
    );
    connection.close();
    Ok(())
}
