//! A database URL as shown in messages and reports: its passwords masked.

/// `url` with its password, if any, replaced by `***`, for messages and reports; control
/// characters are escaped, so the result stays on one line.
///
/// Lenient on purpose (a URL shown in an error is often malformed): the password is whatever
/// follows the first `:` of what precedes the last `@` (after the scheme, if any, so a URL
/// without a scheme or with an unencoded `/`, `?` or `@` in its password is masked too), and
/// the value of every query parameter whose name contains `password` (sqlx reads
/// `?password=`) is masked as well.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((head, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                        format!("{name}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{head}?{}", query.join("&"))
        }
        None => rest,
    };
    crate::console::one_line(&format!("{scheme}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://events.db"), "sqlite://events.db");
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
        for (url, shown) in [
            ("u:pw@h:1/db", "u:***@h:1/db"),
            ("//u:pw@h:1/db", "//u:***@h:1/db"),
            ("postgres://u:p/w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p?w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@w@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?sslmode=off&password=pw&PassWord=pw",
                "postgres://u@h/db?sslmode=off&password=***&PassWord=***",
            ),
            ("sqlite://a\nb.db", "sqlite://a\\nb.db"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }
}
