//! The test's HTTP client ([`test_client`]) and reading its answers' headers ([`header`],
//! [`retry_after`]).

use std::net::IpAddr;
use std::time::Duration;

/// Timeout of one request from the test client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A reqwest client for the tests: no redirects, no proxy, bounded, optionally bound to a
/// local address (e.g. 127.0.0.2, to be an untrusted client).
pub fn test_client(local_address: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .local_address(local_address)
        .build()
        .expect("a client with these settings always builds")
}

/// The value of header `name` of `answer` as text, if present.
pub fn header(answer: &reqwest::Response, name: &str) -> Option<String> {
    answer
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The `Retry-After` of `answer` in seconds.
///
/// # Panics
/// When it is missing or not a number of seconds.
pub fn retry_after(answer: &reqwest::Response) -> u64 {
    let value = header(answer, "retry-after").expect("the answer has Retry-After");
    value
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("Retry-After {value:?} is not seconds: {e}"))
}
