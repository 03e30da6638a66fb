//! Signing in to a team's gateway: OpenID Connect authorisation code flow
//! with PKCE in the system browser and a loopback redirect (RFC 8252), with
//! the openidconnect crate. The console is a public client: no secret. The
//! gateway's protected resource metadata names the issuer, the console's
//! client id there and the audience its tokens must carry.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, RedirectUrl, RefreshToken, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::api::{chain, http_client};
use crate::error::ConsoleError;

/// How long the console waits for the browser to come back.
pub const SIGN_IN_WITHIN: Duration = Duration::from_secs(300);

/// Where and how to sign in (no secret in it: it is kept on disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The gateway's API, `https://HOST:PORT`.
    pub gateway: String,
    /// A certificate to trust for the gateway and the issuer besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The OpenID Provider.
    pub issuer: String,
    /// The console's client id there.
    pub client_id: String,
    /// The audience the gateway expects (asked for as the token's resource).
    pub audience: String,
}

/// The tokens of a sign-in (kept in the OS keyring).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// The access token the gateway takes.
    pub access_token: String,
    /// To get a new one without the browser.
    pub refresh_token: Option<String>,
    /// When the access token expires (Unix seconds).
    pub expires_at: i64,
    /// Who signed in (the ID token's subject).
    pub subject: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("subject", &self.subject)
            .field("expires_at", &self.expires_at)
            .field("refreshable", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Read the gateway's protected resource metadata and pick the issuer
/// (`issuer`, or the first that names a console client id).
pub async fn discover(
    gateway: &str,
    ca_file: Option<PathBuf>,
    issuer: Option<&str>,
) -> Result<Profile, ConsoleError> {
    let gateway = origin(gateway)?;

    let http = http_client(ca_file.as_deref(), Duration::from_secs(15))?;
    let metadata_url = format!("{gateway}/.well-known/oauth-protected-resource");
    let response = http
        .get(&metadata_url)
        .send()
        .await
        .map_err(|e| ConsoleError::Unreachable(format!("{gateway}: {}", chain(&e))))?;
    if !response.status().is_success() {
        return Err(ConsoleError::SignIn(format!(
            "{metadata_url} answered {}: is this a Tollgate gateway's API (its [api] listen address)?",
            response.status()
        )));
    }
    let metadata: Value = response
        .json()
        .await
        .map_err(|e| ConsoleError::SignIn(format!("{metadata_url}: {}", chain(&e))))?;
    let consoles = metadata["tollgate_console"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let chosen = consoles.iter().find(|c| match issuer {
        Some(wanted) => {
            c["issuer"].as_str() == Some(wanted.trim_end_matches('/'))
                || c["issuer"].as_str() == Some(wanted)
        }
        None => c["client_id"].is_string(),
    });
    let Some(chosen) = chosen else {
        return Err(ConsoleError::SignIn(match issuer {
            Some(wanted) => format!("the gateway does not trust the issuer {wanted}"),
            None => "the gateway names no OpenID Provider with a console client id: its administrator sets \
                     console_client_id under [[identity.issuer]]"
                .into(),
        }));
    };
    let client_id = chosen["client_id"].as_str().ok_or_else(|| {
        ConsoleError::SignIn(format!(
            "the gateway names no console client id for {}: its administrator sets console_client_id under [[identity.issuer]]",
            chosen["issuer"]
        ))
    })?;
    Ok(Profile {
        gateway,
        ca_file,
        issuer: chosen["issuer"].as_str().unwrap_or_default().to_string(),
        client_id: client_id.to_string(),
        audience: chosen["audience"].as_str().unwrap_or_default().to_string(),
    })
}

/// A gateway's address as its origin (`https://host:port`): no user, path,
/// query or fragment (it names the keyring entry and is where tokens go).
pub fn origin(gateway: &str) -> Result<String, ConsoleError> {
    let text = gateway.trim();
    let url = url::Url::parse(text).map_err(|e| {
        ConsoleError::Invalid(format!(
            "{text} is not a URL ({e}): give the gateway's API, e.g. https://tollgate.example.com:6433"
        ))
    })?;
    if url.scheme() != "https" {
        return Err(ConsoleError::Invalid(format!(
            "{text}: the gateway's API is served over https only"
        )));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
        || url.path() != "/"
    {
        return Err(ConsoleError::Invalid(format!(
            "{text}: give only the gateway API's scheme, host and port, e.g. https://tollgate.example.com:6433"
        )));
    }
    Ok(url.origin().ascii_serialization())
}

/// Whether `url` may carry a sign-in: https, or http to this machine (a
/// provider on loopback, as in development and tests).
pub fn safe_url(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        },
        _ => false,
    }
}

/// Longest access-token lifetime the console believes (a provider's
/// `expires_in` beyond it is cut; below one second is one second).
const MAX_LIFETIME: u64 = 86_400;

/// openidconnect's HTTP client, over reqwest (no second HTTP stack).
fn oidc_http(
    http: reqwest::Client,
) -> impl Fn(
    openidconnect::HttpRequest,
) -> std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<openidconnect::HttpResponse, reqwest::Error>>
            + Send,
    >,
> {
    move |request: openidconnect::HttpRequest| {
        let http = http.clone();
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = http.execute(request).await?;
            let mut out = openidconnect::http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                out = out.header(name, value);
            }
            let body = response.bytes().await?.to_vec();
            Ok(out.body(body).expect("a response copied from a valid one"))
        })
    }
}

/// The resource parameter that asks for a token for the gateway: RFC 8707
/// `resource` when the audience is a URI, else `audience` (as Auth0 names it).
fn resource_param(audience: &str) -> (&'static str, String) {
    if url::Url::parse(audience).is_ok() {
        ("resource", audience.to_string())
    } else {
        ("audience", audience.to_string())
    }
}

type Client = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    openidconnect::core::CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    openidconnect::core::CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    openidconnect::core::CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

async fn client(profile: &Profile) -> Result<(Client, reqwest::Client), ConsoleError> {
    let http = http_client(profile.ca_file.as_deref(), Duration::from_secs(30))?;
    let issuer = IssuerUrl::new(profile.issuer.clone())
        .map_err(|e| ConsoleError::SignIn(format!("issuer {}: {e}", profile.issuer)))?;
    if !safe_url(issuer.url()) {
        return Err(ConsoleError::SignIn(format!(
            "the issuer {} is not https: the console signs in only over https (http only on this machine)",
            profile.issuer
        )));
    }
    let metadata = CoreProviderMetadata::discover_async(issuer, &oidc_http(http.clone()))
        .await
        .map_err(|e| {
            ConsoleError::SignIn(format!(
                "the OpenID Provider {} could not be discovered: {}",
                profile.issuer,
                chain(&e)
            ))
        })?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(profile.client_id.clone()),
        None,
    );
    Ok((client, http))
}

/// Sign in: open the provider's login in the browser (`open`), wait for it
/// to come back to the loopback redirect, and exchange the code.
pub async fn sign_in(
    profile: &Profile,
    open: impl FnOnce(&str) -> Result<(), String>,
) -> Result<Tokens, ConsoleError> {
    let (client, http) = client(profile).await?;
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| ConsoleError::SignIn(format!("no loopback port for the redirect: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| ConsoleError::SignIn(e.to_string()))?
        .port();
    let redirect = RedirectUrl::new(format!("http://127.0.0.1:{port}/callback"))
        .map_err(|e| ConsoleError::SignIn(e.to_string()))?;
    let client = client.set_redirect_uri(redirect.clone());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (name, value) = resource_param(&profile.audience);
    let (url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("offline_access".into()))
        .add_scope(Scope::new("profile".into()))
        .add_extra_param(name, value.clone())
        .set_pkce_challenge(challenge)
        .url();
    if !safe_url(&url) {
        return Err(ConsoleError::SignIn(format!(
            "the provider's sign-in page {} is not https; not opening it",
            url.origin().ascii_serialization()
        )));
    }
    open(url.as_str()).map_err(|e| {
        ConsoleError::SignIn(format!(
            "the browser could not be opened ({e}); open this address yourself: {url}"
        ))
    })?;
    let code = tokio::time::timeout(
        SIGN_IN_WITHIN,
        callback(&listener, state.secret(), &profile.issuer),
    )
    .await
    .map_err(|_| {
        ConsoleError::SignIn(format!(
            "the browser did not come back within {} minutes",
            SIGN_IN_WITHIN.as_secs() / 60
        ))
    })??;
    let response = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| ConsoleError::SignIn(e.to_string()))?
        .set_pkce_verifier(verifier)
        .add_extra_param(name, value)
        .request_async(&oidc_http(http))
        .await
        .map_err(|e| {
            ConsoleError::SignIn(format!(
                "the code could not be exchanged for tokens: {}",
                token_error(&e)
            ))
        })?;
    let id_token = response.id_token().ok_or_else(|| {
        ConsoleError::SignIn(
            "the provider sent no ID token (is the openid scope allowed for this client?)".into(),
        )
    })?;
    let verifier = client.id_token_verifier();
    let claims = id_token
        .claims(&verifier, &nonce)
        .map_err(|e| ConsoleError::SignIn(format!("the ID token did not verify: {e}")))?;
    // An at_hash, when present, binds the access token to this ID token.
    if let Some(expected) = claims.access_token_hash() {
        let alg = id_token
            .signing_alg()
            .map_err(|e| ConsoleError::SignIn(e.to_string()))?;
        let key = id_token
            .signing_key(&verifier)
            .map_err(|e| ConsoleError::SignIn(e.to_string()))?;
        let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
            .map_err(|e| ConsoleError::SignIn(e.to_string()))?;
        if actual != *expected {
            return Err(ConsoleError::SignIn(
                "the access token does not match the ID token".into(),
            ));
        }
    }
    Ok(tokens(&response, claims.subject().to_string()))
}

/// New tokens for a refresh token, without the browser.
pub async fn refresh(
    profile: &Profile,
    refresh_token: &str,
    subject: &str,
) -> Result<Tokens, RefreshError> {
    let (client, http) = client(profile)
        .await
        .map_err(|e| RefreshError::Unreachable(e.to_string()))?;
    let (name, value) = resource_param(&profile.audience);
    let token = RefreshToken::new(refresh_token.to_string());
    let response = client
        .exchange_refresh_token(&token)
        .map_err(|e| RefreshError::Rejected(e.to_string()))?
        .add_extra_param(name, value)
        .request_async(&oidc_http(http))
        .await
        .map_err(|e| match &e {
            openidconnect::RequestTokenError::ServerResponse(_) => {
                RefreshError::Rejected(token_error(&e))
            }
            _ => RefreshError::Unreachable(token_error(&e)),
        })?;
    let mut tokens = tokens(&response, subject.to_string());
    // A provider that does not rotate refresh tokens keeps the old one valid.
    if tokens.refresh_token.is_none() {
        tokens.refresh_token = Some(refresh_token.to_string());
    }
    Ok(tokens)
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The provider said no (revoked, expired): sign in again.
    #[error("{0}")]
    Rejected(String),
    /// The provider could not be reached: try again later.
    #[error("{0}")]
    Unreachable(String),
}

fn token_error<E: std::error::Error + 'static>(
    e: &openidconnect::RequestTokenError<
        E,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> String {
    match e {
        openidconnect::RequestTokenError::ServerResponse(r) => match r.error_description() {
            Some(d) => format!("{}: {d}", r.error()),
            None => r.error().to_string(),
        },
        other => chain(other),
    }
}

fn tokens(response: &openidconnect::core::CoreTokenResponse, subject: String) -> Tokens {
    let lifetime = response
        .expires_in()
        .unwrap_or(Duration::from_secs(300))
        .as_secs()
        .clamp(1, MAX_LIFETIME) as i64;
    Tokens {
        access_token: response.access_token().secret().clone(),
        refresh_token: response.refresh_token().map(|t| t.secret().clone()),
        expires_at: now_secs() + lifetime,
        subject,
    }
}

/// Wait for the browser's redirect with `state`; answer it with a page that
/// says what happened. Other requests (a favicon) get a 404.
async fn callback(
    listener: &TcpListener,
    state: &str,
    issuer: &str,
) -> Result<String, ConsoleError> {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut head = Vec::with_capacity(1024);
        let read = tokio::time::timeout(Duration::from_secs(3), async {
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        if !matches!(read, Ok(Ok(()))) {
            continue;
        }
        let line = String::from_utf8_lossy(&head);
        let target = line
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("GET "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or("");
        let Ok(url) = url::Url::parse(&format!("http://127.0.0.1{target}")) else {
            continue;
        };
        if url.path() != "/callback" {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let outcome = if param("state").as_deref() != Some(state) {
            Err("the answer does not belong to this sign-in (its state differs); start again from the console".to_string())
        } else if param("iss")
            .is_some_and(|iss| iss.trim_end_matches('/') != issuer.trim_end_matches('/'))
        {
            // RFC 9207: the answer names another provider (a mix-up).
            Err(
                "the answer comes from another identity provider than the one asked; start again"
                    .to_string(),
            )
        } else if let Some(error) = param("error") {
            Err(match param("error_description") {
                Some(d) => format!("the provider refused: {error}: {d}"),
                None => format!("the provider refused: {error}"),
            })
        } else if let Some(code) = param("code") {
            Ok(code)
        } else {
            Err("the provider sent no code".to_string())
        };
        let (title, text) = match &outcome {
            Ok(_) => (
                "Back to the console",
                "The identity provider answered. The console finishes signing in; you can close this tab.",
            ),
            Err(e) => ("Sign-in failed", e.as_str()),
        };
        let page = format!(
            "<!doctype html><meta charset=utf-8><title>Tollgate: {title}</title>\
             <body style=\"font:16px system-ui;margin:4em auto;max-width:36em\"><h1>{title}</h1><p>{}</p>",
            html_escape(text)
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        // A stray redirect with another state is answered and ignored.
        if param("state").as_deref() != Some(state) {
            continue;
        }
        return outcome.map_err(ConsoleError::SignIn);
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
