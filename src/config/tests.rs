//! Tests of the configuration: the example file, overrides, tokens, and
//! the values that must be refused.

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn the_contract_example_loads() {
    let text = "kernel:\n  id: prod-001\n  variant: strict\ndata_dir: ./data\nlisten: 127.0.0.1:8080\npolicy_file: config/policy.yaml\ntokens: []\nrotation:\n  interval: 7d\n  bucket: my-archive-bucket\n  prefix: kernels-archive\n  region: us-east-1\n  endpoint: http://127.0.0.1:9000\n  force_path_style: true\n";
    let raw: RawConfig = serde_norway::from_str(text).unwrap();
    let cfg = Config::from_raw(raw, &Overrides::default(), &env_of(&[])).unwrap();
    assert_eq!(cfg.kernel_id, "prod-001");
    let rot = cfg.rotation.unwrap();
    assert_eq!(rot.interval, Duration::from_secs(7 * 86_400));
    assert_eq!(rot.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert!(rot.force_path_style);
}

#[test]
fn unknown_keys_are_named() {
    let e =
        serde_norway::from_str::<RawConfig>("kernel:\n  id: a\n  variantt: strict\n").unwrap_err();
    assert!(e.to_string().contains("variantt"), "{e}");
    let e = serde_norway::from_str::<RawConfig>("rotation:\n  buckett: x\n").unwrap_err();
    assert!(e.to_string().contains("buckett"), "{e}");
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let raw: RawConfig =
        serde_norway::from_str("kernel:\n  id: file-id\ndata_dir: /file\n").unwrap();
    let env = env_of(&[
        ("KERNELS_KERNEL_ID", "env-id"),
        ("KERNELS_DATA_DIR", "/env"),
        ("KERNELS_ROTATION_BUCKET", "b"),
    ]);
    let flags = Overrides {
        data_dir: Some("/flag".into()),
        ..Overrides::default()
    };
    let cfg = Config::from_raw(raw, &flags, &env).unwrap();
    assert_eq!(cfg.kernel_id, "env-id");
    assert_eq!(cfg.data_dir, PathBuf::from("/flag"));
    assert_eq!(cfg.rotation.unwrap().bucket, "b");
}

#[test]
fn tokens_are_read_and_checked() {
    let raw: RawConfig = serde_norway::from_str(
        "tokens:\n  - {token_env: A_TOK, role: agent, actors: [agent-001]}\n  - {token_env: O_TOK, role: operator, name: alice}\n",
    )
    .unwrap();
    let cfg = Config::from_raw(
        raw,
        &Overrides::default(),
        &env_of(&[("A_TOK", "agent-secret-1"), ("O_TOK", "operator-secret")]),
    )
    .unwrap();
    assert_eq!(cfg.tokens.len(), 2);
    assert_eq!(
        cfg.tokens[0].actors.as_deref(),
        Some(&["agent-001".to_owned()][..])
    );
    assert_eq!(cfg.tokens[1].name, "alice");
    assert!(!format!("{:?}", cfg.tokens).contains("operator-secret"));

    let raw: RawConfig =
        serde_norway::from_str("tokens:\n  - {token_env: A_TOK, role: agent}\n").unwrap();
    let e = Config::from_raw(
        raw,
        &Overrides::default(),
        &env_of(&[("A_TOK", "agent-secret-1")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs actors"), "{e}");
    let raw: RawConfig =
        serde_norway::from_str("tokens:\n  - {token_env: MISSING, role: auditor}\n").unwrap();
    assert!(Config::from_raw(raw, &Overrides::default(), &env_of(&[])).is_err());
}

#[test]
fn durations_and_bad_values() {
    assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
    assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
    assert!(parse_duration("7w").is_err());
    assert!(parse_duration("0s").is_err());
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
    let raw: RawConfig = serde_norway::from_str("kernel:\n  variant: lenient\n").unwrap();
    assert!(Config::from_raw(raw, &Overrides::default(), &env_of(&[])).is_err());
    let raw: RawConfig = serde_norway::from_str("listen: nowhere\n").unwrap();
    assert!(Config::from_raw(raw, &Overrides::default(), &env_of(&[])).is_err());
}

#[test]
fn every_duration_key_refuses_zero_and_overflow_naming_the_key() {
    for bad in [
        "0ms",
        "0s",
        "0d",
        "213503982334602d",
        "36501d",
        "99999999999999999999999s",
        "ms",
        "-1s",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
        for (section, key, var) in [
            ("limits", "request_timeout", "KERNELS_REQUEST_TIMEOUT"),
            ("limits", "header_timeout", "KERNELS_HEADER_TIMEOUT"),
            ("rotation", "interval", "KERNELS_ROTATION_INTERVAL"),
        ] {
            let name = format!("{section}.{key}");
            let raw: RawConfig =
                serde_norway::from_str(&format!("{section}:\n  {key}: \"{bad}\"\n")).unwrap();
            let e = Config::from_raw(raw, &Overrides::default(), &env_of(&[]))
                .expect_err(&format!("{name}: {bad}"));
            assert!(e.to_string().contains(&name), "{name} {bad}: {e}");
            let e = Config::from_raw(
                RawConfig::default(),
                &Overrides::default(),
                &env_of(&[(var, bad)]),
            )
            .expect_err(&format!("{var}: {bad}"));
            assert!(
                e.to_string().contains(var) && e.to_string().contains(&name),
                "{var} {bad}: {e}"
            );
        }
    }
    let cfg = Config::from_raw(
        RawConfig::default(),
        &Overrides::default(),
        &env_of(&[
            ("KERNELS_HEADER_TIMEOUT", "2s"),
            ("KERNELS_MAX_CONNECTIONS", "100"),
            ("KERNELS_REQUEST_TIMEOUT", "1500ms"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.header_timeout, Duration::from_secs(2));
    assert_eq!(cfg.request_timeout, Duration::from_millis(1500));
    assert_eq!(cfg.max_connections, Some(100));
    let e = Config::from_raw(
        RawConfig::default(),
        &Overrides::default(),
        &env_of(&[("KERNELS_MAX_CONNECTIONS", "0")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("limits.max_connections"), "{e}");
}

#[test]
fn signing_defaults_to_the_kernel_origin_and_env_overrides_the_file() {
    let raw: RawConfig = serde_norway::from_str("kernel:\n  id: prod-001\n").unwrap();
    let cfg = Config::from_raw(raw, &Overrides::default(), &env_of(&[])).unwrap();
    assert_eq!(
        cfg.signing,
        SigningConfig {
            key_file: None,
            origin: "kernels/prod-001".into()
        }
    );
    let raw: RawConfig = serde_norway::from_str(
        "signing:\n  key_file: /etc/kernels/file.key\n  origin: example.com/log\n",
    )
    .unwrap();
    let env = env_of(&[("KERNELS_SIGNING_KEY_FILE", "/run/secrets/env.key")]);
    let cfg = Config::from_raw(raw, &Overrides::default(), &env).unwrap();
    assert_eq!(
        cfg.signing.key_file.as_deref(),
        Some(std::path::Path::new("/run/secrets/env.key"))
    );
    assert_eq!(cfg.signing.origin, "example.com/log");
    let raw: RawConfig = serde_norway::from_str("signing:\n  origin: a+b\n").unwrap();
    let e = Config::from_raw(raw, &Overrides::default(), &env_of(&[])).unwrap_err();
    assert!(e.to_string().contains("signing.origin"), "{e}");
    assert!(serde_norway::from_str::<RawConfig>("signing:\n  keyfile: x\n").is_err());
}
