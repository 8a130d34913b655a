//! A small HTTP/1 client for the arrowd API over a Unix socket (or TCP with a token).

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Where arrowd listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Unix socket path.
    Unix(PathBuf),
    /// TCP `host:port`, with the bearer token.
    Tcp(String, Option<String>),
}

/// A client problem, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Cannot reach arrowd.
    #[error("cannot connect to arrowd at {0}: {1}; is arrowd running? (set --host or ARROW_HOST)")]
    Connect(String, std::io::Error),
    /// HTTP failure.
    #[error("talking to arrowd: {0}")]
    Http(#[from] hyper::Error),
    /// Request could not be built.
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    /// arrowd answered an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// arrowd's message.
        message: String,
    },
    /// Bad JSON from arrowd.
    #[error("unexpected answer from arrowd: {0}")]
    Decode(#[from] serde_json::Error),
}

impl Endpoint {
    /// Parses `unix:///path`, `tcp://host:port` or a plain socket path.
    pub fn parse(text: &str, token: Option<String>) -> Endpoint {
        if let Some(rest) = text.strip_prefix("tcp://") {
            Endpoint::Tcp(rest.to_owned(), token)
        } else {
            Endpoint::Unix(PathBuf::from(text.strip_prefix("unix://").unwrap_or(text)))
        }
    }

    fn describe(&self) -> String {
        match self {
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
            Endpoint::Tcp(a, _) => format!("tcp://{a}"),
        }
    }

    /// Sends one request; returns the response with a streaming body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "arrowd");
        let io_err = |e| ClientError::Connect(self.describe(), e);
        let mut sender = match self {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(io_err)?;
                handshake(TokioIo::new(s)).await?
            }
            Endpoint::Tcp(a, token) => {
                if let Some(t) = token {
                    builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let s = tokio::net::TcpStream::connect(a).await.map_err(io_err)?;
                handshake(TokioIo::new(s)).await?
            }
        };
        let req = match body {
            Some(b) => builder
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(b)))?,
            None => builder.body(Full::new(Bytes::new()))?,
        };
        let resp = sender.send_request(req).await?;
        if resp.status().is_client_error() || resp.status().is_server_error() {
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            let message = serde_json::from_slice::<crate::model::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status, message });
        }
        Ok(resp)
    }

    /// Sends a request and decodes a JSON answer.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let resp = self.send(method, path, body).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }
}

async fn handshake<I>(
    io: I,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
