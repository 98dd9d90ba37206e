//! The framing shared by the broker's small append-only state files (committed offsets,
//! transaction state): each record is `u32 length | u32 CRC32C | payload`, and payloads are
//! read with a bounds-checked [`Reader`].
//!
//! Invariant: decoding never panics on hostile bytes; a frame is accepted only when it is whole,
//! within the caller's size limit, and its CRC matches.

/// Bytes before each payload: length and CRC32C.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Appends `payload` to `buf` as one frame. `max` is the caller's record size limit (a larger
/// payload is a programmer error).
pub fn put_frame(buf: &mut Vec<u8>, payload: &[u8], max: usize, what: &str) {
    assert!(payload.len() <= max, "{what} record of {} bytes exceeds the limit", payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    buf.extend_from_slice(payload);
}

/// The payload of the frame at the start of `buf` and the frame's total length, or `None` when
/// `buf` does not begin with a whole, valid frame of at most `max` payload bytes.
pub fn split_frame(buf: &[u8], max: usize) -> Option<(&[u8], usize)> {
    if buf.len() < FRAME_HEADER_BYTES {
        return None;
    }
    let len = u32::from_be_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(buf[4..8].try_into().ok()?);
    if len == 0 || len > max || buf.len() - FRAME_HEADER_BYTES < len {
        return None;
    }
    let p = &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
    (crc32c::crc32c(p) == crc).then_some((p, FRAME_HEADER_BYTES + len))
}

/// Appends a string with a u16 length prefix.
pub fn put_str16(buf: &mut Vec<u8>, s: &str) {
    assert!(s.len() <= u16::MAX as usize);
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A bounds-checked big-endian reader over one payload; `str16` refuses strings longer than
/// the limit given at construction.
pub struct Reader<'a> {
    rest: &'a [u8],
    str_max: usize,
}

impl<'a> Reader<'a> {
    /// Reads `payload`, accepting u16-prefixed strings of at most `str_max` bytes.
    pub fn new(payload: &'a [u8], str_max: usize) -> Self {
        Reader { rest: payload, str_max }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Some(a)
    }
    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    /// A big-endian i16.
    pub fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    /// A big-endian i32.
    pub fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    /// A big-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    /// A big-endian i64.
    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    /// `n` bytes of UTF-8.
    pub fn string(&mut self, n: usize) -> Option<String> {
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// A u16-prefixed UTF-8 string within the reader's limit.
    pub fn str16(&mut self) -> Option<String> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        if n > self.str_max {
            return None;
        }
        self.string(n)
    }
}
