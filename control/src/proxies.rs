//! What maintctl asks the edge: every proxy's `/status` and `/metrics` (found through the Consul
//! service they register as, or listed admin URLs), what the public URLs answer, and the smoke
//! tests sent through the proxy with a bypass token.

use crate::config::{BypassSettings, Environment, ProxyDiscovery, SmokeTest};
use drawbridge_core::bypass::BYPASSED_HEADER;
use drawbridge_core::consul::{Client, QueryOptions};
use drawbridge_core::gate::Mode;
use drawbridge_core::status::{StatusReport, ADMIN_URL_META};
use std::time::Duration;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One proxy of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The instance id (Consul service id) or the admin URL.
    pub name: String,
    pub admin_url: String,
}

/// The environment's proxies.
///
/// # Errors
/// Consul failures, or a registered proxy without an admin URL.
pub async fn discover(env: &Environment, consul: &Client) -> Result<Vec<Proxy>, String> {
    match &env.proxies {
        ProxyDiscovery::AdminUrls(urls) => Ok(urls
            .iter()
            .map(|u| Proxy {
                name: u.clone(),
                admin_url: u.trim_end_matches('/').to_string(),
            })
            .collect()),
        ProxyDiscovery::ConsulService(service) => {
            let (entries, _) = consul
                .health_service(service, false, &QueryOptions::default())
                .await
                .map_err(|e| format!("finding the proxies (Consul service {service}): {e}"))?;
            entries
                .iter()
                .map(|e| {
                    let url = e.service.meta.get(ADMIN_URL_META).ok_or_else(|| {
                        format!(
                            "proxy {} registered without an `{ADMIN_URL_META}` meta",
                            e.service.id
                        )
                    })?;
                    Ok(Proxy {
                        name: e.service.id.clone(),
                        admin_url: url.trim_end_matches('/').to_string(),
                    })
                })
                .collect()
        }
    }
}

/// A proxy's `/status`.
///
/// # Errors
/// The proxy does not answer, refuses the token, or answers something else than a report.
pub async fn status(
    http: &reqwest::Client,
    env: &Environment,
    proxy: &Proxy,
) -> Result<StatusReport, String> {
    let (url, body) = admin_get(http, env, proxy, "/status").await?;
    serde_json::from_slice(&body).map_err(|e| {
        format!(
            "{}: {url} is not a drawbridge status report: {e}",
            proxy.name
        )
    })
}

/// A proxy's `/metrics` (Prometheus text).
///
/// # Errors
/// The proxy does not answer, refuses the token, or answers something that is not text.
pub async fn metrics(
    http: &reqwest::Client,
    env: &Environment,
    proxy: &Proxy,
) -> Result<String, String> {
    let (url, body) = admin_get(http, env, proxy, "/metrics").await?;
    String::from_utf8(body).map_err(|_| format!("{}: {url} is not text", proxy.name))
}

/// GET `path` on a proxy's admin listener, with the admin token; the URL and the body of a 2xx.
async fn admin_get(
    http: &reqwest::Client,
    env: &Environment,
    proxy: &Proxy,
    path: &str,
) -> Result<(String, Vec<u8>), String> {
    let url = format!("{}{path}", proxy.admin_url);
    let mut req = http.get(&url).timeout(REQUEST_TIMEOUT);
    if let Some(token) = &env.proxy_admin_token {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{}: GET {url}: {e}", proxy.name))?;
    let code = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("{}: GET {url}: {e}", proxy.name))?;
    if !code.is_success() {
        return Err(format!("{}: GET {url} answered {code}", proxy.name));
    }
    Ok((url, body.to_vec()))
}

/// Whether a proxy serves `mode` from at least Consul index `index`.
pub fn confirms(report: &StatusReport, mode: Mode, index: u64) -> Result<(), String> {
    if report.gate.applied_index >= index && report.gate.mode == mode {
        Ok(())
    } else {
        Err(format!(
            "serves {} from index {} (want {} from index {})",
            report.gate.mode, report.gate.applied_index, mode, index
        ))
    }
}

/// What a public URL should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// 503 with the HTML page.
    Page,
    /// 503 with `application/problem+json`.
    Problem,
    /// Anything but a maintenance answer or a server error.
    Open,
}

/// Checks what a public URL answers.
///
/// # Errors
/// The answer is not the expected one; the message says what came instead.
pub async fn check_public(http: &reqwest::Client, url: &str, expect: Expect) -> Result<(), String> {
    let accept = match expect {
        Expect::Problem => "application/json",
        _ => "text/html",
    };
    let resp = http
        .get(url)
        .header("accept", accept)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let code = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let ok = match expect {
        Expect::Page => code == 503 && content_type.starts_with("text/html"),
        Expect::Problem => code == 503 && content_type.starts_with("application/problem+json"),
        Expect::Open => code < 500,
    };
    if ok {
        Ok(())
    } else {
        let want = match expect {
            Expect::Page => "503 text/html (the maintenance page)",
            Expect::Problem => "503 application/problem+json",
            Expect::Open => "an answer from the service (below 500)",
        };
        Err(format!(
            "GET {url} answered {code} {content_type}, want {want}"
        ))
    }
}

/// Runs one smoke test through the proxy with a fresh bypass token.
///
/// # Errors
/// The request fails or its answer does not match.
pub async fn smoke(
    http: &reqwest::Client,
    bypass: &BypassSettings,
    test: &SmokeTest,
    now_unix: i64,
) -> Result<String, String> {
    let token = bypass.keyring.sign(
        &bypass.environment,
        now_unix,
        Duration::from_secs(300),
        Some("maintctl smoke"),
    );
    let method = reqwest::Method::from_bytes(test.method.as_bytes())
        .map_err(|_| format!("{}: {:?} is not an HTTP method", test.name, test.method))?;
    let resp = http
        .request(method, &test.url)
        .header(bypass.header.as_str(), token)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{}: {} {}: {e}", test.name, test.method, test.url))?;
    let code = resp.status().as_u16();
    let bypassed = resp.headers().contains_key(BYPASSED_HEADER);
    let body = resp.text().await.unwrap_or_default();
    if code != test.expect_status {
        return Err(format!(
            "{}: {} answered {code}, want {}: {}",
            test.name,
            test.url,
            test.expect_status,
            snippet(&body)
        ));
    }
    if let Some(want) = &test.expect_body {
        if !body.contains(want.as_str()) {
            return Err(format!(
                "{}: the answer of {} lacks {want:?}: {}",
                test.name,
                test.url,
                snippet(&body)
            ));
        }
    }
    Ok(format!(
        "{} {} -> {code}{}",
        test.method,
        test.url,
        if bypassed {
            " (through the closed gate)"
        } else {
            ""
        }
    ))
}

fn snippet(body: &str) -> String {
    body.chars().take(200).collect()
}
