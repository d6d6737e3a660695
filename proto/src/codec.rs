//! Frames: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! JSON keeps old and new versions talking (unknown fields are ignored) and is easy to inspect;
//! frames are small and rare, so its cost does not matter here (see docs/adr/0002). Every length is
//! checked against a maximum before anything is allocated, and decoding never panics.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame accepted by default: 16 MiB (a full desired state for 1000 replicas fits).
pub const MAX_FRAME_LEN: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("stream ended in the middle of a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, msg)?;
    let len = out.len() - 4;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the length prefix of a frame; refuses lengths over `max`.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a frame's payload (without its length prefix).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    Ok(serde_json::from_slice(payload)?)
}

/// Splits frames out of bytes that arrive in pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder { buf: Vec::new(), max }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = frame_len(prefix.try_into().expect("4 bytes"), self.max)?;
        let Some(payload) = self.buf.get(4..4 + len) else {
            return Ok(None);
        };
        let msg = decode(payload);
        self.buf.drain(..4 + len);
        msg.map(Some)
    }

    /// Call when the stream ends: leftover bytes mean a truncated frame.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Truncated(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Open, OpenKind, Request, PROTOCOL_VERSION};
    use proptest::prelude::*;

    fn open() -> Open {
        Open { version: PROTOCOL_VERSION, kind: OpenKind::Call(Request::GetNode { name: "pi-1".into() }) }
    }

    #[test]
    fn round_trip_in_pieces() {
        let frame = encode(&open(), MAX_FRAME_LEN).unwrap();
        let mut d = FrameDecoder::new(MAX_FRAME_LEN);
        for b in frame.iter().chain(frame.iter()) {
            assert!(d.finish().is_err() || d.next_frame::<Open>().unwrap().is_none());
            d.push(&[*b]);
        }
        assert_eq!(d.next_frame::<Open>().unwrap(), Some(open()));
        assert_eq!(d.next_frame::<Open>().unwrap(), Some(open()));
        assert_eq!(d.next_frame::<Open>().unwrap(), None);
        d.finish().unwrap();
    }

    #[test]
    fn oversized_frames_are_refused_before_allocating() {
        let mut d = FrameDecoder::new(1024);
        d.push(&u32::MAX.to_be_bytes());
        assert!(
            matches!(d.next_frame::<Open>(), Err(CodecError::TooLarge { len, max: 1024 }) if len == u32::MAX as usize)
        );
        assert!(matches!(encode(&"x".repeat(2000), 1024), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = FrameDecoder::new(1024);
        d.push(&[0, 0, 0, 3, b'{', b'x', b'}']);
        assert!(matches!(d.next_frame::<Open>(), Err(CodecError::Decode(_))));
        let mut d = FrameDecoder::new(1024);
        d.push(&[0, 0, 0, 9, b'{']);
        assert!(d.next_frame::<Open>().unwrap().is_none());
        assert!(matches!(d.finish(), Err(CodecError::Truncated(5))));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The decoder never panics, whatever arrives, in whatever pieces.
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
            let mut d = FrameDecoder::new(256);
            let cut = cut.min(bytes.len());
            d.push(&bytes[..cut]);
            let _ = d.next_frame::<Open>();
            d.push(&bytes[cut..]);
            while let Ok(Some(_)) = d.next_frame::<Open>() {}
            let _ = d.finish();
        }

        /// Valid frames with random bytes spliced in never panic either (the inputs look like JSON).
        #[test]
        fn mutated_frames_never_panic(pos in 4usize..200, byte in any::<u8>()) {
            let mut frame = encode(&open(), MAX_FRAME_LEN).unwrap();
            let pos = pos.min(frame.len() - 1);
            frame[pos] = byte;
            let mut d = FrameDecoder::new(MAX_FRAME_LEN);
            d.push(&frame);
            let _ = d.next_frame::<Open>();
        }
    }
}
