//! Error categories: what a person can act on (`connection refused`,
//! `TLS: certificate expired`), never the raw error text, which goes to the log.

use std::io;

/// The category of a failed socket operation.
pub fn io_category(error: &io::Error) -> String {
    use io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset | ConnectionAborted | BrokenPipe => "connection reset".into(),
        UnexpectedEof => "connection closed".into(),
        TimedOut => "connect timed out".into(),
        AddrNotAvailable | HostUnreachable | NetworkUnreachable => "host unreachable".into(),
        PermissionDenied => "permission denied".into(),
        NotFound => "not found".into(),
        _ if is_dns_failure(error) => "DNS: no such host".into(),
        _ => "network error".into(),
    }
}

fn is_dns_failure(error: &io::Error) -> bool {
    let text = error.to_string();
    text.contains("failed to lookup address") || text.contains("Name or service not known")
}

/// The first `io::Error` in an error's source chain.
pub fn find_io_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = error.source();
    }
    None
}

/// An error's whole source chain on one line, for the log.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(source) = current {
        text.push_str(": ");
        text.push_str(&source.to_string());
        current = source.source();
    }
    text
}

/// rustls names certificate problems in its error text; map them to words.
/// Current rustls 0.23 writes the common ones as sentences ("certificate expired:
/// verification time ..."), the others as variant names; match both.
pub fn tls_category(chain: &str) -> Option<&'static str> {
    let categories = [
        ("certificate expired", "TLS: certificate expired"),
        ("Expired", "TLS: certificate expired"),
        ("certificate not valid yet", "TLS: certificate not yet valid"),
        ("NotValidYet", "TLS: certificate not yet valid"),
        ("UnknownIssuer", "TLS: certificate not trusted"),
        ("certificate not valid for name", "TLS: hostname mismatch"),
        ("NotValidForName", "TLS: hostname mismatch"),
        ("Revoked", "TLS: certificate revoked"),
        ("invalid peer certificate", "TLS: invalid certificate"),
        ("InvalidContentType", "TLS: the server does not speak TLS"),
        ("CorruptMessage", "TLS: the server does not speak TLS"),
    ];
    categories.iter().find(|(needle, _)| chain.contains(needle)).map(|(_, category)| *category)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_errors_become_categories() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(io_category(&refused), "connection refused");
        // What getaddrinfo failures look like through tokio.
        for text in [
            "failed to lookup address information: Name or service not known",
            "failed to lookup address information: Temporary failure in name resolution",
        ] {
            assert_eq!(io_category(&io::Error::other(text)), "DNS: no such host", "{text}");
        }
        assert_eq!(io_category(&io::Error::other("something else")), "network error");
    }

    #[test]
    fn tls_errors_become_categories() {
        assert_eq!(
            tls_category("invalid peer certificate: Expired"),
            Some("TLS: certificate expired")
        );
        // The text rustls 0.23 writes for the common certificate problems.
        let expired = "error sending request: client error (Connect): invalid peer certificate: certificate expired: verification time 1700000000 (UNIX), but certificate is not valid after 1600000000 (100000000 seconds ago)";
        assert_eq!(tls_category(expired), Some("TLS: certificate expired"));
        let early = "invalid peer certificate: certificate not valid yet: verification time 1 (UNIX), but certificate is not valid before 2 (1 seconds in future)";
        assert_eq!(tls_category(early), Some("TLS: certificate not yet valid"));
        let name = "invalid peer certificate: certificate not valid for name \"a.example\"; certificate is only valid for b.example";
        assert_eq!(tls_category(name), Some("TLS: hostname mismatch"));
        assert_eq!(
            tls_category("invalid peer certificate: UnknownIssuer"),
            Some("TLS: certificate not trusted")
        );
        assert_eq!(
            tls_category("received corrupt message of type InvalidContentType"),
            Some("TLS: the server does not speak TLS")
        );
        assert_eq!(tls_category("connection refused"), None);
    }
}
