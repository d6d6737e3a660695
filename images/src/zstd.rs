//! zstd streams (`…layer.v1.tar+zstd`), decoded in pure Rust with a bounded window.
//!
//! A layer may hold several frames (zstd:chunked writes one per file group, plus skippable frames
//! with its table of contents); they are decoded one after another as one stream. The frame's
//! window is what a decoder must hold in memory, and the frame header names it: a hostile layer
//! could ask for gigabytes, so anything above [`MAX_WINDOW`] is refused before allocating. The
//! blob's digest and the layer's diff_id are checked by the caller as for gzip.

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use std::io::{self, BufRead, Read};

/// The largest window a layer may ask for: 32 MiB. zstd's levels 1–19 use at most 8 MiB; levels
/// 20–21 (`--ultra`) 32 MiB. Level 22 and `--long=27` (128 MiB) are refused: a board with 512 MiB
/// would spend a quarter of it on one layer.
pub const MAX_WINDOW: u64 = 32 << 20;

/// The zstd frame's magic number, as it starts a stream.
pub const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Reads the decompressed bytes of every frame in `src`, in order.
pub struct ZstdReader<R: BufRead> {
    src: R,
    dec: FrameDecoder,
    /// A frame is being decoded.
    in_frame: bool,
    frames: u64,
}

impl<R: BufRead> ZstdReader<R> {
    pub fn new(src: R) -> Self {
        let mut dec = FrameDecoder::new();
        dec.set_max_window_size(MAX_WINDOW);
        ZstdReader { src, dec, in_frame: false, frames: 0 }
    }

    /// Starts the next frame, skipping skippable ones; false at the end of the input.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.src.fill_buf()?.is_empty() {
                if self.frames == 0 {
                    return Err(invalid("empty zstd stream".into()));
                }
                return Ok(false);
            }
            match self.dec.reset(&mut self.src) {
                Ok(()) => {
                    self.frames += 1;
                    return Ok(true);
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    let skipped = io::copy(&mut (&mut self.src).take(u64::from(length)), &mut io::sink())?;
                    if skipped != u64::from(length) {
                        return Err(invalid("zstd skippable frame cut short".into()));
                    }
                }
                Err(FrameDecoderError::WindowSizeTooBig { requested, max }) => {
                    return Err(invalid(format!(
                        "zstd frame needs a {} MiB window, more than the {} MiB allowed (compress at level 21 or \
                         below, without --long)",
                        requested >> 20,
                        max >> 20
                    )))
                }
                Err(e) => return Err(invalid(format!("invalid zstd frame: {e}"))),
            }
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            if self.dec.can_collect() == 0 && !self.dec.is_finished() {
                self.dec
                    .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| invalid(format!("invalid zstd data: {e}")))?;
                continue;
            }
            if self.dec.can_collect() > 0 {
                return self.dec.read(buf);
            }
            // Finished and drained: on to the next frame, if any.
            self.in_frame = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    /// `printf 'hello, bramble\n' | zstd -19 --no-check | xxd -i` (one frame, one raw block).
    const HELLO: &[u8] = &[
        0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x68, 0x79, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x2c, 0x20, 0x62, 0x72,
        0x61, 0x6d, 0x62, 0x6c, 0x65, 0x0a,
    ];

    fn decode(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ZstdReader::new(BufReader::with_capacity(7, bytes)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn one_frame_decodes() {
        assert_eq!(decode(HELLO).unwrap(), b"hello, bramble\n");
    }

    #[test]
    fn frames_follow_each_other_and_skippable_ones_are_skipped() {
        let mut s = HELLO.to_vec();
        // A skippable frame (magic 0x184D2A50, 5 bytes of payload) between two frames.
        s.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 5, 0, 0, 0, 1, 2, 3, 4, 5]);
        s.extend_from_slice(HELLO);
        assert_eq!(decode(&s).unwrap(), b"hello, bramble\nhello, bramble\n");
    }

    #[test]
    fn a_huge_window_is_refused_before_allocating() {
        // Frame header: descriptor 0x00 (no single segment), window descriptor 0xa8 → exponent 21
        // + 10 = 2^31 bytes (2 GiB).
        let s = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa8, 0x01, 0x00, 0x00];
        let e = decode(&s).unwrap_err();
        assert!(e.to_string().contains("2048 MiB window, more than the 32 MiB allowed"), "{e}");
    }

    #[test]
    fn garbage_empty_and_cut_streams_are_errors() {
        assert!(decode(b"").unwrap_err().to_string().contains("empty zstd stream"));
        assert!(decode(b"not zstd at all").unwrap_err().to_string().contains("invalid zstd frame"));
        let e = decode(&HELLO[..HELLO.len() - 3]).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
        let mut skip = HELLO.to_vec();
        skip.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 50, 0, 0, 0, 1]);
        assert!(decode(&skip).unwrap_err().to_string().contains("cut short"));
    }
}
