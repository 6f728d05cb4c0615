//! A user hands stunfwd a broken mapping, rule or config file: every mistake comes back as
//! an `Error::Config` that names the key and the offending value, and nothing panics.

use std::fmt::Debug;
use std::panic::{catch_unwind, UnwindSafe};

use stunfwd_core::{AllowRule, Config, Error, Mapping};

/// Runs `f` under `catch_unwind`, then checks it failed with a config error for `key`
/// whose value contains `value` (when given) and whose message shows both.
fn assert_config_error<T: Debug>(
    what: &str,
    f: impl FnOnce() -> Result<T, Error> + UnwindSafe,
    want_key: &str,
    want_value: Option<&str>,
) {
    let outcome = catch_unwind(f);
    let Ok(result) = outcome else {
        panic!("{what}: panicked");
    };
    let err = match result {
        Err(err) => err,
        Ok(v) => panic!("{what}: expected an error for key `{want_key}`, got Ok({v:?})"),
    };
    let message = err.to_string();
    let Error::Config { key, value, .. } = &err else {
        panic!("{what}: expected Error::Config, got {err:?}");
    };
    assert_eq!(key, want_key, "{what}: wrong key in {message}");
    assert!(
        message.contains(want_key),
        "{what}: message does not name the key: {message}"
    );
    if let Some(want_value) = want_value {
        assert!(
            value.contains(want_value),
            "{what}: value {value:?} does not contain {want_value:?}"
        );
        assert!(
            message.contains(want_value),
            "{what}: message does not show the value {want_value:?}: {message}"
        );
    }
}

fn malformed_mappings() -> Vec<(&'static str, String)> {
    let long_host = "a".repeat(300);
    let long_label = "a".repeat(64);
    vec![
        ("empty", String::new()),
        ("protocol only", "tcp".into()),
        ("one port", "tcp:80".into()),
        ("unknown protocol", "sctp:1:2".into()),
        ("local port not a number", "tcp:x:22".into()),
        ("local port too large", "tcp:70000:22".into()),
        ("remote port zero", "tcp:8080:0".into()),
        ("negative remote port", "tcp:8080:-1".into()),
        ("huge remote port", "tcp:8080:h:99999999999999999999".into()),
        ("plus sign", "tcp:+80:22".into()),
        ("bad bind address", "tcp:1.2.3:8080:h:22".into()),
        ("bind is a name", "tcp:localhost:8080:h:22".into()),
        ("bad host characters", "tcp:8080:bad_host!:22".into()),
        ("unclosed bracket", "tcp:[::1:8080:h:22".into()),
        ("stray bracket", "tcp:8080:]h[:22".into()),
        ("text after bracket", "tcp:8080:[::1]x:22".into()),
        ("IPv4 in brackets", "tcp:[1.2.3.4]:8080:h:22".into()),
        ("IPv6 without brackets", "tcp:::1:8080:h:22".into()),
        ("too many parts", "tcp:1:2:3:4:5:6".into()),
        ("space inside", "tcp: 8080:22".into()),
        ("leading space", " tcp:8080:22".into()),
        ("control character", "tcp:8080\u{0}:22".into()),
        ("unicode host", "tcp:8080:héllo.example:22".into()),
        ("300-char host", format!("tcp:8080:{long_host}:22")),
        ("64-char label", format!("tcp:8080:{long_label}.example:22")),
        ("label starts with dash", "tcp:8080:-bad.example:22".into()),
        ("empty label", "tcp:8080:a..b:22".into()),
        ("trailing dot", "tcp:8080:h.example.:22".into()),
        ("empty local port", "tcp::22".into()),
        ("empty remote port", "tcp:8080:h:".into()),
        ("trailing colon", "tcp:8080:22:".into()),
    ]
}

#[test]
fn malformed_mapping_strings_name_the_mapping() {
    let cases = malformed_mappings();
    assert!(cases.len() >= 20);
    for (what, spec) in &cases {
        let s = spec.clone();
        assert_config_error(what, move || Mapping::parse(&s), "mapping", Some(spec));
        let s = spec.clone();
        assert_config_error(what, move || s.parse::<Mapping>(), "mapping", Some(spec));
    }
}

#[test]
fn malformed_mapping_strings_in_a_config_name_their_index() {
    for (what, spec) in malformed_mappings() {
        let doc = serde_json::json!({
            "mode": "client", "room": "r", "signalUrl": "https://h.example/s",
            "mappings": ["tcp:8080:22", spec],
        });
        let text = doc.to_string();
        assert_config_error(
            what,
            move || Config::from_json(&text),
            "mappings[1]",
            Some(&spec),
        );
    }
}

#[test]
fn malformed_allow_rules_name_the_rule() {
    for spec in [
        "",
        "tcp",
        "tcp:22",
        "tcp:*:22:33",
        "tcp:::1:22",
        "sctp:*:22",
        "tcp:*:0",
        "tcp:*:65536",
        "tcp:*:2000-1000",
        "tcp:*:1000-",
        "tcp:10.0.0.0/33:*",
        "tcp:[::]/129:*",
        "tcp:10.0.0.0/x:*",
        "tcp:a*b.example:*",
        "tcp:bad_host:*",
        "tcp:1.2.3:*",
        "tcp:[10.0.0.1]:22",
        "tcp:*:x",
        "tcp:*.:*",
        "tcp: *:22",
    ] {
        assert_config_error(spec, move || AllowRule::parse(spec), "allow", Some(spec));
    }
}

/// The smallest valid config, with `extra` merged in (a `null` removes a key).
fn config_with(extra: serde_json::Value) -> String {
    let mut doc = serde_json::json!({
        "mode": "client", "room": "r", "signalUrl": "https://h.example/s",
    });
    if let (Some(base), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    doc.to_string()
}

#[test]
fn malformed_configs_name_the_key_and_value() {
    use serde_json::json;
    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        (
            "invalid JSON",
            "{\"mode\": \"client\",\n \"room\": }".into(),
            "(document)",
            Some("\"room\": }"),
        ),
        ("empty document", String::new(), "(document)", None),
        (
            "not an object",
            "[1, 2]".into(),
            "(document)",
            Some("[1,2]"),
        ),
        (
            "a bare string",
            "\"config\"".into(),
            "(document)",
            Some("config"),
        ),
        (
            "missing room",
            config_with(json!({"room": null})),
            "room",
            None,
        ),
        (
            "missing mode",
            config_with(json!({"mode": null})),
            "mode",
            None,
        ),
        (
            "missing signalUrl",
            config_with(json!({"signalUrl": null})),
            "signalUrl",
            None,
        ),
        ("empty room", config_with(json!({"room": ""})), "room", None),
        (
            "room with spaces",
            config_with(json!({"room": "my room"})),
            "room",
            Some("my room"),
        ),
        (
            "room too long",
            config_with(json!({"room": "r".repeat(129)})),
            "room",
            Some("rrrr"),
        ),
        (
            "room is a number",
            config_with(json!({"room": 42})),
            "room",
            Some("42"),
        ),
        (
            "bad mode value",
            config_with(json!({"mode": "master"})),
            "mode",
            Some("master"),
        ),
        (
            "bad role value",
            config_with(json!({"mode": null, "role": "peer"})),
            "role",
            Some("peer"),
        ),
        (
            "empty secret",
            config_with(json!({"secret": ""})),
            "secret",
            None,
        ),
        (
            "ftp signalUrl",
            config_with(json!({"signalUrl": "ftp://h.example/s"})),
            "signalUrl",
            Some("ftp://h.example/s"),
        ),
        (
            "signalUrl not a URL",
            config_with(json!({"signalUrl": "not a url"})),
            "signalUrl",
            Some("not a url"),
        ),
        (
            "signalingURL alias not a URL",
            config_with(json!({"signalUrl": null, "signalingURL": "h.example/s"})),
            "signalingURL",
            Some("h.example/s"),
        ),
        (
            "typo mapings",
            config_with(json!({"mapings": ["tcp:8080:22"]})),
            "mapings",
            Some("tcp:8080:22"),
        ),
        (
            "mappings is a string",
            config_with(json!({"mappings": "tcp:8080:22"})),
            "mappings",
            Some("tcp:8080:22"),
        ),
        (
            "mapping is a number",
            config_with(json!({"mappings": [8080]})),
            "mappings[0]",
            Some("8080"),
        ),
        (
            "mapping object without target",
            config_with(json!({"mappings": [{"proto": "tcp", "listen": 8080}]})),
            "mappings[0].target",
            None,
        ),
        (
            "mapping object with bad listen",
            config_with(
                json!({"mappings": [{"proto": "tcp", "listen": "::1:80", "target": "h:1"}]}),
            ),
            "mappings[0].listen",
            Some("::1:80"),
        ),
        (
            "mapping object with bad proto",
            config_with(json!({"mappings": [{"proto": "quic", "listen": 1, "target": "h:1"}]})),
            "mappings[0].proto",
            Some("quic"),
        ),
        (
            "two mappings on one port",
            config_with(json!({"mappings": ["tcp:8080:22", "tcp:8080:23"]})),
            "mappings[1]",
            Some("8080"),
        ),
        (
            "bad duration",
            config_with(json!({"performance": {"stunCache": "5 parsecs"}})),
            "performance.stunCache",
            Some("5 parsecs"),
        ),
        (
            "punchTimeout out of range",
            config_with(json!({"punchTimeout": "1h"})),
            "punchTimeout",
            Some("1h"),
        ),
        (
            "tcpBufferSize 0",
            config_with(json!({"performance": {"tcpBufferSize": 0}})),
            "performance.tcpBufferSize",
            Some("0"),
        ),
        (
            "udpBufferSize negative",
            config_with(json!({"performance": {"udpBufferSize": -1}})),
            "performance.udpBufferSize",
            Some("-1"),
        ),
        (
            "tcpBufferSize as a string",
            config_with(json!({"performance": {"tcpBufferSize": "64k"}})),
            "performance.tcpBufferSize",
            Some("64k"),
        ),
        (
            "workers 0",
            config_with(json!({"performance": {"workers": 0}})),
            "performance.workers",
            Some("0"),
        ),
        (
            "tunnelWait too short",
            config_with(json!({"performance": {"tunnelWait": "10ms"}})),
            "performance.tunnelWait",
            Some("10ms"),
        ),
        (
            "keepAlive not below idleTimeout",
            config_with(json!({"performance": {"keepAlive": "30s", "idleTimeout": "30s"}})),
            "performance.keepAlive",
            Some("30s"),
        ),
        (
            "performance not an object",
            config_with(json!({"performance": "fast"})),
            "performance",
            Some("fast"),
        ),
        (
            "unknown performance key",
            config_with(json!({"performance": {"tcpBuffer": 1}})),
            "performance.tcpBuffer",
            None,
        ),
        (
            "bad allow rule",
            config_with(json!({"allow": ["tcp:127.0.0.1:22", "tcp:10.0.0.0/40:*"]})),
            "allow[1]",
            Some("tcp:10.0.0.0/40:*"),
        ),
        (
            "allow is a string",
            config_with(json!({"allow": "tcp:*:22"})),
            "allow",
            Some("tcp:*:22"),
        ),
        (
            "bind without port",
            config_with(json!({"bind": "0.0.0.0"})),
            "bind",
            Some("0.0.0.0"),
        ),
        (
            "metricsAddr is a name",
            config_with(json!({"metricsAddr": "localhost:9100"})),
            "metricsAddr",
            Some("localhost:9100"),
        ),
        (
            "stun server is a number",
            config_with(json!({"stunServers": [3478]})),
            "stunServers[0]",
            Some("3478"),
        ),
        (
            "stun server with bad port",
            config_with(json!({"stunServer": "stun.example.org:0"})),
            "stunServer",
            Some("stun.example.org:0"),
        ),
        (
            "relay with http url",
            config_with(json!({"relay": {"url": "http://relay.example"}})),
            "relay.url",
            Some("http://relay.example"),
        ),
        (
            "relay username without credential",
            config_with(json!({"relay": {"url": "turn:relay.example", "username": "u"}})),
            "relay.credential",
            None,
        ),
        (
            "room and roomId both given",
            config_with(json!({"roomId": "other"})),
            "roomId",
            Some("other"),
        ),
    ];
    assert!(cases.len() >= 12);
    for (what, text, key, value) in cases {
        assert_config_error(what, move || Config::from_json(&text), key, value);
    }
}

#[test]
fn invalid_json_reports_line_and_column() {
    let result =
        catch_unwind(|| Config::from_json("{\n  \"mode\": \"client\"\n  \"room\": \"r\"\n}"));
    match result {
        Ok(Err(Error::Config { key, problem, .. })) => {
            assert_eq!(key, "(document)");
            assert!(problem.contains("line 3 column"), "{problem}");
        }
        other => panic!("expected a document error, got {other:?}"),
    }
}

#[test]
fn invalid_yaml_is_a_document_error() {
    assert_config_error(
        "unclosed YAML flow sequence",
        || Config::from_yaml("mode: client\nroom: [r\n"),
        "(document)",
        None,
    );
    assert_config_error(
        "YAML typo",
        || Config::from_yaml("mode: client\nroom: r\nsignalUrl: http://h\nmapings: []\n"),
        "mapings",
        None,
    );
}

/// Every prefix of some valid inputs, and each character replaced by characters the
/// parsers treat specially: errors are fine, panics are not.
#[test]
fn mutated_inputs_never_panic() {
    let mappings = [
        "tcp:[::1]:8080:[2001:db8::1]:22",
        "udp:0.0.0.0:0:host.example:53",
    ];
    let rules = ["*:[fd00::]/8:1000-2000", "tcp:*.example.org:443"];
    let config = config_with(serde_json::json!({
        "mappings": ["tcp:8080:22"], "allow": ["tcp:*:22"],
        "performance": {"stunCache": "5m", "tcpBufferSize": 65536}
    }));
    let specials = [
        ':', '[', ']', '-', '/', '*', '.', 'é', ' ', '0', '"', '{', '\0',
    ];
    let mutations = |s: &str| {
        let mut out = Vec::new();
        for (i, _) in s.char_indices() {
            out.push(s[..i].to_owned());
            for c in specials {
                let mut m = s.to_owned();
                m.replace_range(
                    i..i + m[i..].chars().next().map_or(0, char::len_utf8),
                    &c.to_string(),
                );
                out.push(m);
            }
        }
        out
    };
    for spec in mappings.iter().chain(rules.iter()) {
        for m in mutations(spec) {
            let m2 = m.clone();
            assert!(catch_unwind(move || Mapping::parse(&m)).is_ok());
            assert!(catch_unwind(move || AllowRule::parse(&m2)).is_ok());
        }
    }
    for m in mutations(&config) {
        let m2 = m.clone();
        assert!(catch_unwind(move || Config::from_json(&m)).is_ok());
        assert!(catch_unwind(move || Config::from_yaml(&m2)).is_ok());
    }
}
