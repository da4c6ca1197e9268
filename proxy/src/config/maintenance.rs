//! `[maintenance]` and `[bypass]`: what the proxy answers while the gate is closed (page, retry
//! times, CORS, how long ahead a maintenance window is announced), and who passes it anyway (trusted addresses, signed tokens).
//!
//! The page template and the bypass key files are read here: they are part of the config.

use super::file::{FileBypass, FileMaintenance};
use crate::page::PageTemplate;
use drawbridge_core::bypass::{self, Keyring};
use drawbridge_core::settings::Problems;
use http::HeaderName;
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::Duration;

/// What maintenance answers look like.
#[derive(Debug)]
pub struct MaintenanceSettings {
    pub default_retry_after: Duration,
    pub page_refresh_max: Duration,
    pub page: PageTemplate,
    pub default_message: String,
    pub cors: CorsPolicy,
    /// How long ahead of its start a maintenance window is announced.
    pub announce_before: Duration,
    /// How long after `until` a closed gate is overdue (and, with `expire`, opens).
    pub overdue_grace: Duration,
}

/// Which browser origins may read maintenance answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsPolicy {
    /// Echo no CORS headers.
    None,
    /// Echo the request's origin whatever it is.
    AnyOrigin,
    /// Echo the request's origin when it is one of these (compared case-insensitively).
    Origins(Vec<String>),
}

/// Who passes a closed gate.
#[derive(Debug)]
pub struct BypassSettings {
    pub trusted_cidrs: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// The header the token is read from (parsed once here, not per request).
    pub header: HeaderName,
    pub cookie: String,
    pub environment: String,
    pub max_ttl: Duration,
    pub keyring: Option<Keyring>,
}

pub(super) fn check_maintenance(m: FileMaintenance, p: &mut Problems) -> MaintenanceSettings {
    let page = match &m.page {
        None => PageTemplate::builtin(),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => PageTemplate::parse(&text).unwrap_or_else(|e| {
                p.add("maintenance.page", format!("{}: {e}", path.display()));
                PageTemplate::builtin()
            }),
            Err(e) => {
                p.add(
                    "maintenance.page",
                    format!("cannot read {}: {e}", path.display()),
                );
                PageTemplate::builtin()
            }
        },
    };
    let cors = if m.cors_allowed_origins.is_empty() {
        CorsPolicy::None
    } else if m.cors_allowed_origins.iter().any(|o| o == "*") {
        CorsPolicy::AnyOrigin
    } else {
        for (i, origin) in m.cors_allowed_origins.iter().enumerate() {
            let scheme_ok = origin.starts_with("http://") || origin.starts_with("https://");
            if !scheme_ok || origin.ends_with('/') {
                p.add(
                    format!("maintenance.cors_allowed_origins[{i}]"),
                    format!("{origin:?} is not an origin like \"https://app.example.com\""),
                );
            }
        }
        CorsPolicy::Origins(
            m.cors_allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        )
    };
    MaintenanceSettings {
        default_retry_after: p.duration(
            "maintenance.default_retry_after",
            m.default_retry_after.as_deref(),
            Duration::from_secs(300),
        ),
        page_refresh_max: p.duration(
            "maintenance.page_refresh_max",
            m.page_refresh_max.as_deref(),
            Duration::from_secs(300),
        ),
        page,
        default_message: m.default_message.unwrap_or_else(|| {
            "We are doing planned maintenance and will be back soon.".to_string()
        }),
        cors,
        announce_before: p.duration(
            "maintenance.announce_before",
            m.announce_before.as_deref(),
            Duration::from_secs(7 * 24 * 3600),
        ),
        overdue_grace: p.duration(
            "maintenance.overdue_grace",
            m.overdue_grace.as_deref(),
            Duration::from_secs(15 * 60),
        ),
    }
}

fn cidrs(p: &mut Problems, key: &str, raw: &[String]) -> Vec<IpNet> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    p.add(
                        format!("{key}[{i}]"),
                        format!("{text:?} is not a CIDR like \"10.0.0.0/8\" or an address"),
                    );
                    None
                }
            }
        })
        .collect()
}

pub(super) fn check_bypass(b: FileBypass, p: &mut Problems) -> BypassSettings {
    let header_text = b
        .header
        .unwrap_or_else(|| bypass::DEFAULT_HEADER.to_string());
    let header = HeaderName::from_bytes(header_text.as_bytes()).unwrap_or_else(|_| {
        p.add(
            "bypass.header",
            format!("{header_text:?} is not a header name"),
        );
        HeaderName::from_static(bypass::DEFAULT_HEADER)
    });
    let cookie = b
        .cookie
        .unwrap_or_else(|| bypass::DEFAULT_COOKIE.to_string());
    if cookie.is_empty()
        || !cookie
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        p.add(
            "bypass.cookie",
            format!("{cookie:?} must be letters, digits, '_' or '-'"),
        );
    }
    let keyring = p.keyring("bypass.keys", b.keys);
    let environment = b.environment.unwrap_or_default();
    if keyring.is_some() && environment.is_empty() {
        p.add(
            "bypass.environment",
            "is required with bypass.keys: tokens are bound to an environment",
        );
    }
    BypassSettings {
        trusted_cidrs: cidrs(p, "bypass.trusted_cidrs", &b.trusted_cidrs),
        trusted_proxies: cidrs(p, "bypass.trusted_proxies", &b.trusted_proxies),
        header,
        cookie,
        environment,
        max_ttl: p.duration(
            "bypass.max_ttl",
            b.max_ttl.as_deref(),
            Duration::from_secs(12 * 3600),
        ),
        keyring,
    }
}
