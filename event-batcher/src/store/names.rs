//! The names the store writes into SQL or into messages: the table, and the URL shown.

/// Longest accepted `--table` name (the index name appends a suffix and PostgreSQL
/// identifiers are at most 63 bytes).
pub const MAX_TABLE_NAME: usize = 48;

/// The SQL keywords of SQLite and the reserved words of PostgreSQL, lower case: a table
/// name is written into SQL unquoted, so none of them is accepted as one.
const SQL_KEYWORDS: &[&str] = &[
    "abort",
    "action",
    "add",
    "after",
    "all",
    "alter",
    "always",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "attach",
    "authorization",
    "autoincrement",
    "before",
    "begin",
    "between",
    "binary",
    "both",
    "by",
    "cascade",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "commit",
    "concurrently",
    "conflict",
    "constraint",
    "create",
    "cross",
    "current",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "database",
    "default",
    "deferrable",
    "deferred",
    "delete",
    "desc",
    "detach",
    "distinct",
    "do",
    "drop",
    "each",
    "else",
    "end",
    "escape",
    "except",
    "exclude",
    "exclusive",
    "exists",
    "explain",
    "fail",
    "false",
    "fetch",
    "filter",
    "first",
    "following",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "generated",
    "glob",
    "grant",
    "group",
    "groups",
    "having",
    "if",
    "ignore",
    "ilike",
    "immediate",
    "in",
    "index",
    "indexed",
    "initially",
    "inner",
    "insert",
    "instead",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "key",
    "last",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "match",
    "materialized",
    "natural",
    "no",
    "not",
    "nothing",
    "notnull",
    "null",
    "nulls",
    "of",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "others",
    "outer",
    "over",
    "overlaps",
    "partition",
    "placing",
    "plan",
    "pragma",
    "preceding",
    "primary",
    "query",
    "raise",
    "range",
    "recursive",
    "references",
    "regexp",
    "reindex",
    "release",
    "rename",
    "replace",
    "restrict",
    "returning",
    "right",
    "rollback",
    "row",
    "rows",
    "savepoint",
    "select",
    "session_user",
    "set",
    "similar",
    "some",
    "symmetric",
    "table",
    "tablesample",
    "temp",
    "temporary",
    "then",
    "ties",
    "to",
    "trailing",
    "transaction",
    "trigger",
    "true",
    "unbounded",
    "union",
    "unique",
    "update",
    "user",
    "using",
    "vacuum",
    "values",
    "variadic",
    "verbose",
    "view",
    "virtual",
    "when",
    "where",
    "window",
    "with",
    "without",
];

/// Checks a `--table` name: a letter or `_`, then letters, digits or `_`, at most
/// [`MAX_TABLE_NAME`] bytes, and not an SQL keyword (it is written into SQL unquoted, so
/// nothing else is accepted).
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
    if SQL_KEYWORDS.contains(&table.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "invalid table name {table:?}: it is an SQL keyword, choose another name"
        ));
    }
    Ok(())
}

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
    fn refuses_sql_keywords_in_any_case_and_keeps_ordinary_names() {
        for table in ["order", "SELECT", "Table", "user", "returning", "key"] {
            let error = check_table_name(table).unwrap_err();
            assert!(error.contains("SQL keyword"), "{table}: {error}");
        }
        for table in ["events", "orders", "select_2", "_table", "user_events"] {
            assert_eq!(check_table_name(table), Ok(()), "{table}");
        }
        assert!(
            SQL_KEYWORDS.windows(2).all(|w| w[0] < w[1]),
            "keep the list sorted"
        );
    }

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
