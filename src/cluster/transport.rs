//! Framed I/O for the controller listener and an RPC client that finds the active controller.
//!
//! Every read checks the frame length against [`RPC_FRAME_MAX_BYTES`] before allocating;
//! every write is flushed at once (madsim's simulated TCP buffers until flush).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::rpc::{ControllerRequest, ControllerResponse, RpcError, RPC_FRAME_MAX_BYTES};
use crate::config::Voter;

/// Errors talking to the controller quorum.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Socket failure.
    #[error("controller connection: {0}")]
    Io(#[from] std::io::Error),
    /// Bad frame.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// No answer in time.
    #[error("controller request timed out")]
    Timeout,
    /// No controller is reachable or none is active.
    #[error("no active controller reachable")]
    NoController,
}

/// Reads one frame body (after its length prefix); `None` on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Bytes>, TransportError> {
    let len = match r.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if len > RPC_FRAME_MAX_BYTES {
        return Err(RpcError::TooLarge(len).into());
    }
    let mut buf = BytesMut::zeroed(len);
    r.read_exact(&mut buf).await?;
    Ok(Some(buf.freeze()))
}

/// Writes one whole frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), TransportError> {
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

/// A request/response client for the active controller. It remembers which voter answered
/// last and follows `NotController` hints.
pub struct ControllerClient {
    voters: Vec<Voter>,
    current: Option<(i32, TcpStream)>,
    preferred: Option<i32>,
    next_correlation: u32,
    timeout: Duration,
}

impl ControllerClient {
    /// A client for `voters`; `timeout` bounds each request.
    pub fn new(voters: Vec<Voter>, timeout: Duration) -> Self {
        ControllerClient { voters, current: None, preferred: None, next_correlation: 1, timeout }
    }

    async fn connect(&mut self, id: i32) -> Result<(), TransportError> {
        let v = self.voters.iter().find(|v| v.id == id).ok_or(TransportError::NoController)?;
        let addr = format!("{}:{}", v.host, v.port);
        let s = tokio::time::timeout(self.timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| TransportError::Timeout)??;
        let _ = s.set_nodelay(true);
        self.current = Some((id, s));
        Ok(())
    }

    async fn call_on_current(&mut self, req: &ControllerRequest) -> Result<ControllerResponse, TransportError> {
        let cid = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let frame = req.encode(cid);
        let timeout = self.timeout;
        let (_, stream) = self.current.as_mut().ok_or(TransportError::NoController)?;
        let result = tokio::time::timeout(timeout, async {
            write_frame(stream, &frame).await?;
            match read_frame(stream).await? {
                Some(body) => {
                    let (got, resp) = ControllerResponse::decode(body)?;
                    if got != cid {
                        return Err(TransportError::Rpc(RpcError::UnknownKind(0)));
                    }
                    Ok(resp)
                }
                None => Err(TransportError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            }
        })
        .await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.current = None;
                Err(e)
            }
            Err(_) => {
                self.current = None;
                Err(TransportError::Timeout)
            }
        }
    }

    /// Sends `req` to the active controller, trying voters in turn and following hints.
    /// Returns the first answer that is not `NotController`.
    pub async fn call(&mut self, req: &ControllerRequest) -> Result<ControllerResponse, TransportError> {
        let mut order: Vec<i32> = Vec::new();
        if let Some((id, _)) = &self.current {
            order.push(*id);
        }
        if let Some(p) = self.preferred {
            order.push(p);
        }
        order.extend(self.voters.iter().map(|v| v.id));
        let mut tried = Vec::new();
        let mut last_err = TransportError::NoController;
        let mut i = 0;
        while i < order.len() && tried.len() < self.voters.len() * 2 {
            let id = order[i];
            i += 1;
            if tried.contains(&id) {
                continue;
            }
            tried.push(id);
            if self.current.as_ref().map(|(c, _)| *c) != Some(id) {
                if let Err(e) = self.connect(id).await {
                    last_err = e;
                    continue;
                }
            }
            match self.call_on_current(req).await {
                Ok(ControllerResponse::NotController { leader_hint }) => {
                    self.current = None;
                    if leader_hint >= 0 && !tried.contains(&leader_hint) {
                        order.insert(i, leader_hint);
                    }
                }
                Ok(resp) => {
                    self.preferred = Some(id);
                    return Ok(resp);
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }
}
