//! What a web page in a browser may not make cherga do.
//!
//! A browser lets any page send "simple" requests to any address, 127.0.0.1
//! included, without asking the server first: GET, and POST with a `text/plain`
//! or form body. A page that gets a name of its own to resolve to 127.0.0.1 (DNS
//! rebinding) may even read the answers, since the browser then takes the server
//! for the page's own. With auth off, a loopback cherga would do what any such
//! page asks: enqueue, lease, read tasks. So, before a route's handler runs:
//!
//! - a request with a body (one whose length is not known to be zero, so a
//!   chunked one too) must send it as `Content-Type: application/json`
//!   (parameters allowed), else 415 `unsupported_media_type`: a page cannot send
//!   that type to another origin without a CORS preflight, which cherga never
//!   grants;
//! - with auth off, the request must be addressed (`Host`, and the URI's
//!   authority when it has one) to a loopback address, `localhost` or a host of
//!   `--allowed-hosts`, else 403 `forbidden`: a rebound name is none of them;
//! - a request whose `Origin` (which a browser sends with every POST, and `null`
//!   for opaque origins) names another host is refused, 403 `forbidden`: with
//!   auth off any but those hosts, with auth on any but those and the request's
//!   own host. With auth on a page has no token to send (a browser adds a bearer
//!   token to no request by itself), but a proxy in front of cherga might add
//!   one from a cookie, and a page of another site has no business here anyway.
//!
//! `/healthz`, `/readyz` and `/v1/openapi.json` are answered whatever the request says:
//! they tell nothing about tasks.
//!
//! **Invariant:** these checks run before authentication and the body's
//! reading, on every route but the two open ones.

use crate::App;
use crate::error::ApiError;
use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cherga_api::ErrorCode;
use cherga_store::Store;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// Hosts besides the loopback ones (`localhost`, 127.0.0.0/8, `::1`) that requests
/// may be addressed to when auth is off, and pages may come from: `--allowed-hosts`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Lowercase names and IP addresses (IPv6 without brackets), without ports.
    extra: Vec<String>,
}

/// Why `--allowed-hosts` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a host name or IP address without a port (give names like cherga.internal or \
     10.0.0.5, separated by commas; any port is allowed)"
)]
pub struct InvalidHost(pub String);

impl AllowedHosts {
    /// Reads a comma-separated list of host names and IP addresses (IPv6 with or
    /// without brackets), without ports; empty items are skipped.
    ///
    /// # Errors
    /// [`InvalidHost`] naming the first item that is not a host.
    pub fn parse(list: &str) -> Result<Self, InvalidHost> {
        let mut extra = Vec::new();
        for item in list.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let bare = item.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(item);
            let host = match bare.parse::<IpAddr>() {
                // In the form a browser writes it (`fd00::1`, not `fd00:0::1`).
                Ok(ip) => ip.to_string(),
                Err(_) if is_host_name(item) => item.to_ascii_lowercase(),
                Err(_) => return Err(InvalidHost(item.to_owned())),
            };
            extra.push(host);
        }
        Ok(Self { extra })
    }

    /// The hosts given, as they are compared.
    pub fn extra(&self) -> &[String] {
        &self.extra
    }

    /// Whether `host` (no port; IPv6 without brackets) is loopback or listed.
    fn allows(&self, host: &str) -> bool {
        if is_loopback(host) {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => self.extra.contains(&ip.to_string()),
            Err(_) => self.extra.iter().any(|h| h.eq_ignore_ascii_case(host)),
        }
    }
}

/// A DNS name: dot-separated labels of letters, digits and hyphens.
fn is_host_name(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1` (also written as an
/// IPv4-mapped IPv6 address).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host
            .parse::<Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
}

/// The host of `authority` (`host`, `host:port`, `[v6]`, `[v6]:port`), without
/// brackets; `None` when it is not of that form.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return None,
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    (!host.is_empty() && port_ok).then_some(host)
}

/// The host an `Origin` value names (`scheme://host[:port]`); `None` for `null`
/// and anything else.
fn origin_host(origin: &str) -> Option<&str> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme_ok =
        !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b));
    if !scheme_ok {
        return None;
    }
    host_of(authority)
}

/// Whether a `Content-Type` says JSON: `application/json`, any case, with or
/// without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().is_ok_and(|text| {
            text.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
        }),
        _ => false,
    }
}

/// Cuts what the client sent to a length fit for an error message.
fn quoted(text: &str) -> String {
    let mut end = text.len().min(100);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}", &text[..end])
}

/// The routes open to everyone, which tell nothing about tasks.
const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/v1/openapi.json"];

/// The checks of this module, before routing.
pub(crate) async fn check<S: Store>(
    State(app): State<Arc<App<S>>>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match refusal(&app.allowed_hosts, app.guard.is_some(), &request) {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    }
}

/// Why `request` is refused, if it is.
fn refusal(allowed: &AllowedHosts, auth: bool, request: &Request) -> Option<ApiError> {
    let headers = request.headers();
    let host_header = headers.get(header::HOST).map(|v| v.to_str().unwrap_or(""));
    let own_host = host_header.and_then(host_of);
    if !auth {
        // Every name the request is addressed by: its Host, and the authority of
        // an absolute URI.
        let named = [host_header, request.uri().authority().map(|a| a.as_str())];
        if let Some(refused) =
            named.into_iter().flatten().find(|name| !host_of(name).is_some_and(|h| allowed.allows(h)))
        {
            return Some(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "this server has authentication off and answers only requests addressed to \
                     localhost, a loopback address or a host of --allowed-hosts, not {} (a web page \
                     must not reach it through a name of its own)",
                    quoted(refused)
                ),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin_text = origin.to_str().unwrap_or("");
        let ok = origin_host(origin_text).is_some_and(|host| {
            allowed.allows(host) || (auth && own_host.is_some_and(|own| own.eq_ignore_ascii_case(host)))
        });
        if !ok {
            return Some(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "requests from web pages of other sites are refused (Origin: {}); allow a host with \
                     --allowed-hosts",
                    quoted(origin_text)
                ),
            ));
        }
    }
    if request.body().size_hint().exact() != Some(0) && !is_json(headers) {
        return Some(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a request body must be JSON sent with Content-Type: application/json",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_with_and_without_ports() {
        let cases = [
            ("localhost", Some("localhost")),
            ("localhost:7700", Some("localhost")),
            ("[::1]:7700", Some("::1")),
            ("[::1]", Some("::1")),
            ("127.0.0.1:", None),
            ("127.0.0.1:123456", None),
            ("[::1]x", None),
            ("[::1", None),
            (":80", None),
            ("", None),
        ];
        for (authority, want) in cases {
            assert_eq!(host_of(authority), want, "{authority:?}");
        }
        assert_eq!(origin_host("https://a.example:8443"), Some("a.example"));
        assert_eq!(origin_host("null"), None);
        assert_eq!(origin_host("://a.example"), None);
    }

    #[test]
    fn allowed_hosts_are_names_and_addresses_without_ports() {
        let hosts = AllowedHosts::parse(" Cherga.Internal ,10.0.0.5,,[fd00::1], FD00:0:0::2").unwrap();
        assert_eq!(hosts.extra(), ["cherga.internal", "10.0.0.5", "fd00::1", "fd00::2"]);
        assert!(hosts.allows("fd00:0::2") && hosts.allows("CHERGA.internal") && hosts.allows("127.0.0.9"));
        assert!(!hosts.allows("fd00::3") && !hosts.allows("internal"));
        for bad in ["a.example:80", "http://a.example", "a b", "*", "a..b", "-a.example", "[fd00::1]:80"] {
            assert_eq!(AllowedHosts::parse(bad), Err(InvalidHost(bad.to_owned())), "{bad:?}");
        }
        assert_eq!(AllowedHosts::parse(""), Ok(AllowedHosts::default()));
    }
}
