//! Keeping credentials out of logs, errors and stats: a URL is shown without its user
//! name, password and query string (where tokens live), and the rest of it stays
//! readable so the message still says which server was meant.

/// `url` with its user information and query string replaced by `***`, for logs,
/// errors and stats: `https://user:pw@host:8443/signal?token=x#f` becomes
/// `https://***@host:8443/signal?***`. Works on text that is not a valid URL too.
pub fn url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***");
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    out.push_str(&tail[..path_end]);
    if tail[path_end..].starts_with('?') {
        out.push_str("?***");
    }
    out
}

/// Replaces every occurrence of `url` (as given) in `text` with [`url`]'s redaction,
/// for messages of libraries that quote the URL they were given.
pub fn in_text(text: &str, full_url: &str) -> String {
    if full_url.is_empty() {
        return text.to_owned();
    }
    text.replace(full_url, &url(full_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_are_hidden() {
        for (input, want) in [
            (
                "https://user:pw@host:8443/signal?token=x#f",
                "https://***@host:8443/signal?***",
            ),
            ("http://h/signal.php", "http://h/signal.php"),
            ("http://h:80?token=abc", "http://h:80?***"),
            ("http://user@h/", "http://***@h/"),
            ("http://a:b@c@h/p", "http://***@h/p"),
            ("http://h/p#frag", "http://h/p"),
            ("not a url?secret=1", "not a url?***"),
            ("", ""),
            ("ftp://u:p@x", "ftp://***@x"),
        ] {
            assert_eq!(url(input), want, "{input}");
        }
        assert_eq!(
            in_text(
                "error sending request for url (http://u:p@h/?t=1): refused",
                "http://u:p@h/?t=1"
            ),
            "error sending request for url (http://***@h/?***): refused"
        );
    }
}
