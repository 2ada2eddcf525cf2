//! Arbitrary bytes into `BatchView::decode`, frame after frame, with a bounded maximum
//! batch length. Decoding must never panic, and neither may anything done with a batch
//! that decoded: iterating its records, asking its header for the next offset.
//!
//! Input: one control byte, then the bytes to decode. Control bits:
//! * 0-1: the maximum batch length (52 bytes, 4 KiB, 64 KiB or 1 MiB);
//! * 2: before decoding, rewrite the CRC of every frame the bytes describe, so the
//!   fuzzer gets past the checksum and explores the record framing behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lungfish_log::BatchView;

/// Size of the fixed batch header (see the crate documentation of lungfish-log).
const HEADER_LEN: usize = 52;
const MAX_BATCH: [usize; 4] = [HEADER_LEN, 4096, 64 * 1024, 1 << 20];

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

/// Rewrites the CRC of each frame that fits, walking by the declared lengths.
fn fix_crcs(bytes: &mut [u8]) {
    let mut pos = 0usize;
    while bytes.len() - pos >= HEADER_LEN {
        let frame_len = 12 + u32_at(bytes, pos + 4) as usize;
        if frame_len < HEADER_LEN || bytes.len() - pos < frame_len {
            return;
        }
        let crc = crc32c::crc32c(&bytes[pos + 12..pos + frame_len]);
        bytes[pos + 8..pos + 12].copy_from_slice(&crc.to_le_bytes());
        pos += frame_len;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let max = MAX_BATCH[(ctl & 3) as usize];
    let mut bytes = rest.to_vec();
    if ctl & 4 != 0 {
        fix_crcs(&mut bytes);
    }
    let mut pos = 0usize;
    while pos < bytes.len() {
        let view = match BatchView::decode(&bytes[pos..], max) {
            Ok(view) => view,
            Err(_) => return,
        };
        let h = *view.header();
        let frame_len = view.frame_len();
        assert!(frame_len >= HEADER_LEN, "frame of {frame_len} bytes");
        assert!(
            frame_len <= max,
            "frame of {frame_len} bytes above the maximum {max}"
        );
        assert!(frame_len <= bytes.len() - pos, "frame runs past the input");
        assert_eq!(frame_len as u64, h.frame_len());
        // The records: as many as the header says, contiguous offsets, and exactly
        // filling the frame.
        let mut count = 0u32;
        let mut framed = 0usize;
        let mut expected = Some(h.base_offset);
        for (offset, record) in view.records() {
            assert_eq!(Some(offset), expected, "record {count} has offset {offset}");
            expected = offset.checked_add(1);
            framed += 4 + record.len();
            count += 1;
        }
        assert_eq!(count, h.record_count, "records yielded vs header count");
        assert_eq!(
            HEADER_LEN + framed,
            frame_len,
            "records do not fill the frame"
        );
        let _ = h.next_offset();
        // A frame decodes the same on its own, and the frame cut short does not decode.
        let alone = BatchView::decode(&bytes[pos..pos + frame_len], max).expect("frame alone");
        assert_eq!(*alone.header(), h);
        if frame_len > HEADER_LEN {
            assert!(BatchView::decode(&bytes[pos..pos + frame_len - 1], max).is_err());
        }
        pos += frame_len;
    }
});
