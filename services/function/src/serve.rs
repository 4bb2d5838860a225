//! The function manager's own `baetyl.Function/Call` server (v1's `server:` section of the manager): other
//! programs call a function by name, and the call goes to that function's instance pool, as a rule's would.
//!
//! v1 served it without authentication; so do we when no TLS is set, on the configured address only (a warning
//! says so when that address is not loopback). `cert`/`key` serve it over TLS (ALPN h2), and `ca` then
//! requires client certificates chaining to it, as v1's server did.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use baetyl_sdk::config::HumanDuration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{Request, Response, Status};

use crate::error::FunctionError;
use crate::pool::{CallError, Pool, invoke_id};
use crate::proto::FunctionMessage;
use crate::proto::function_server::{Function, FunctionServer};
use crate::runtime::{
    DEFAULT_SERVER_TIMEOUT, FunctionServerConfig, error_status, unknown_function,
};

/// Calls by function name, through the pools.
pub struct Dispatch {
    pools: BTreeMap<String, Arc<Pool>>,
}

impl Dispatch {
    pub fn new(pools: BTreeMap<String, Arc<Pool>>) -> Self {
        Dispatch { pools }
    }
}

fn code_of(e: &CallError) -> tonic::Code {
    match e {
        CallError::Function { .. } => tonic::Code::Unknown,
        CallError::Timeout(_) => tonic::Code::DeadlineExceeded,
        CallError::Unavailable { .. } | CallError::Start(_) => tonic::Code::Unavailable,
    }
}

#[tonic::async_trait]
impl Function for Dispatch {
    async fn call(
        &self,
        request: Request<FunctionMessage>,
    ) -> Result<Response<FunctionMessage>, Status> {
        let mut msg = request.into_inner();
        let pool = self
            .pools
            .get(&msg.function_name)
            .ok_or_else(|| unknown_function(&msg.function_name))?;
        if msg.function_invoke_id.is_empty() {
            msg.function_invoke_id = invoke_id();
        }
        let permit = pool.permit().await;
        pool.call(&permit, &msg)
            .await
            .map(Response::new)
            .map_err(|e| error_status(code_of(&e), e.kind(), e.to_string()))
    }
}

/// The function server with its TLS files read and its address bound: what can fail at start has failed.
pub struct Server {
    cfg: FunctionServerConfig,
    addr: SocketAddr,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    listener: tokio::net::TcpListener,
}

impl Server {
    pub async fn bind(
        cfg: &FunctionServerConfig,
        addr: SocketAddr,
    ) -> Result<Server, FunctionError> {
        let tls = match cfg.server_tls() {
            Some(t) => Some(Arc::new(
                t.server_config(&[b"h2"])
                    .map_err(|source| FunctionError::ServerTls { source })?,
            )),
            None => None,
        };
        let listener = crate::runtime::bind(addr).await?;
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(Server {
            cfg: cfg.clone(),
            addr,
            tls,
            listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `dispatch` until `shutdown` completes, with the limits and TLS of the config; `timeout` (v1's
    /// default 2m) bounds each call and each TLS handshake.
    pub async fn serve(
        self,
        dispatch: Dispatch,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), FunctionError> {
        serve(self, dispatch, shutdown).await
    }
}

async fn serve(
    server: Server,
    dispatch: Dispatch,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), FunctionError> {
    let Server {
        mut cfg,
        addr,
        tls,
        listener,
    } = server;
    let timeout = cfg
        .timeout
        .get_or_insert(HumanDuration(DEFAULT_SERVER_TIMEOUT))
        .get();
    let svc = cfg.limits(FunctionServer::new(dispatch));
    let router = cfg.builder().add_service(svc);
    let Some(tls) = tls else {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the function server takes calls without TLS from anyone who can reach {addr}, as v1's did; set server.cert and server.key (and server.ca for client certificates)");
        }
        tracing::info!(%addr, "serving functions by name (v1's server section)");
        return router
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown,
            )
            .await
            .map_err(FunctionError::Serve);
    };
    tracing::info!(%addr, two_way = cfg.ca.is_some(), "serving functions by name over TLS (v1's server section)");
    let incoming = baetyl_sdk::mqtt::TlsIncoming::new(listener, tls, timeout, "function server")
        .map_err(|source| FunctionError::Bind {
            address: addr,
            source,
        })?;
    let incoming = futures_util::stream::unfold(incoming, |mut incoming| async move {
        incoming
            .next()
            .await
            .map(|(s, _)| (Ok::<_, std::io::Error>(TlsConn(s)), incoming))
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(FunctionError::Serve)
}

/// A TLS connection as tonic serves it (tonic is built without its own TLS).
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(self.0.get_ref().0)
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
