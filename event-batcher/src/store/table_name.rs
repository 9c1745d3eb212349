//! The `--table` name, which the store writes into SQL unquoted: what is accepted.

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
