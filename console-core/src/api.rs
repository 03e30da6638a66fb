//! The gateway's HTTPS API as the console calls it: recordings, the audit
//! log's state and evidence exports, with the signed-in identity's token.
//! What a caller may see is the gateway's decision (its roles); the console
//! only shows what it was given and says why the rest is withheld.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ConsoleError;

/// A fresh access token for each call.
pub type TokenSource = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// A client of one gateway's API.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    tokens: TokenSource,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

/// An HTTP client trusting the system roots and `ca_file`; no redirects
/// (a token is never sent where the user did not point the console).
pub fn http_client(
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, ConsoleError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| ConsoleError::Invalid(format!("{}: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ConsoleError::Invalid(format!("{}: {e}", ca.display())))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| ConsoleError::Unreachable(e.to_string()))
}

/// The whole chain of an error (reqwest's top level says little).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

impl Api {
    /// The API at `base` (`https://HOST:PORT`).
    pub fn new(
        base: &str,
        ca_file: Option<&Path>,
        tokens: TokenSource,
    ) -> Result<Api, ConsoleError> {
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            http: http_client(ca_file, Duration::from_secs(30))?,
            tokens,
        })
    }

    /// The API's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn token(&self) -> Result<String, ConsoleError> {
        (self.tokens)().map_err(ConsoleError::SignedOut)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ConsoleError> {
        let response = request
            .bearer_auth(self.token()?)
            .send()
            .await
            .map_err(|e| ConsoleError::Unreachable(format!("{}: {}", self.base, chain(&e))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"].as_str().unwrap_or("refused").to_string();
        let message = body["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the gateway answered {status}"));
        Err(match status.as_u16() {
            401 => ConsoleError::SignedOut(message),
            403 => ConsoleError::Forbidden(message),
            _ => ConsoleError::Refused { code, message },
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ConsoleError> {
        let url = url::Url::parse_with_params(&format!("{}{path}", self.base), query)
            .map_err(|e| ConsoleError::Invalid(format!("{}{path}: {e}", self.base)))?;
        let request = self.http.get(url);
        let response = self.send(request).await?;
        response
            .json()
            .await
            .map_err(|e| ConsoleError::Unreachable(format!("{}{path}: {}", self.base, chain(&e))))
    }

    /// `GET path` as JSON.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ConsoleError> {
        self.get(path, query).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ConsoleError> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        let response = self.send(request).await?;
        response
            .json()
            .await
            .map_err(|e| ConsoleError::Unreachable(format!("{}{path}: {}", self.base, chain(&e))))
    }

    /// `GET path` as a stream of bytes, each chunk handed to `chunk`.
    pub async fn download(
        &self,
        path: &str,
        mut chunk: impl FnMut(&[u8]) -> Result<(), ConsoleError>,
    ) -> Result<(), ConsoleError> {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(3600));
        let mut response = self.send(request).await?;
        while let Some(bytes) = response
            .chunk()
            .await
            .map_err(|e| ConsoleError::Unreachable(format!("{}{path}: {}", self.base, chain(&e))))?
        {
            chunk(&bytes)?;
        }
        Ok(())
    }
}
