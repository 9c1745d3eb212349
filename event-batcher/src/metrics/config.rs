//! The `--metrics` address and what can go wrong with it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Why the metrics endpoint cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address does not parse.
    #[error(
        "--metrics {text:?}: {reason}; expected HOST:PORT, e.g. 127.0.0.1:9464, [::1]:9464, \
         localhost:9464 or :9464 (every interface)"
    )]
    Address {
        /// The address as given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The address parses but cannot be listened on (a port in use, an address of
    /// another machine, a privileged port).
    #[error("--metrics {addr}: cannot listen: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Parses a `--metrics` address: `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` (the IPv4
/// loopback) or `:PORT` (every IPv4 interface). Port 0 asks the system for a free port
/// (the address actually listened on is logged). No name is resolved: a host name other
/// than `localhost` is refused, so that the address is known before the run starts.
///
/// ```
/// use event_batcher::metrics::parse_addr;
///
/// assert_eq!(parse_addr("127.0.0.1:9464").unwrap().to_string(), "127.0.0.1:9464");
/// assert_eq!(parse_addr(":9464").unwrap().to_string(), "0.0.0.0:9464");
/// assert_eq!(parse_addr("localhost:0").unwrap().to_string(), "127.0.0.1:0");
/// assert!(parse_addr("9464").is_err());
/// assert!(parse_addr("127.0.0.1:99999").is_err());
/// ```
pub fn parse_addr(text: &str) -> Result<SocketAddr, MetricsError> {
    let error = |reason| MetricsError::Address {
        text: text.to_owned(),
        reason,
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(error("no port"));
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error("the port is not a number"));
    }
    let port: u16 = port.parse().map_err(|_| error("the port is above 65535"))?;
    let ip = match host {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ if host.contains(':') && !host.starts_with('[') => {
            return Err(error("an IPv6 address goes in brackets"));
        }
        _ => return Err(error("the host is not an IP address (nor localhost)")),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_what_is_wrong() {
        for (text, expected) in [
            ("127.0.0.1:9464", "127.0.0.1:9464"),
            ("[::1]:80", "[::1]:80"),
            (":0", "0.0.0.0:0"),
            ("localhost:9464", "127.0.0.1:9464"),
        ] {
            assert_eq!(parse_addr(text).unwrap().to_string(), expected, "{text}");
        }
        for (text, reason) in [
            ("", "no port"),
            ("127.0.0.1", "no port"),
            ("127.0.0.1:", "the port is not a number"),
            ("127.0.0.1:http", "the port is not a number"),
            ("127.0.0.1:65536", "the port is above 65535"),
            ("::1:80", "an IPv6 address goes in brackets"),
            (
                "example.com:80",
                "the host is not an IP address (nor localhost)",
            ),
            (
                "999.0.0.1:80",
                "the host is not an IP address (nor localhost)",
            ),
        ] {
            let message = parse_addr(text).unwrap_err().to_string();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }
}
