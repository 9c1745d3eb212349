//! The names the store writes into SQL or into messages: the table, and the URL shown.

/// Longest accepted `--table` name (the index name appends a suffix and PostgreSQL
/// identifiers are at most 63 bytes).
pub const MAX_TABLE_NAME: usize = 48;

/// Checks a `--table` name: a letter or `_`, then letters, digits or `_`, at most
/// [`MAX_TABLE_NAME`] bytes (it is written into SQL, so nothing else is accepted).
pub fn check_table_name(table: &str) -> Result<(), String> {
    let mut chars = table.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        || table.len() > MAX_TABLE_NAME
    {
        return Err(format!(
            "invalid table name {table:?}: use a letter or `_`, then letters, digits or `_`, at most {MAX_TABLE_NAME} characters"
        ));
    }
    Ok(())
}

/// `url` with its password, if any, replaced by `***`, for messages and reports.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
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
    }

    #[test]
    fn accepts_only_plain_table_names() {
        assert!(check_table_name("events").is_ok());
        assert!(check_table_name("_t1").is_ok());
        for bad in [
            "",
            "1t",
            "a-b",
            "a;drop",
            "é",
            &"x".repeat(MAX_TABLE_NAME + 1),
        ] {
            assert!(check_table_name(bad).is_err(), "{bad:?}");
        }
    }
}
