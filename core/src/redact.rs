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
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    // User information ends at the last `@`: a password may hold `/`, `?` or `#` that
    // were not percent-encoded. (A path with an `@` is over-redacted; never a leak.)
    let rest = match rest.rfind('@') {
        Some(at) => {
            out.push_str("***");
            &rest[at..]
        }
        None => rest,
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    out.push_str(&rest[..end]);
    if rest[end..].starts_with('?') {
        out.push_str("?***");
    }
    out
}

/// Whether a config key names a secret (`secret`, `credential`, `authSecret`,
/// `password`, `token`...), also when misspelled, so errors never echo its value.
pub fn is_secret_key(key: &str) -> bool {
    let name = key
        .rsplit(['.', '['])
        .next()
        .unwrap_or(key)
        .trim_end_matches(']')
        .to_ascii_lowercase();
    [
        "secret",
        "credential",
        "password",
        "passwd",
        "token",
        "auth",
        "key",
        "cred",
    ]
    .iter()
    .any(|s| name.contains(s))
        || ["secret", "credential", "password"]
            .iter()
            .any(|s| edit_distance(&name, s) <= 2)
}

/// A value for an error message: `<redacted>` under a secret key, URLs without their
/// credentials or query, anything else as it is.
pub fn value(key: &str, value: &str) -> String {
    if is_secret_key(key) {
        "<redacted>".to_owned()
    } else if value.contains('@') || value.contains("://") || value.contains('?') {
        url(value)
    } else {
        value.to_owned()
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
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
    fn secret_keys_are_recognised_also_misspelled() {
        for k in [
            "secret",
            "Secret",
            "relay.credential",
            "relay.authSecret",
            "relay.password",
            "relay[0].credential",
            "secert",
            "sekret",
            "credentail",
            "token",
            "apiKey",
        ] {
            assert!(is_secret_key(k), "{k}");
            assert_eq!(value(k, "hunter2"), "<redacted>");
        }
        for k in [
            "room",
            "mode",
            "signalUrl",
            "relay.url",
            "bind",
            "mappings[0]",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
        assert_eq!(
            value("signalurl", "https://u:pw@h/?t=1"),
            "https://***@h/?***"
        );
        assert_eq!(value("room", "plain"), "plain");
    }

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
            ("https://user:pa/URLPW@h/", "https://***@h/"),
            ("https://user:pa#URLPW@h/", "https://***@h/"),
            ("https://user:pa?URLPW@h/x?t=1", "https://***@h/x?***"),
            ("turn:u:TURNPW@127.0.0.1:3478", "***@127.0.0.1:3478"),
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
