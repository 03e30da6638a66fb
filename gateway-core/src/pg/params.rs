//! Which startup parameters a client may pass on to the upstream.
//!
//! A startup parameter (or a `-c name=value` inside `options`) sets a
//! setting before the first statement, where no statement analysis sees
//! it: `options=-c standard_conforming_strings=off` would make the server
//! read SQL differently from the gateway, `-c role=...` would change who
//! the session is. So parameters are forwarded from an allow-list only,
//! by PostgreSQL's own rules (names in any case, `-c`/`--name=value`,
//! backslash-escaped spaces); anything else refuses the login and says
//! which parameter it was.

use super::error::PgError;

/// What the client asked for at startup, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Parameters to send upstream, as sent (including `options`).
    pub forwarded: Vec<(String, String)>,
    /// The `search_path` the session starts with, if the client set one.
    pub search_path: Option<Vec<String>>,
}

/// Parameters the gateway handles itself.
const LOGIN: &[&str] = &["user", "database", "replication"];

/// Check the client's startup parameters.
pub fn check(parameters: &[(String, String)]) -> Result<Startup, PgError> {
    let mut forwarded = Vec::new();
    let mut from_options = None;
    let mut from_param = None;
    for (name, value) in parameters {
        let key = name.to_ascii_lowercase();
        if LOGIN.contains(&key.as_str()) {
            continue;
        }
        if key == "options" {
            for (option, value) in split_options(value)? {
                allowed(&option, &value, "in the options parameter")?;
                if option == "search_path" {
                    from_options = Some(value);
                }
            }
        } else {
            allowed(&key, value, "as a startup parameter")?;
            if key == "search_path" {
                from_param = Some(value.clone());
            }
        }
        forwarded.push((name.clone(), value.clone()));
    }
    // PostgreSQL applies `options` first, then the other parameters.
    let search_path = from_param
        .or(from_options)
        .map(|path| super::sql::split_path(&path));
    Ok(Startup {
        forwarded,
        search_path,
    })
}

fn allowed(name: &str, value: &str, place: &str) -> Result<(), PgError> {
    let readable = match name {
        "standard_conforming_strings" => super::sql::setting_on(value),
        "client_encoding" => super::sql::readable_encoding(value).is_some(),
        "search_path" => true,
        other => super::sql::session_setting(other),
    };
    if readable {
        return Ok(());
    }
    Err(PgError::fatal(
        "0A000",
        format!(
            "setting \"{name}\" {place} is not allowed through the gateway{}",
            match name {
                "client_encoding" => " with this value: use UTF8 or LATIN1",
                "standard_conforming_strings" => " with this value: it must stay on",
                _ => "",
            }
        ),
    )
    .with_hint(
        "the gateway forwards application_name, client_encoding, DateStyle, TimeZone, \
         IntervalStyle, extra_float_digits, search_path, timeouts and planner settings; \
         remove the others from the connection string",
    ))
}

/// `options` as PostgreSQL reads it: words split on unescaped whitespace
/// (a backslash keeps the next character), each `-c name=value`,
/// `-cname=value` or `--name=value`. Dashes in names are underscores.
fn split_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    // PostgreSQL splits on isspace(), which also takes vertical tab, form
    // feed and carriage return, and its reading of other bytes depends on
    // the server's locale: only printable ASCII, spaces and tabs are read.
    if let Some(bad) = options
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return Err(PgError::fatal(
            "0A000",
            format!(
                "the options parameter holds the character U+{:04X}, which is not allowed through the gateway: \
                 use printable ASCII, separated by spaces",
                bad as u32
            ),
        ));
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().ok_or_else(|| bad_option(&word))?
        } else if let Some(rest) = word.strip_prefix("--") {
            rest.to_string()
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest.to_string()
        } else {
            return Err(bad_option(&word));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(bad_option(&setting));
        };
        out.push((
            name.replace('-', "_").to_ascii_lowercase(),
            value.to_string(),
        ));
    }
    Ok(out)
}

fn bad_option(word: &str) -> PgError {
    let shown: String = word.chars().take(64).collect();
    PgError::fatal(
        "0A000",
        format!(
            "the options parameter may only set allowed settings with -c name=value; \"{shown}\" is not allowed through the gateway"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn allowed_parameters_pass_and_search_path_is_followed() {
        let startup = check(&params(&[
            ("user", "alice"),
            ("database", "payments"),
            ("application_name", "report"),
            ("DateStyle", "ISO"),
            ("options", "-c statement_timeout=5s --search-path=hr,public"),
        ]))
        .unwrap();
        assert_eq!(startup.forwarded.len(), 3);
        assert_eq!(
            startup.search_path,
            Some(vec!["hr".to_string(), "public".to_string()])
        );
        let param_wins = check(&params(&[
            ("options", "-csearch_path=a"),
            ("SEARCH_PATH", "b"),
        ]))
        .unwrap();
        assert_eq!(param_wins.search_path, Some(vec!["b".to_string()]));
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        for (name, value, needle) in [
            (
                "options",
                "-c standard_conforming_strings=off",
                "standard_conforming_strings",
            ),
            ("options", "-c role=postgres", "\"role\""),
            (
                "options",
                "-c\\ session_authorization=postgres",
                "session_authorization",
            ),
            (
                "options",
                "--session-replication-role=replica",
                "session_replication_role",
            ),
            ("options", "-d 5", "-d"),
            ("options", "-c", "-c"),
            ("client_encoding", "SJIS", "client_encoding"),
            ("Role", "postgres", "\"role\""),
            ("default_transaction_read_only", "off", ""),
        ] {
            let result = check(&params(&[(name, value)]));
            if name == "default_transaction_read_only" {
                assert!(result.is_ok());
                continue;
            }
            let error = result.expect_err(value);
            assert_eq!(error.code, "0A000");
            assert!(error.message.contains(needle), "{}", error.message);
        }
    }

    #[test]
    fn options_with_other_whitespace_or_bytes_are_refused() {
        for options in [
            "-c application_name=x\u{b}-c\u{b}search_path=public",
            "-c application_name=x\u{c}-c role=postgres",
            "-c application_name=x\r-c role=postgres",
            "-c application_name=\u{e9}",
        ] {
            let error = check(&params(&[("options", options)])).expect_err(options);
            assert_eq!(error.code, "0A000");
        }
    }

    #[test]
    fn options_split_like_postgres() {
        assert_eq!(
            split_options("-c application_name=a\\ b   -cDateStyle=ISO").unwrap(),
            vec![
                ("application_name".to_string(), "a b".to_string()),
                ("datestyle".to_string(), "ISO".to_string())
            ]
        );
    }
}
