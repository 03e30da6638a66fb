use std::path::Path;

use super::*;

/// Parse `text`; a `[policy]` table is appended when it has none (at the
/// end, so the lines the tests check stay where they are).
fn parse(text: &str) -> Result<Config, ConfigError> {
    let text = if text.contains("[policy]") {
        text.to_string()
    } else {
        format!("{text}\n[policy]\nstarter = true\n")
    };
    Config::parse(&text, "test.toml", Path::new("/etc/tollgate"))
}

const MINIMAL: &str = "[server.tls]\nself_signed = true\n[identity.dev_issuer]\nenabled = true\n";

#[test]
fn a_gateway_without_policy_must_say_so() {
    let without = "[server.tls]\nself_signed = true\n[identity.dev_issuer]\nenabled = true\n";
    let err = Config::parse(without, "test.toml", Path::new("/etc/tollgate"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no policy: set [policy] files"), "{err}");
    assert!(parse(&format!("{without}[policy]\nallow_all = true\n")).is_ok());
    let both = parse(&format!(
        "{without}[policy]\nallow_all = true\nstarter = true\n"
    ))
    .unwrap_err();
    assert!(
        both.to_string().contains("allow_all cannot be combined"),
        "{both}"
    );
}

#[test]
fn every_config_under_fixtures_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected the dev and example configs, found {seen}"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_file() {
    let config = parse(&format!("{MINIMAL}[server]\ndata_dir = \"state\"\n")).unwrap();
    assert_eq!(config.server.data_dir, Path::new("/etc/tollgate/state"));
}

#[test]
fn unknown_key_is_refused_with_its_line_and_name() {
    let err = parse(&format!(
        "{MINIMAL}\n[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n"
    ))
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test.toml:8:"), "{text}");
    assert!(text.contains("listen_port"), "{text}");
}

#[test]
fn wrong_type_names_the_line() {
    let err = parse(&format!("{MINIMAL}[server]\nallow_plaintext = \"yes\"\n")).unwrap_err();
    assert!(err.to_string().starts_with("test.toml:6:"), "{err}");
}

#[test]
fn plaintext_on_a_network_address_is_refused() {
    let err = parse(&format!(
        "{MINIMAL}[server]\nlisten = \"0.0.0.0:6432\"\nallow_plaintext = true\n"
    ))
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("server.allow_plaintext") && text.contains("over TLS"),
        "{text}"
    );
    assert!(text.starts_with("test.toml:6:"), "{text}");
    // On loopback it is allowed (development).
    parse(&format!(
        "{MINIMAL}[server]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext = true\n"
    ))
    .unwrap();
}

#[test]
fn symmetric_and_none_algorithms_are_refused() {
    for alg in ["HS256", "none"] {
        let text = format!(
            "{MINIMAL}[[identity.issuer]]\nissuer = \"https://idp.example.com\"\naudience = \"t\"\nalgorithms = [\"{alg}\"]\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("identity.issuer[0].algorithms") && err.contains(alg),
            "{err}"
        );
        assert!(err.starts_with("test.toml:5:"), "{err}");
    }
}

#[test]
fn issuer_must_use_https_except_on_loopback() {
    let text =
        |url: &str| format!("{MINIMAL}[[identity.issuer]]\nissuer = \"{url}\"\naudience = \"t\"\n");
    assert!(
        parse(&text("http://idp.example.com"))
            .unwrap_err()
            .to_string()
            .contains("https")
    );
    parse(&text("http://127.0.0.1:8080")).unwrap();
}

#[test]
fn duplicate_connection_names_point_at_the_second() {
    let conn = "[[connection]]\nname = \"p\"\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\n";
    let err = parse(&format!("{MINIMAL}{conn}{conn}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("test.toml:10:") && err.contains("used twice"),
        "{err}"
    );
}

#[test]
fn no_certificate_and_no_plaintext_is_refused() {
    let err = parse("[identity.dev_issuer]\nenabled = true\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no TLS certificate"), "{err}");
}

#[test]
fn nobody_could_log_in_is_refused() {
    let err = parse("[server.tls]\nself_signed = true\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no one could log in"), "{err}");
}

#[test]
fn credential_sources_parse() {
    let text = format!(
        "{MINIMAL}[[connection]]\nname = \"a\"\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\npassword = {{ env = \"PW\" }}\n\
         [[connection]]\nname = \"b\"\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\npassword = {{ file = \"pw.txt\" }}\ntls = \"verify-ca\"\n\
         [[connection]]\nname = \"c\"\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\npassword = {{ keyring = {{ service = \"s\", account = \"a\" }} }}\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.connection("a").unwrap().password,
        Some(CredentialSource::Env("PW".into()))
    );
    assert_eq!(
        config.connection("b").unwrap().password,
        Some(CredentialSource::File("/etc/tollgate/pw.txt".into()))
    );
    assert_eq!(
        config.connection("b").unwrap().tls,
        UpstreamTlsMode::VerifyCa
    );
    assert_eq!(
        config.connection("c").unwrap().tls,
        UpstreamTlsMode::VerifyFull,
        "verify-full is the default"
    );
    let err = parse(&text.replace("{ env = \"PW\" }", "{ vault = \"PW\" }"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("vault"), "{err}");
}

#[test]
fn an_mcp_server_at_a_url_must_be_reached_safely() {
    let server = |fields: &str| {
        parse(&format!(
            "{MINIMAL}[mcp]\nlisten = \"127.0.0.1:6434\"\n[[mcp.server]]\nname = \"hosted\"\n{fields}\n"
        ))
    };
    assert!(
        server("url = \"https://mcp.example.com/mcp\"\nbearer_token = { env = \"T\" }").is_ok()
    );
    assert!(server("url = \"http://127.0.0.1:9000/mcp\"").is_ok());
    assert!(server("url = \"http://localhost:9000/mcp\"").is_ok());
    for (fields, says) in [
        (
            "url = \"http://mcp.example.com/mcp\"",
            "plain HTTP to another host",
        ),
        (
            "url = \"https://user:pw@mcp.example.com/mcp\"",
            "user name or password",
        ),
        (
            "url = \"https://mcp.example.com/mcp?key=abc\"",
            "query or fragment",
        ),
        ("url = \"ftp://mcp.example.com/mcp\"", "https://"),
        ("url = \"not a url\"", "is not a URL"),
        (
            "url = \"https://mcp.example.com/mcp\"\ncommand = [\"x\"]",
            "either a url or a command",
        ),
        (
            "command = [\"x\"]\nbearer_token = { env = \"T\" }",
            "for a server at a url",
        ),
        ("", "must name the program to run"),
    ] {
        let err = server(fields).unwrap_err().to_string();
        assert!(err.contains(says), "{fields}: {err}");
    }
}
