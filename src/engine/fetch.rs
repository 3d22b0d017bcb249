//! The only way guest code reaches the network: a guest `fetch` becomes a
//! [`FetchRequest`] handed to the host's [`Fetcher`]. The engine defines the
//! shapes and the per-request cap; the policy (which addresses, timeouts,
//! sizes) and the actual connection belong to the node's egress (in a
//! worker process, across the protocol), never to the isolate.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// Largest request body a guest may send with one fetch.
pub const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchRequest {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Why a fetch failed; `code` reaches the guest as `err.code`.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// `egress_denied`, `egress_limit`, `egress_timeout`, `egress_failed`.
    pub code: String,
    pub message: String,
}

impl FetchError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        FetchError { code: code.into(), message: message.into() }
    }
}

pub type FetchFuture = Pin<Box<dyn Future<Output = Result<FetchResponse, FetchError>>>>;

/// Performs fetches for guest code. Called on the isolate's thread; the
/// future need not be `Send`.
pub trait Fetcher: Send + Sync + 'static {
    fn fetch(&self, request: FetchRequest) -> FetchFuture;
}

/// The fetcher of an engine with no network: every fetch is denied.
pub struct NoNetwork;

impl Fetcher for NoNetwork {
    fn fetch(&self, request: FetchRequest) -> FetchFuture {
        Box::pin(async move { Err(FetchError::new("egress_denied", format!("no network egress is configured ({})", request.url))) })
    }
}
