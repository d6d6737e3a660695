//! Serves a container's output to the leader on a stream the leader opened: the lines asked
//! for, then (with `follow`) new ones as they are written, until the leader stops reading.

use crate::runtime::config::check_id;
use crate::runtime::logs::{read_log, LogReader};
use bramble_proto::wire::{AgentLogRequest, LogFrame};
use bramble_transport::quic::write_frame;
use quinn::SendStream;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

/// Lines per frame, so that a big log goes in pieces well under the frame limit.
const LINES_PER_FRAME: usize = 500;
const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub async fn serve(log_dir: PathBuf, req: AgentLogRequest, mut send: SendStream) {
    if let Err(e) = check_id(&req.replica) {
        let _ = write_frame(&mut send, &LogFrame::Error(e)).await;
        let _ = send.finish();
        return;
    }
    let path = log_dir.join(format!("{}.log", req.replica));
    let p = path.clone();
    let (tail, since) = (req.tail, req.since_ms);
    let first = tokio::task::spawn_blocking(move || read_log(&p, tail, since)).await;
    let (lines, mut offset) = match first {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            let _ = write_frame(&mut send, &LogFrame::Error(format!("cannot read the log: {e}"))).await;
            let _ = send.finish();
            return;
        }
        Err(_) => return,
    };
    for chunk in lines.chunks(LINES_PER_FRAME) {
        if write_frame(&mut send, &LogFrame::Lines(chunk.to_vec())).await.is_err() {
            return;
        }
    }
    if req.follow {
        let mut reader = LogReader::new(since);
        loop {
            tokio::select! {
                _ = send.stopped() => return,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || read_from(&p, offset)).await;
            let Ok(Ok((bytes, next))) = read else { continue };
            offset = next;
            let lines = reader.feed(&bytes);
            if !lines.is_empty() && write_frame(&mut send, &LogFrame::Lines(lines)).await.is_err() {
                return;
            }
        }
    }
    let _ = send.finish();
}

/// New bytes of the file since `offset` (from the start if it was rotated, i.e. shrank).
fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let from = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    f.take(4 << 20).read_to_end(&mut bytes)?;
    Ok((bytes.clone(), from + bytes.len() as u64))
}
