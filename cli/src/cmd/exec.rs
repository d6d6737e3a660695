//! `bramble exec REPLICA|app/NAME [-c CONTAINER] [-i] [-t] -- CMD…`: a command in a running replica's container,
//! through the leader and the board's agent to the replica's shim. With `-i` standard input goes
//! to it; with `-t` it runs on a terminal (yours is put in raw mode meanwhile, and its size
//! follows). The command's exit code is this one's.

use crate::client::{duplex, CliError};
use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::wire::{ExecInput, ExecOutput, ExecRequest, Request};
use bramble_transport::quic::{read_frame, write_frame};
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use tokio::sync::mpsc;

#[derive(clap::Args)]
pub struct Args {
    /// A replica name, or app/NAME for one of the app's running replicas (a ready one first).
    target: String,
    /// Pass standard input to the command.
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Run the command on a terminal (stderr comes on stdout); your terminal's size follows.
    #[arg(short = 't', long)]
    tty: bool,
    /// Which container of the replica (`[[app.containers]]` by name; default: the app's own).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The size of the terminal on `fd`, rows and columns, if it is one.
fn window_size(fd: &impl AsRawFd) -> Option<(u16, u16)> {
    let mut size = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which lives across the call.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCGWINSZ, &mut size) };
    (r == 0 && size.ws_row > 0).then_some((size.ws_row, size.ws_col))
}

/// Puts the terminal on standard input in raw mode, and back as it was when dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode(None);
        }
        let Ok(saved) = tcgetattr(&stdin) else { return RawMode(None) };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        match tcsetattr(&stdin, SetArg::TCSANOW, &raw) {
            Ok(()) => RawMode(Some(saved)),
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

pub async fn run(config: Option<PathBuf>, args: Args) -> Result<(), CliError> {
    let size = if args.tty { window_size(&std::io::stdout()).or(Some((24, 80))) } else { None };
    let req = ExecRequest {
        replica: args.target,
        command: args.command,
        stdin: args.stdin,
        tty: args.tty,
        size,
        container: args.container,
    };
    let d = duplex(config, Request::Exec(req)).await?;
    let leader = d.leader.clone();
    let (mut send, mut recv) = (d.send, d.recv);
    // Frames from the replica, read by one task (a frame read is not cancel-safe in a select).
    let (out_tx, mut out_rx) = mpsc::channel::<Result<Option<ExecOutput>, String>>(16);
    tokio::spawn(async move {
        loop {
            let frame = read_frame::<ExecOutput>(&mut recv, MAX_FRAME_LEN).await.map_err(|e| e.to_string());
            let end = !matches!(frame, Ok(Some(_)));
            if out_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    // Standard input, read by a thread (reads block); an empty chunk is the end.
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(16);
    if args.stdin {
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = stdin.read(&mut buf).unwrap_or(0);
                if in_tx.blocking_send(buf[..n].to_vec()).is_err() || n == 0 {
                    return;
                }
            }
        });
    } else {
        drop(in_tx);
        let _ = send.finish();
    }
    let mut resized = match args.tty {
        true => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok(),
        false => None,
    };
    let raw = if args.tty && args.stdin { Some(RawMode::enter()) } else { None };
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let mut input_open = args.stdin;
    let result: Result<i32, CliError> = loop {
        tokio::select! {
            frame = out_rx.recv() => match frame {
                Some(Ok(Some(ExecOutput::Started { .. }))) => {}
                Some(Ok(Some(ExecOutput::Stdout(b)))) => {
                    let _ = stdout.write_all(&b).and_then(|()| stdout.flush());
                }
                Some(Ok(Some(ExecOutput::Stderr(b)))) => {
                    let _ = stderr.write_all(&b).and_then(|()| stderr.flush());
                }
                Some(Ok(Some(ExecOutput::Exit(code)))) => break Ok(code),
                Some(Ok(Some(ExecOutput::Error(e)))) => break Err(CliError::Api(e)),
                Some(Err(e)) => break Err(CliError::Other(format!("{leader}: {e}"))),
                Some(Ok(None)) | None => {
                    break Err(CliError::Other(format!("{leader}: the stream ended before the command's exit code")))
                }
            },
            chunk = in_rx.recv(), if input_open => {
                let frame = match chunk {
                    Some(b) if !b.is_empty() => ExecInput::Stdin(b),
                    _ => {
                        input_open = false;
                        ExecInput::Eof
                    }
                };
                let eof = frame == ExecInput::Eof;
                if write_frame(&mut send, &frame).await.is_err() {
                    input_open = false;
                } else if eof {
                    let _ = send.finish();
                }
            }
            Some(()) = async { resized.as_mut()?.recv().await } => {
                if let Some((rows, cols)) = window_size(&std::io::stdout()) {
                    let _ = write_frame(&mut send, &ExecInput::Resize { rows, cols }).await;
                }
            }
        }
    };
    drop(raw);
    d.conn.close(quinn::VarInt::from_u32(0), b"done");
    d.endpoint.wait_idle().await;
    match result? {
        0 => Ok(()),
        code => Err(CliError::Exit(u8::try_from(code).unwrap_or(1).max(1))),
    }
}
