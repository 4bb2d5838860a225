//! TLS connections accepted on a TCP listener for a server that does its own TLS (the master's API, the
//! function manager's server): handshakes run concurrently, each within a deadline and a bounded number at
//! once, so a client that connects and says nothing holds up no one else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;

/// Handshakes in progress at once: a flood of idle connections cannot starve the accept loop.
pub const MAX_HANDSHAKES: usize = 64;

/// Completed TLS connections from a listener, in the order their handshakes finished. The accept loop
/// stops when this is dropped.
pub struct TlsIncoming {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsIncoming {
    /// Accepts on `listener` with `config`; each handshake must finish within `timeout`. Failed handshakes
    /// are logged as warnings naming `what` (the server) and the peer.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
        what: &'static str,
    ) -> std::io::Result<TlsIncoming> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("{what}: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, "{what}: TLS handshake: {e}"),
                        Err(_) => tracing::warn!(%peer, "{what}: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsIncoming { rx, local, task })
    }

    /// The next connection; None once the accept loop ended.
    pub async fn next(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.rx.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}
