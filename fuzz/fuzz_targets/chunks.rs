//! Shared by the session fuzz targets: cut arbitrary input into socket calls. Each call is a
//! control byte then up to 31 bytes: bit 7 picks the direction, bit 6 adds an uncaptured
//! middle, bit 5 makes the second half of the bytes the call's captured tail.
use herdwatch_protocol::Chunk;

/// Calls `f(second_direction, chunk)` for every call in `input`; returns the last timestamp.
pub fn for_each_call(mut input: &[u8], gap_unit: usize, mut f: impl FnMut(bool, Chunk<'_>)) -> u64 {
    let mut ts = 0u64;
    while let Some((&ctl, after_ctl)) = input.split_first() {
        let len = (ctl as usize & 0x1f).min(after_ctl.len());
        let (bytes, next) = after_ctl.split_at(len);
        input = next;
        ts += 1;
        let gap = if ctl & 0x40 != 0 {
            (ctl as usize) * gap_unit
        } else {
            0
        };
        let (data, tail) = if ctl & 0x20 != 0 {
            bytes.split_at(bytes.len() / 2)
        } else {
            (bytes, &[][..])
        };
        f(
            ctl & 0x80 != 0,
            Chunk {
                data,
                total_len: bytes.len() + gap,
                timestamp_ns: ts,
                tail,
            },
        );
    }
    ts
}
