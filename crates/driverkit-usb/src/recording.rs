//! Recordings of a USB device's traffic: pcapng files whose packets are
//! usbmon's (`LINKTYPE_USB_LINUX_MMAPPED`, 220), what Linux's usbmon
//! captures hold and Wireshark, tshark and umockdev read. The container is
//! the pcap-file crate's; each packet is a [`usbmon::PacketRepr`] and its
//! data.
//!
//! [`Writer`] writes one section with one interface; every packet is a
//! whole block, so a recording stopped at any point is a valid file.
//! [`read`] takes pcapng or classic pcap (what `tcpdump -w` writes) and
//! returns the usbmon packets in file order, numbered as Wireshark numbers
//! frames (from 1).

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader, PcapNgWriter};
use pcap_file::DataLink;

use crate::usbmon::{self, PacketRepr};

/// A pcapng file being written.
pub struct Writer<W: Write> {
    inner: PcapNgWriter<W>,
}

impl<W: Write> Writer<W> {
    /// A section header and the one usbmon interface.
    pub fn new(out: W) -> std::io::Result<Writer<W>> {
        let mut inner = PcapNgWriter::new(out).map_err(std::io::Error::other)?;
        inner
            .write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::USB_LINUX_MMAPPED,
                snaplen: 0,
                // The crate writes a packet's time in nanoseconds: say so
                // (the default, unsaid, is microseconds).
                options: vec![InterfaceDescriptionOption::IfTsResol(9)],
            })
            .map_err(std::io::Error::other)?;
        Ok(Writer { inner })
    }

    /// One packet, whole.
    pub fn write(&mut self, packet: &PacketRepr, data: &[u8]) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(usbmon::HEADER_LEN + data.len());
        packet.emit(data, &mut bytes);
        let timestamp = Duration::new(
            packet.seconds.max(0) as u64,
            (packet.microseconds.clamp(0, 999_999) as u32) * 1000,
        );
        self.inner
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp,
                original_len: bytes.len() as u32,
                data: Cow::Borrowed(&bytes),
                options: Vec::new(),
            })
            .map_err(std::io::Error::other)?;
        self.inner.get_mut().flush()
    }
}

/// A usbmon packet of a recording: its frame number (from 1, as Wireshark
/// counts), its header and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub number: u64,
    pub packet: PacketRepr,
    pub data: Vec<u8>,
}

/// The usbmon packets of a pcapng or pcap file, in order (their times are
/// the usbmon headers', whatever the container's resolution). Packets of other
/// link types are skipped (counted in frame numbers all the same); a
/// malformed file or packet is refused, naming the frame and what was
/// wrong.
pub fn read(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    match bytes.get(0..4) {
        Some([0x0a, 0x0d, 0x0d, 0x0a]) => read_pcapng(bytes),
        Some(m) if is_pcap_magic(m) => read_pcap(bytes),
        Some(m) => Err(format!(
            "neither pcapng (0a 0d 0d 0a) nor pcap: the file starts with {}",
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        )),
        None => Err(format!(
            "{} bytes: too short for a capture file",
            bytes.len()
        )),
    }
}

fn is_pcap_magic(m: &[u8]) -> bool {
    [
        [0xd4, 0xc3, 0xb2, 0xa1],
        [0xa1, 0xb2, 0xc3, 0xd4],
        [0x4d, 0x3c, 0xb2, 0xa1],
        [0xa1, 0xb2, 0x3c, 0x4d],
    ]
    .iter()
    .any(|magic| m == magic)
}

fn frame(number: u64, data: &[u8]) -> Result<Frame, String> {
    let (packet, rest) =
        PacketRepr::parse(data).map_err(|e| format!("frame {number}: usbmon packet {e}"))?;
    Ok(Frame {
        number,
        packet,
        data: rest.to_vec(),
    })
}

fn read_pcapng(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    let mut reader = PcapNgReader::new(bytes).map_err(|e| format!("pcapng: {e}"))?;
    // The link type of each interface of the current section.
    let mut interfaces: Vec<DataLink> = Vec::new();
    let mut frames = Vec::new();
    let mut number = 0u64;
    while let Some(block) = reader.next_block() {
        let block = block.map_err(|e| format!("pcapng, after frame {number}: {e}"))?;
        match block {
            Block::SectionHeader(_) => interfaces.clear(),
            Block::InterfaceDescription(i) => interfaces.push(i.linktype),
            Block::EnhancedPacket(p) => {
                number += 1;
                let usb =
                    interfaces.get(p.interface_id as usize) == Some(&DataLink::USB_LINUX_MMAPPED);
                if usb {
                    frames.push(frame(number, &p.data)?);
                }
            }
            Block::SimplePacket(_) | Block::Packet(_) => number += 1,
            _ => {}
        }
    }
    Ok(frames)
}

fn read_pcap(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    let mut reader = pcap_file::pcap::PcapReader::new(bytes).map_err(|e| format!("pcap: {e}"))?;
    if reader.header().datalink != DataLink::USB_LINUX_MMAPPED {
        return Err(format!(
            "pcap of link type {:?}: a USB recording is LINKTYPE_USB_LINUX_MMAPPED (220), what usbmon captures",
            reader.header().datalink
        ));
    }
    let mut frames = Vec::new();
    let mut number = 0u64;
    while let Some(packet) = reader.next_packet() {
        let packet = packet.map_err(|e| format!("pcap, after frame {number}: {e}"))?;
        number += 1;
        frames.push(frame(number, &packet.data)?);
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usbmon::{Event, Transfer};

    fn packet(id: u64, event: Event, data_len: u32) -> PacketRepr {
        PacketRepr {
            id,
            event,
            transfer: Transfer::Interrupt,
            endpoint: 0x81,
            device: 2,
            bus: 1,
            setup: None,
            seconds: 1_765_000_000,
            microseconds: 250_000,
            status: if event == Event::Submit {
                usbmon::IN_PROGRESS
            } else {
                0
            },
            urb_length: 8,
            captured: data_len,
            interval: 10,
        }
    }

    #[test]
    fn a_recording_reads_back_as_written_and_a_cut_one_up_to_its_cut() {
        let mut file = Vec::new();
        {
            let mut w = Writer::new(&mut file).unwrap();
            w.write(&packet(1, Event::Submit, 0), &[]).unwrap();
            w.write(&packet(1, Event::Complete, 8), &[2, 0, 11, 0, 0, 0, 0, 0])
                .unwrap();
        }
        let frames = read(&file).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].number, 2);
        assert_eq!(frames[1].packet, packet(1, Event::Complete, 8));
        assert_eq!(frames[1].data, [2, 0, 11, 0, 0, 0, 0, 0]);
        // A file cut inside its last block is refused, naming where.
        let cut = &file[..file.len() - 5];
        let e = read(cut).unwrap_err();
        assert!(e.contains("after frame 1"), "{e}");
        assert!(read(b"nope")
            .unwrap_err()
            .contains("starts with 6e 6f 70 65"));
    }
}
