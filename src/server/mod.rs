//! The network shell: listeners, connection tasks, the flusher and retention loops, shutdown.
//!
//! A connection reads frames (size checked against `socket.request.max.bytes` before any
//! allocation), hands each to [`Broker::handle`] in order, and a writer half answers in the
//! same order, awaiting replies that wait (acks=all, long polls). At most
//! [`CONNECTION_IN_FLIGHT_MAX`] replies are pending per connection; the reader stops reading
//! until the writer catches up. Connections beyond `max.connections` wait for a free slot.
//!
//! Architecture invariant: this module owns sockets and tasks but no protocol logic.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::broker::{Broker, BrokerError, Reply};
use crate::config::BrokerConfig;
use crate::limits::CONNECTION_IN_FLIGHT_MAX;
use crate::runtime::Disk;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The broker could not open its data.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The controller could not start.
    #[error(transparent)]
    Controller(#[from] crate::cluster::controller::ControllerNodeError),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Opens the broker's data and binds its listener; `run` then serves until `shutdown` resolves.
pub struct Server {
    broker: Arc<Broker>,
    listener: TcpListener,
    controller: Option<Arc<crate::cluster::controller::ControllerNode>>,
}

impl Server {
    /// Recovers the data directory and binds the client listener.
    ///
    /// The controller starts last: it spawns tasks that live on their own, so any step that can
    /// still fail (opening the broker's stores, binding the client listener) comes before it. A
    /// failed `bind` leaves nothing running, and retrying it is like restarting the process
    /// (a controller left behind would keep voting on a log that the retry's controller
    /// rewrites under it).
    pub async fn bind(config: Arc<BrokerConfig>, disk: Arc<dyn Disk>) -> Result<Server, ServerError> {
        let (_, is_controller) = config.process_roles();
        let broker = Broker::open(config.clone(), disk.clone())?;
        let l = config.client_listener();
        let addr = format!("{}:{}", l.host, l.port);
        let listener =
            TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr: addr.clone(), source })?;
        let controller = if config.is_cluster_mode() && is_controller {
            Some(crate::cluster::controller::ControllerNode::start(config.clone(), disk).await?)
        } else {
            None
        };
        if broker.cluster().is_some() {
            crate::cluster::agent::start(broker.clone());
        }
        Ok(Server { broker, listener, controller })
    }

    /// The local address the listener is bound to.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The broker behind this server.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Serves until `shutdown` resolves, then stops accepting, flushes and closes every log.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server { broker, listener, controller } = self;
        let config = broker.config().clone();
        let max_request = config.socket_request_max_bytes();
        let slots = Arc::new(Semaphore::new(config.max_connections()));

        let flusher = {
            let b = broker.clone();
            let interval = config.flush_scheduler_interval_ms();
            tokio::spawn(async move {
                while !b.is_shutting_down() {
                    b.wait_for_flush_request(interval).await;
                    b.flush_round(false).await;
                }
            })
        };
        let retention = {
            let b = broker.clone();
            let interval = config.retention_check_interval_ms().min(30_000);
            tokio::spawn(async move {
                while !b.is_shutting_down() {
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                    b.retention_round();
                }
            })
        };

        let group_timer = tokio::spawn(crate::broker::run_group_timer(broker.clone()));
        let txn_timer = tokio::spawn(crate::broker::run_txn_timer(broker.clone()));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let b = broker.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _ = stream.set_nodelay(true);
                        if let Err(e) = serve_connection(b, stream, max_request).await {
                            tracing::debug!(%peer, error = %e, "connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        if broker.cluster().is_some() {
            crate::cluster::agent::controlled_shutdown(&broker).await;
        }
        tracing::info!("shutting down: flushing logs");
        broker.begin_shutdown();
        drop(controller);
        flusher.abort();
        retention.abort();
        group_timer.abort();
        txn_timer.abort();
        broker.flush_round(true).await;
        broker.close();
        tracing::info!("shut down cleanly");
    }
}

async fn serve_connection(broker: Arc<Broker>, stream: TcpStream, max_request: usize) -> std::io::Result<()> {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let (tx, mut rx) = mpsc::channel::<Reply>(CONNECTION_IN_FLIGHT_MAX);

    let writer = async move {
        while let Some(reply) = rx.recv().await {
            let mut _held = None;
            let frame = match reply {
                Reply::Ready(b) => b,
                Reply::Held(b, permit) => {
                    _held = permit;
                    b
                }
                Reply::Wait(f) => f.await,
                Reply::Nothing => continue,
                Reply::Close(_) => break,
            };
            if frame.is_empty() {
                break;
            }
            wr.write_all(&frame).await?;
            if rx.is_empty() {
                wr.flush().await?;
            }
        }
        wr.flush().await?;
        wr.shutdown().await
    };

    let reader = async move {
        loop {
            let size = match rd.read_i32().await {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            if size < 8 || size as usize > max_request {
                let reason = format!("request size {size} is outside 8..={max_request} (socket.request.max.bytes)");
                tracing::debug!(reason, "closing connection");
                let _ = tx.send(Reply::Close(reason)).await;
                return Ok(());
            }
            let mut frame = BytesMut::with_capacity(size as usize);
            while frame.len() < size as usize {
                let want = size as usize - frame.len();
                let n = (&mut rd).take(want as u64).read_buf(&mut frame).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            let reply = broker.handle(frame.freeze());
            let close = matches!(reply, Reply::Close(_));
            if let Reply::Close(reason) = &reply {
                tracing::debug!(reason, "closing connection");
            }
            if tx.send(reply).await.is_err() || close {
                return Ok(());
            }
        }
    };
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}
