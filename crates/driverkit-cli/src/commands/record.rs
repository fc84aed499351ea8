//! `driverkit device record ID -o FILE` and `driverkit device trace ID`:
//! a USB device's traffic as the daemon's tap hears it (usbmon packets),
//! written to a pcapng file Wireshark reads, or printed as usbmon's text
//! interface prints it.
//!
//! The file is this process's to write (the daemon never opens a client's
//! paths). Every packet is written whole and flushed; Ctrl-C, SIGTERM or
//! `--duration` end the recording between two packets, so the file is
//! always valid.

use driverkit_wire::sync::Locked;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driverkit_core::EntryId;
use driverkit_usb::recording::Writer;
use driverkit_usb::usbmon::{self, Event, PacketRepr, Transfer};

/// The daemon's packets for a record `request`, each as its usbmon bytes.
fn packets(
    root: &Path,
    request: &serde_json::Value,
) -> Result<impl Iterator<Item = Result<Vec<u8>, String>>, String> {
    let lines = super::client(root)?.stream::<_, serde_json::Value>(request)?;
    Ok(lines.map(|line| {
        let line = line?;
        let hex = line["usbmon"]
            .as_str()
            .ok_or_else(|| format!("the daemon sent {line} where a packet was expected"))?;
        driverkit_wire::hex::decode(hex).map_err(|e| format!("a packet from the daemon: {e}"))
    }))
}

/// Runs `each` on every packet on a thread of its own until Ctrl-C,
/// SIGTERM, `duration` or the device's end; answers how many it handled.
/// A packet being handled when the end comes is finished first (the
/// thread handles each under a lock this function takes before it
/// returns, and handles none after), so no packet is cut in half.
fn until_stopped(
    root: &Path,
    request: serde_json::Value,
    duration: Option<f64>,
    mut each: impl FnMut(&[u8]) -> Result<(), String> + Send + 'static,
) -> Result<u64, String> {
    let lock = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| e.to_string())?;
    }
    let packets = packets(root, &request)?;
    let (done_tx, done) = std::sync::mpsc::channel::<Result<(), String>>();
    {
        let (stop, lock) = (stop.clone(), lock.clone());
        std::thread::spawn(move || {
            let mut result = Ok(());
            for p in packets {
                let mut handled = lock.locked();
                if stop.load(Ordering::Acquire) {
                    break;
                }
                if let Err(e) = p.and_then(|p| each(&p)) {
                    result = Err(e);
                    break;
                }
                *handled += 1;
            }
            let _ = done_tx.send(result);
        });
    }
    let deadline = duration.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let result = loop {
        match done.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => break r,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if stop.load(Ordering::Acquire) || deadline.is_some_and(|d| Instant::now() >= d) {
            stop.store(true, Ordering::Release);
            break Ok(());
        }
    };
    // Wait out a packet being handled; the thread sees the stop after it.
    stop.store(true, Ordering::Release);
    let handled = *lock.locked();
    result.map(|()| handled)
}

pub fn record(
    root: &Path,
    id: EntryId,
    out: &Path,
    duration: Option<f64>,
    restart_drivers: bool,
) -> Result<(), String> {
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut writer = Writer::new(std::io::BufWriter::new(file))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let path = out.to_path_buf();
    eprintln!("recording {id:#x} to {} (Ctrl-C ends it)", out.display());
    let request = serde_json::json!({ "op": "record", "id": id, "restart": restart_drivers });
    let written = until_stopped(root, request, duration, move |bytes| {
        let (packet, data) =
            PacketRepr::parse(bytes).map_err(|e| format!("a packet from the daemon: {e}"))?;
        writer
            .write(&packet, data)
            .map_err(|e| format!("{}: {e}", path.display()))
    })?;
    eprintln!("{written} packets in {}", out.display());
    Ok(())
}

pub fn trace(root: &Path, id: EntryId, duration: Option<f64>) -> Result<(), String> {
    let request = serde_json::json!({ "op": "record", "id": id });
    until_stopped(root, request, duration, move |bytes| {
        let (packet, data) =
            PacketRepr::parse(bytes).map_err(|e| format!("a packet from the daemon: {e}"))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", text_line(&packet, data)).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())
    })
    .map(drop)
}

/// One packet as usbmon's text interface prints it
/// (`Documentation/usb/usbmon.rst`): URB tag, time in microseconds, event,
/// `Ci:BUS:DEV:EP` (type and direction), then the setup packet (`s ...`)
/// or the status, the length, and the first bytes of data (`=`), or `<` /
/// `>` when none.
pub fn text_line(p: &PacketRepr, data: &[u8]) -> String {
    let kind = match p.transfer {
        Transfer::Isochronous => 'Z',
        Transfer::Interrupt => 'I',
        Transfer::Control => 'C',
        Transfer::Bulk => 'B',
    };
    let dir = if p.endpoint & 0x80 != 0 { 'i' } else { 'o' };
    let event = match p.event {
        Event::Submit => 'S',
        Event::Complete => 'C',
        Event::Error => 'E',
    };
    let micros = (p.seconds.rem_euclid(4295)) * 1_000_000 + i64::from(p.microseconds);
    let mut line = format!(
        "{:016x} {micros} {event} {kind}{dir}:{}:{:03}:{}",
        p.id,
        p.bus,
        p.device,
        p.endpoint & 0x0f
    );
    match p.setup {
        Some(s) => line.push_str(&format!(
            " s {:02x} {:02x} {:04x} {:04x} {:04x}",
            s[0],
            s[1],
            u16::from_le_bytes([s[2], s[3]]),
            u16::from_le_bytes([s[4], s[5]]),
            u16::from_le_bytes([s[6], s[7]])
        )),
        None => line.push_str(&format!(" {}", p.status)),
    }
    line.push_str(&format!(" {}", p.urb_length));
    if data.is_empty() {
        line.push_str(if p.endpoint & 0x80 != 0 { " <" } else { " >" });
    } else {
        line.push_str(" =");
        for chunk in data.chunks(4).take(8) {
            line.push(' ');
            for b in chunk {
                line.push_str(&format!("{b:02x}"));
            }
        }
    }
    if p.status == usbmon::STALL {
        line.push_str(" (stall)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_usbmon_text_does() {
        let p = PacketRepr {
            id: 0xffff_8800_0000_0001,
            event: Event::Complete,
            transfer: Transfer::Interrupt,
            endpoint: 0x81,
            device: 2,
            bus: 1,
            setup: None,
            seconds: 0,
            microseconds: 1234,
            status: 0,
            urb_length: 8,
            captured: 8,
            interval: 10,
        };
        assert_eq!(
            text_line(&p, &[0, 0, 0x0b, 0, 0, 0, 0, 0]),
            "ffff880000000001 1234 C Ii:1:002:1 0 8 = 00000b00 00000000"
        );
        let s = PacketRepr {
            event: Event::Submit,
            transfer: Transfer::Control,
            endpoint: 0x80,
            setup: Some([0x80, 6, 0, 1, 0, 0, 18, 0]),
            status: usbmon::IN_PROGRESS,
            urb_length: 18,
            captured: 0,
            ..p
        };
        assert_eq!(
            text_line(&s, &[]),
            "ffff880000000001 1234 S Ci:1:002:0 s 80 06 0100 0000 0012 18 <"
        );
    }
}
