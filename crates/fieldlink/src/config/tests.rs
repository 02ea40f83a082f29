use std::path::PathBuf;
use std::time::Duration;

use fieldlink_broker::config::{AccessSettings, CertIdentity, ClientIdRule, ListenerTls};
use fieldlink_core::config::MqttVersion;
use fieldlink_core::message::Priority;
use fieldlink_core::tls::MinTlsVersion;
use fieldlink_core::topic::TopicName;
use fieldlink_queue::config::FullPolicy;
use fieldlink_uplink::config::{JwtSettings, OnRejected, UplinkCredentials, UplinkTls};

use super::*;

fn origin() -> Origin {
    Origin::File(PathBuf::from("test.toml"))
}

fn errors_of(text: &str) -> Vec<ConfigError> {
    match parse(text, origin()) {
        Ok(settings) => panic!("expected errors, got {settings:?}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

/// One bad config, the one error it must give, where, and words the message must contain.
struct Case {
    text: &'static str,
    key: &'static str,
    line: usize,
    words: &'static [&'static str],
}

#[test]
fn each_bad_config_is_reported_with_line_key_and_hint() {
    let cases = [
        Case {
            text: "[broker]\nmax_conections = 5\n",
            key: "broker.max_conections",
            line: 2,
            words: &["unknown key", "max_connections", "= 5"],
        },
        Case {
            text: "[gatway]\n",
            key: "gatway",
            line: 1,
            words: &["unknown key", "gateway"],
        },
        Case {
            text: "[[broker.listeners]]\nbind = \"127.0.0.1\"\nport = 70000\n",
            key: "broker.listeners[0].port",
            line: 3,
            words: &["out of range", "1 to 65535", "= 70000"],
        },
        Case {
            text: "[[broker.listeners]]\nport = \"eighty\"\n",
            key: "broker.listeners[0].port",
            line: 2,
            words: &["wrong type", "i64"],
        },
        Case {
            text: "[[broker.listeners]]\nbind = \"localhost:1883\"\nport = 1883\n",
            key: "broker.listeners[0].bind",
            line: 2,
            words: &["not an IP address"],
        },
        Case {
            text: "[[routes]]\nname = \"t\"\nfilter = \"sensors/#/temp\"\n",
            key: "routes[0].filter",
            line: 3,
            words: &["not a valid topic filter", "'#'", "sensors/#/temp"],
        },
        Case {
            text: "[[broker.listeners]]\nname = \"a\"\nport = 1883\n\
                   [[broker.listeners]]\nname = \"b\"\nbind = \"0.0.0.0\"\nport = 1883\n",
            key: "broker.listeners[1].port",
            line: 7,
            words: &["already used", "127.0.0.1:1883"],
        },
        Case {
            text: "[gateway]\nshutdown_grace = \"10 parsecs\"\n",
            key: "gateway.shutdown_grace",
            line: 2,
            words: &["not a duration", "\"10s\""],
        },
        Case {
            text: "[queue]\nwhen_full = \"drop_everything\"\n",
            key: "queue.when_full",
            line: 2,
            words: &["unknown policy", "drop_oldest"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ntls = \"none\"\n",
            key: "uplink.tls",
            line: 4,
            words: &["unknown TLS mode", "plaintext is not offered"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\nstall_timeout = \"1s\"\n",
            key: "uplink.stall_timeout",
            line: 4,
            words: &["out of range", "2s"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\nconnect_timeout = \"soon\"\n",
            key: "uplink.connect_timeout",
            line: 4,
            words: &["not a duration"],
        },
        Case {
            text: "[uplink]\nclient_id = \"c\"\n",
            key: "uplink.host",
            line: 1,
            words: &["missing", "host ="],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ntls = \"mutual\"\ncert_file = \"/c.pem\"\n",
            key: "uplink.key_file",
            line: 1,
            words: &["missing", "private key"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\n\
                   [[uplink.rewrite]]\nlocal = \"site/+/#\"\ncloud = \"d/{2}/{#}\"\n",
            key: "uplink.rewrite[0].cloud",
            line: 6,
            words: &["{2}", "1 '+' level"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\n\
                   [[uplink.commands]]\ncloud = \"cmd/{device_id}/#\"\n",
            key: "uplink.commands[0].local",
            line: 4,
            words: &["missing", "both `local` and `cloud`"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ndevice_id = \"a/b\"\n",
            key: "uplink.device_id",
            line: 4,
            words: &["one topic level"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\nmessage_id_property = \"id\"\n",
            key: "uplink.message_id_property",
            line: 4,
            words: &["MQTT 3.1.1 has no user properties", "mqtt = \"5\""],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\nstale_crl = \"ignore\"\n",
            key: "uplink.stale_crl",
            line: 4,
            words: &["unknown stale CRL policy", "\"refuse\"", "\"warn\""],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\nusername = \"u\"\n",
            key: "uplink.username",
            line: 4,
            words: &["a user name without a password", "password_file"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\npassword_file = \"/p\"\n",
            key: "uplink.username",
            line: 1,
            words: &["missing", "user name"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\nusername = \"u\"\npassword_file = \"/p\"\n\
                   [uplink.jwt]\nkey_file = \"/k\"\naudience = \"a\"\n",
            key: "uplink.jwt",
            line: 6,
            words: &["only one way to log in", "uplink.password_file"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\n[uplink.jwt]\naudience = \"a\"\n",
            key: "uplink.jwt.key_file",
            line: 4,
            words: &["missing", "P-256 or RSA"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\n[uplink.jwt]\nkey_file = \"/k\"\n\
                   audience = \"a\"\nclaims = { exp = 5 }\n",
            key: "uplink.jwt.claims",
            line: 7,
            words: &["`exp` is set by the gateway", "lifetime"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\n[uplink.azure_sas]\nkey_file = \"/k\"\n\
                   lifetime = \"2s\"\n",
            key: "uplink.azure_sas.lifetime",
            line: 6,
            words: &["out of range"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\nmin_tls_version = \"1.1\"\n",
            key: "uplink.min_tls_version",
            line: 4,
            words: &["not a TLS version fieldlink allows"],
        },
        Case {
            text: "[[broker.listeners]]\nport = 8883\ntls = \"mutual\"\ncert_file = \"/b.pem\"\nkey_file = \"/b.key\"\n",
            key: "broker.listeners[0].ca_file",
            line: 1,
            words: &["missing", "CAs that issue device certificates"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ntls = \"mutual\"\ncert_file = \"/c.pem\"\n\
                   key_file = \"/c.key\"\nkey_uri = \"pkcs11:token=t;object=k\"\n",
            key: "uplink.key_file",
            line: 6,
            words: &["both key_file and key_uri", "keep one"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ntls = \"mutual\"\ncert_file = \"/c.pem\"\n\
                   key_uri = \"/etc/fieldlink/c.key\"\n",
            key: "uplink.key_uri",
            line: 6,
            words: &["not a pkcs11: URI", "key_file"],
        },
        Case {
            text: "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ntls = \"mutual\"\ncert_file = \"/c.pem\"\n\
                   key_uri = \"pkcs11:token=t;object=k?pin-value=4321\"\n",
            key: "uplink.key_uri",
            line: 6,
            words: &["the URI carries a PIN", "pin_file"],
        },
        Case {
            text: "[[broker.listeners]]\nport = 8883\ntls = \"server-auth\"\ncert_file = \"/b.pem\"\n\
                   key_uri = \"file:b.key\"\n",
            key: "broker.listeners[0].key_uri",
            line: 5,
            words: &["not a pkcs11: URI"],
        },
        Case {
            text: "[keys]\npin_file = \"/etc/fieldlink/token.pin\"\n",
            key: "keys.module",
            line: 1,
            words: &["missing", "module ="],
        },
        Case {
            text: "[keys]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\n",
            key: "keys.pin_file",
            line: 1,
            words: &["missing", "0600", "pin_credential"],
        },
        Case {
            text: "[keys]\nmodule = \"/m.so\"\npin_file = \"/p\"\npin_credential = \"token-pin\"\n",
            key: "keys.pin_file",
            line: 3,
            words: &["both pin_file and pin_credential"],
        },
        Case {
            text: "[keys]\nmodule = \"/m.so\"\npin_credential = \"../pin\"\n",
            key: "keys.pin_credential",
            line: 3,
            words: &["not a credential name", "LoadCredential="],
        },
        Case {
            text: "[[broker.listeners]]\nport = 8883\ntls = \"ssl3\"\n",
            key: "broker.listeners[0].tls",
            line: 3,
            words: &["unknown TLS mode", "\"mutual\""],
        },
        Case {
            text: "[[broker.listeners]]\nport = 8883\nclient_id = \"whatever\"\n",
            key: "broker.listeners[0].client_id",
            line: 3,
            words: &["unknown client id rule", "\"prefix\""],
        },
        Case {
            text: "[broker]\nsegment_size = 512\n",
            key: "broker.segment_size",
            line: 2,
            words: &["out of range", "1024"],
        },
        Case {
            text: "[[broker.acl]]\nusers = [\"a\"]\npublish = [\"ok/#\", \"a/%x/#\"]\n",
            key: "broker.acl[0].publish[1]",
            line: 3,
            words: &["unknown placeholder", "\"%x\"", "%u", "%c", "a/%x/#"],
        },
        Case {
            text: "[[broker.acl]]\nsubscribe = [\"site/#/temp\"]\n",
            key: "broker.acl[0].subscribe[0]",
            line: 2,
            words: &["not a valid topic filter", "'#'", "hint"],
        },
        Case {
            text: "[[broker.acl]]\npublish = [\"a/+%u\"]\n",
            key: "broker.acl[0].publish[0]",
            line: 2,
            words: &["'+' must be alone"],
        },
        Case {
            text: "[[broker.acl]]\nusers = [\"a\"]\nsubscribe = []\n",
            key: "broker.acl[0]",
            line: 1,
            words: &["allows nothing", "publish", "subscribe"],
        },
        Case {
            text: "[[broker.acl]]\npublish = [\"a\"]\n[[broker.acl]]\npublish = [\"b\"]\n\
                   [[broker.acl]]\ngroups = [\"night shift\"]\npublish = [\"c\"]\n",
            key: "broker.acl[2].groups[0]",
            line: 6,
            words: &["not a valid group name", "spaces"],
        },
        Case {
            text: "[[broker.acl]]\nusers = [\"\"]\npublish = [\"c\"]\n",
            key: "broker.acl[0].users[0]",
            line: 2,
            words: &["must not be empty"],
        },
        Case {
            text: "[[broker.acl]]\npublish = [\"c\"]\npublsh = [\"d\"]\n",
            key: "broker.acl[0].publsh",
            line: 3,
            words: &["unknown key", "publish"],
        },
        Case {
            text: "[broker]\ncredentials_file = \"\"\n",
            key: "broker.credentials_file",
            line: 2,
            words: &["must not be empty", "fieldlink credentials add"],
        },
        Case {
            text: "[[devices]]\nname = \"m\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n\
                   [[devices.points]]\nname = \"t\"\ntable = \"holding\"\naddress = 0\ntype = \"float\"\n",
            key: "devices[0].points[0].type",
            line: 9,
            words: &["unknown data type", "\"f32\"", "= \"float\""],
        },
        Case {
            text: "[[devices]]\nname = \"m\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n\
                   [[devices.points]]\nname = \"s\"\ntable = \"input\"\naddress = 0\ntype = \"string\"\n\
                   length = 300\n",
            key: "devices[0].points[0].length",
            line: 10,
            words: &["out of range", "1 to 250"],
        },
        Case {
            text: "[[devices]]\nname = \"m\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n\
                   [[devices.points]]\nname = \"s\"\ntable = \"input\"\naddress = 0\ntype = \"string\"\n",
            key: "devices[0].points[0].length",
            line: 9,
            words: &["needs a length", "length = 16"],
        },
        Case {
            text: "[bridge]\nvalue_topic = \"{site}/{dev}/{point}\"\n",
            key: "bridge.value_topic",
            line: 2,
            words: &["unknown placeholder {dev}", "{device}"],
        },
        Case {
            text: "[[devices]]\nname = \"m\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n\
                   [[devices.points]]\nname = \"a\"\ntable = \"coil\"\naddress = 0\ntype = \"bool\"\n\
                   [[devices]]\nname = \"m\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:503\"\n\
                   [[devices.points]]\nname = \"a\"\ntable = \"coil\"\naddress = 0\ntype = \"bool\"\n",
            key: "devices[1].name",
            line: 11,
            words: &["another device has this name", "= \"m\""],
        },
        Case {
            text: "[[devices]]\nname = \"m\"\nprotocol = \"modbus-rtu\"\nport = \"/dev/ttyS0\"\nunit = 1\n\
                   rs485 = true\n[[devices.points]]\nname = \"a\"\ntable = \"coil\"\naddress = 0\ntype = \"bool\"\n",
            key: "devices[0].rs485",
            line: 6,
            words: &["TIOCSRS485", "device tree"],
        },
        Case {
            text: "[[devices]]\nname = \"m\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n\
                   [[devices.points]]\nname = \"a\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n\
                   writable = true\n",
            key: "devices[0].points[0].writable",
            line: 10,
            words: &["only holding registers and coils"],
        },
        Case {
            text: "[[devices]]\nname = \"gps\"\nprotocol = \"lines\"\nport = \"/dev/ttyS1\"\n\
                   format = \"regex\"\npattern = 'T=(?P<temp>[0-9.]+)'\n\
                   [[devices.points]]\nname = \"tmp\"\n",
            key: "devices[0].points[0].name",
            line: 8,
            words: &["no capture of this name", "temp"],
        },
        Case {
            text: "[broker\nmax_connections = 5\n",
            key: "",
            line: 1,
            words: &["not valid TOML"],
        },
    ];
    for case in cases {
        let errors = errors_of(case.text);
        assert_eq!(errors.len(), 1, "{}: {errors:#?}", case.text);
        let e = &errors[0];
        assert_eq!(e.key, case.key, "{}", case.text);
        assert_eq!(
            e.position.map(|p| p.0),
            Some(case.line),
            "{}: {e}",
            case.text
        );
        let shown = e.to_string();
        assert!(shown.starts_with("test.toml:"), "{shown}");
        for word in case.words {
            assert!(
                shown.contains(word),
                "{:?} lacks {word:?}: {shown}",
                case.text
            );
        }
    }
}

#[test]
fn all_mistakes_are_reported_at_once_in_file_order() {
    let text = "\
[gateway]
shutdown_grace = \"forever\"
colour = \"blue\"

[broker]
max_connections = 0
[[broker.listeners]]
port = 1883
protocol = \"tcp\"

[[routes]]
name = \"t\"
filter = \"a/+b\"
";
    let errors = errors_of(text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "gateway.shutdown_grace",
            "gateway.colour",
            "broker.max_connections",
            "broker.listeners[0].protocol",
            "routes[0].filter",
        ]
    );
    let lines: Vec<usize> = errors.iter().map(|e| e.position.unwrap().0).collect();
    assert_eq!(lines, [2, 3, 6, 9, 13]);
}

#[test]
fn secret_values_are_never_echoed() {
    let errors = errors_of("[gateway]\nadmin_password = \"hunter2\"\n");
    let shown = ConfigErrors(errors).to_string();
    assert!(shown.contains("admin_password"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    // A password written into the file instead of a password file: refused, never shown.
    let errors = errors_of("[uplink]\nhost = \"h\"\nclient_id = \"c\"\npassword = \"hunter2\"\n");
    let shown = ConfigErrors(errors).to_string();
    assert!(shown.contains("uplink.password"), "{shown}");
    assert!(shown.contains("password_file"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn the_shipped_config_equals_the_built_in_defaults_with_the_web_ui_on() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/fieldlink.toml");
    let (settings, origin) = load(&ConfigSource::Explicit(path.clone())).unwrap();
    assert_eq!(origin, Origin::File(path));
    assert_eq!(
        settings,
        Settings {
            web: Some(fieldlink_web::config::WebSettings::default()),
            ..Settings::default()
        }
    );
}

#[test]
fn an_empty_file_gives_the_defaults() {
    assert_eq!(parse("", origin()).unwrap(), Settings::default());
}

#[test]
fn a_full_config_is_read_into_settings() {
    let settings = parse(
        "[gateway]\ndata_dir = \"/srv/fl\"\nshutdown_grace = \"250ms\"\n\
         [[broker.listeners]]\nname = \"lan\"\nbind = \"::\"\nport = 8883\nmqtt = \"5\"\n\
         [queue]\nmax_age = \"0s\"\nwhen_full = \"drop_oldest\"\n\
         [[routes]]\nname = \"alarms\"\nfilter = \"+/alarm/#\"\npriority = \"high\"\n\
         max_messages = 10\nwhen_full = \"drop_newest\"\n",
        origin(),
    )
    .unwrap();
    assert_eq!(settings.gateway.data_dir, Some(PathBuf::from("/srv/fl")));
    assert_eq!(settings.gateway.shutdown_grace, Duration::from_millis(250));
    let lan = &settings.broker.listeners[0];
    assert_eq!(
        (lan.name.as_str(), lan.addr.to_string().as_str(), lan.mqtt),
        ("lan", "[::]:8883", Some(MqttVersion::V5))
    );
    assert!(
        !lan.anonymous,
        "no anonymous access from the network unless asked for"
    );
    assert_eq!(settings.routes[0].filter.as_str(), "+/alarm/#");
    assert_eq!(settings.routes[0].priority, Priority::High);
    assert_eq!(settings.queue.max_age, None, "0s keeps messages for ever");
    assert_eq!(settings.queue.when_full, FullPolicy::DropOldest);
    let limits = settings.routes[0].limits;
    assert_eq!(
        (limits.max_messages, limits.when_full),
        (Some(10), Some(FullPolicy::DropNewest))
    );
}

#[test]
fn a_missing_explicit_file_is_an_error_but_a_missing_default_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = load(&ConfigSource::Explicit(missing.clone())).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("nope.toml") && shown.contains("does not exist"),
        "{shown}"
    );
    assert!(shown.contains("--config"), "{shown}");
    let (settings, origin) = load(&ConfigSource::DefaultPath(missing)).unwrap();
    assert_eq!((settings, origin), (Settings::default(), Origin::BuiltIn));
}

#[test]
fn an_unreadable_file_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be read as a file, even by root (mode bits would not stop root).
    let err = load(&ConfigSource::Explicit(dir.path().to_path_buf())).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("cannot be read"), "{shown}");
    assert!(shown.contains(&dir.path().display().to_string()), "{shown}");
}

#[test]
fn a_mutual_tls_listener_is_read_into_settings() {
    let settings = parse(
        "[[broker.listeners]]\nname = \"devices\"\nbind = \"0.0.0.0\"\nport = 8884\n\
         tls = \"mutual\"\ncert_file = \"/b.pem\"\nkey_file = \"/b.key\"\nca_file = \"/ca.pem\"\n\
         crl_files = [\"/ca.crl\"]\nstale_crl = \"warn\"\nidentity = \"san\"\nclient_id = \"prefix\"\nmin_tls_version = \"1.3\"\n",
        origin(),
    )
    .unwrap();
    let l = &settings.broker.listeners[0];
    assert_eq!(
        l.tls,
        ListenerTls::Mutual {
            cert_file: "/b.pem".into(),
            key: fieldlink_core::tls::KeyRef::File("/b.key".into()),
            ca_file: "/ca.pem".into(),
            crl_files: vec!["/ca.crl".into()],
            stale_crl: fieldlink_core::crl::StaleCrl::Warn,
            identity: CertIdentity::SubjectAltName,
        }
    );
    assert_eq!(l.client_id, ClientIdRule::Prefix);
    assert_eq!(l.min_tls_version, MinTlsVersion::Tls13);
    assert!(!l.anonymous);
    assert_eq!(l.mqtt, None, "both versions unless told");
}

#[test]
fn uplink_logins_are_read_into_settings() {
    let uplink = |text: &str| {
        parse(
            &format!("[uplink]\nhost = \"hub.azure-devices.net\"\nclient_id = \"gw-7\"\n{text}"),
            origin(),
        )
        .unwrap()
        .uplink
        .unwrap()
        .credentials
    };
    assert_eq!(uplink(""), None);
    assert_eq!(
        uplink("username = \"u\"\npassword_file = \"/run/credentials/fieldlink.service/uplink\"\n"),
        Some(UplinkCredentials::Password {
            username: "u".into(),
            password_file: PathBuf::from("/run/credentials/fieldlink.service/uplink"),
        })
    );
    assert_eq!(
        uplink(
            "device_id = \"site-7\"\n[uplink.jwt]\nkey_file = \"/k\"\naudience = \"fieldlink\"\n\
             claims = { scope = [\"fieldlink.write:*/*/*\"] }\n"
        ),
        Some(UplinkCredentials::Jwt(JwtSettings {
            username: "gw-7".into(),
            key: fieldlink_core::tls::KeyRef::File(PathBuf::from("/k")),
            audience: "fieldlink".into(),
            subject: "site-7".into(),
            lifetime: Duration::from_secs(3600),
            key_id: None,
            claims: r#"{"scope":["fieldlink.write:*/*/*"]}"#.into(),
        }))
    );
    assert_eq!(
        uplink("[uplink.azure_sas]\nkey_file = \"/k\"\nlifetime = \"30m\"\n"),
        Some(UplinkCredentials::AzureSas {
            key_file: PathBuf::from("/k"),
            lifetime: Duration::from_secs(1800),
        })
    );
}

#[test]
fn an_uplink_section_is_read_into_settings() {
    let settings = parse(
        "[uplink]\nhost = \"mqtt.example.com\"\nport = 443\nclient_id = \"gw-7\"\nmqtt = \"5\"\n\
         tls = \"mutual\"\nca_file = \"/etc/fl/ca.pem\"\ncert_file = \"/etc/fl/c.pem\"\n\
         key_file = \"/etc/fl/c.key\"\nmin_tls_version = \"1.3\"\nalpn = [\"x-amzn-mqtt-ca\"]\n\
         crl_files = [\"/etc/fl/ca.crl\"]\ntopic_prefix = \"plant-3/\"\non_rejected = \"drop\"\n\
         alarm_topic = \"plant-3/alarms\"\n\
         [[uplink.rewrite]]\nlocal = \"site/+/alarm/#\"\ncloud = \"alarms/{device_id}/{1}/{#}\"\n\
         [[uplink.commands]]\ncloud = \"cmd/{device_id}/#\"\nlocal = \"cmd/{#}\"\n",
        origin(),
    )
    .unwrap();
    let uplink = settings.uplink.unwrap();
    assert_eq!(
        (uplink.host.as_str(), uplink.port, uplink.mqtt),
        ("mqtt.example.com", 443, MqttVersion::V5)
    );
    assert_eq!(
        uplink.tls,
        UplinkTls::Mutual {
            ca_file: Some(PathBuf::from("/etc/fl/ca.pem")),
            cert_file: PathBuf::from("/etc/fl/c.pem"),
            key: fieldlink_core::tls::KeyRef::File(PathBuf::from("/etc/fl/c.key")),
        }
    );
    assert_eq!(uplink.min_tls_version, MinTlsVersion::Tls13);
    assert_eq!(uplink.alpn, ["x-amzn-mqtt-ca"]);
    assert_eq!(uplink.on_rejected, OnRejected::Drop);
    assert_eq!(
        uplink.message_id_property.as_deref(),
        Some("fieldlink-id"),
        "MQTT 5 carries the message id by default"
    );
    assert_eq!(uplink.inflight, 100);
    assert_eq!(uplink.device_id, "gw-7", "the client id when not given");
    let topic = |t: &str| TopicName::new(t).unwrap();
    let rewritten = uplink.rewrites[0].apply(&topic("site/boiler/alarm/hot"));
    assert_eq!(rewritten.unwrap().as_str(), "alarms/gw-7/boiler/hot");
    assert_eq!(uplink.commands[0].filter().as_str(), "cmd/gw-7/#");
    let local = uplink.commands[0].apply(&topic("cmd/gw-7/valve/open"));
    assert_eq!(local.unwrap().as_str(), "cmd/valve/open");
    assert!(
        Settings::default().uplink.is_none(),
        "no uplink unless configured"
    );
}

#[test]
fn access_rules_are_read_into_settings() {
    let settings = parse(
        "[broker]\ncredentials_file = \"/etc/fieldlink/credentials\"\n\
         [[broker.acl]]\nusers = [\"alice\"]\ngroups = [\"ops\"]\npublish = [\"site/#\"]\n\
         [[broker.acl]]\nsubscribe = [\"devices/%c/cmd/#\", \"users/%u-inbox\"]\n",
        origin(),
    )
    .unwrap();
    let access = settings.broker.access;
    assert_eq!(
        access.credentials_file,
        Some(PathBuf::from("/etc/fieldlink/credentials"))
    );
    assert_eq!(access.acl.len(), 2);
    assert_eq!(access.acl[0].users, ["alice"]);
    assert_eq!(access.acl[0].groups, ["ops"]);
    assert_eq!(access.acl[0].publish[0].as_str(), "site/#");
    assert!(access.acl[0].subscribe.is_empty());
    assert!(access.acl[1].is_for_everyone());
    assert_eq!(access.acl[1].subscribe[1].as_str(), "users/%u-inbox");
    assert_eq!(Settings::default().broker.access, AccessSettings::default());
}

#[test]
fn every_bad_acl_pattern_is_reported_at_once() {
    let errors = errors_of(
        "[[broker.acl]]\npublish = [\"a/%z\", \"b/#/c\"]\n\
         [[broker.acl]]\nusers = [\"x\"]\n",
    );
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "broker.acl[0].publish[0]",
            "broker.acl[0].publish[1]",
            "broker.acl[1]"
        ]
    );
}

#[test]
fn devices_are_read_into_settings() {
    use fieldlink_serial::config::{DataType, LineFormat, Link, Order, Protocol, Source, Table};
    let settings = parse(
        "[bridge]\nsite = \"plant-3\"\nqos = 0\n\
         [[devices]]\nname = \"boiler\"\nprotocol = \"modbus-rtu\"\nport = \"/dev/ttyUSB0\"\n\
         baud = 19200\nparity = \"even\"\nunit = 7\ninterval = \"500ms\"\n\
         [[devices.points]]\nname = \"flow\"\ntable = \"holding\"\naddress = 10\ntype = \"f32\"\n\
         word_order = \"little\"\nscale = 10\nunit = \"l/min\"\nwritable = true\nmax = 100.0\n\
         [[devices]]\nname = \"gps\"\nprotocol = \"lines\"\nport = \"/dev/ttyUSB1\"\n\
         format = \"nmea\"\npattern = 'GPGGA,[^,]*,(?P<lat>[0-9.]+)'\n",
        origin(),
    )
    .unwrap();
    assert_eq!(settings.bridge.site, "plant-3");
    let boiler = &settings.devices[0];
    let Link::Serial(serial) = &boiler.link else {
        panic!("serial")
    };
    assert_eq!(serial.baud, 19200);
    assert_eq!(
        boiler.protocol,
        Protocol::Modbus {
            unit: 7,
            max_gap: 8
        }
    );
    let flow = &boiler.points[0];
    assert_eq!(flow.data_type, DataType::F32);
    assert_eq!(flow.interval, Duration::from_millis(500));
    assert!(flow.writable);
    assert_eq!(
        flow.source,
        Source::Register {
            table: Table::Holding,
            address: 10,
            word_order: Order::Little,
            byte_order: Order::Big
        }
    );
    let gps = &settings.devices[1];
    assert!(
        matches!(&gps.protocol, Protocol::Lines(l) if matches!(l.format, LineFormat::Nmea { .. }))
    );
    assert_eq!(gps.points[0].name, "lat", "a named capture is a point");
}

#[test]
fn the_commented_device_examples_in_the_shipped_config_are_valid() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/fieldlink.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let examples = text
        .split("# Field devices.")
        .nth(1)
        .expect("the shipped config has device examples");
    let uncommented: String = examples
        .lines()
        .filter_map(|l| l.strip_prefix("# ").or_else(|| l.strip_prefix('#')))
        .map(|l| format!("{l}\n"))
        .collect();
    let settings = parse(&uncommented, origin()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = settings.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["boiler", "plc", "gps"]);
}

#[test]
fn the_commented_uplink_timings_in_the_shipped_config_are_the_defaults() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/fieldlink.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let timing_keys = ["keep_alive", "stall_timeout", "connect_timeout"];
    let lines: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| timing_keys.iter().any(|k| l.starts_with(&format!("{k} ="))))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(lines.lines().count(), timing_keys.len(), "{lines}");
    let parsed = parse(
        &format!("[uplink]\nhost = \"h\"\nclient_id = \"c\"\n{lines}"),
        origin(),
    )
    .unwrap()
    .uplink
    .unwrap();
    let defaults = parse("[uplink]\nhost = \"h\"\nclient_id = \"c\"\n", origin())
        .unwrap()
        .uplink
        .unwrap();
    assert_eq!(parsed, defaults);
    assert_eq!(
        (defaults.stall_timeout, defaults.connect_timeout),
        (
            fieldlink_uplink::config::DEFAULT_STALL_TIMEOUT,
            fieldlink_uplink::config::DEFAULT_CONNECT_TIMEOUT
        )
    );
}

#[test]
fn the_commented_uplink_logins_in_the_shipped_config_are_valid() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/fieldlink.toml");
    let text = std::fs::read_to_string(path).unwrap();
    // Each example: from its first line to the next line that is only "#".
    let example = |first: &str| -> String {
        text.lines()
            .skip_while(|l| !l.starts_with(first))
            .take_while(|l| *l != "#")
            .filter_map(|l| l.strip_prefix("# "))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let uplink = "[uplink]\nhost = \"h\"\nclient_id = \"c\"\n";
    for login in [
        example("# username ="),
        example("# [uplink.jwt]"),
        example("# [uplink.azure_sas]"),
    ] {
        assert!(!login.is_empty());
        let settings =
            parse(&format!("{uplink}{login}"), origin()).unwrap_or_else(|e| panic!("{login}: {e}"));
        assert!(settings.uplink.unwrap().credentials.is_some(), "{login}");
    }
}

#[test]
fn a_key_in_a_token_is_named_by_its_uri_and_reached_through_keys() {
    let text = "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ntls = \"mutual\"\n\
                cert_file = \"/c.pem\"\nkey_uri = \"pkcs11:token=gw-token;object=uplink\"\n\
                [keys]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\npin_credential = \"token-pin\"\n";
    let settings = parse(text, Origin::BuiltIn).unwrap();
    let Some(UplinkTls::Mutual { key, .. }) = settings.uplink.map(|u| u.tls) else {
        panic!("mutual TLS expected");
    };
    assert_eq!(
        key,
        fieldlink_core::tls::KeyRef::Pkcs11("pkcs11:token=gw-token;object=uplink".into())
    );
    assert_eq!(
        settings.keys.pkcs11.map(|p| p.pin),
        Some(fieldlink_keys::config::PinSource::Credential(
            "token-pin".into()
        ))
    );

    // Without [keys] the token cannot be reached; a URI that names no key is refused; the PIN
    // of a refused URI is never shown.
    for (text, words) in [
        (
            "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ntls = \"mutual\"\ncert_file = \"/c.pem\"\n\
             key_uri = \"pkcs11:token=gw-token;object=uplink\"\n",
            "needs [keys] module and pin_file",
        ),
        (
            "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ntls = \"mutual\"\ncert_file = \"/c.pem\"\n\
             key_uri = \"pkcs11:token=gw-token\"\n[keys]\nmodule = \"/m.so\"\npin_file = \"/p\"\n",
            "names no key",
        ),
    ] {
        let errors = parse(text, Origin::BuiltIn).unwrap_err().to_string();
        assert!(errors.contains("uplink.key_uri"), "{errors}");
        assert!(errors.contains(words), "{errors}");
    }
    let errors = parse(
        "[uplink]\nhost = \"h\"\nclient_id = \"c\"\ntls = \"mutual\"\ncert_file = \"/c.pem\"\n\
         key_uri = \"pkcs11:token=t;object=k?pin-value=4321\"\n",
        Origin::BuiltIn,
    )
    .unwrap_err()
    .to_string();
    assert!(!errors.contains("4321"), "{errors}");
}

#[test]
fn the_commented_ota_section_in_the_shipped_config_is_the_defaults() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/fieldlink.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let section: String = text
        .lines()
        .skip_while(|l| *l != "# [ota]")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix("# "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(section.contains("health_checks"), "{section}");
    let settings = parse(&section, origin()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        settings.ota,
        Some(fieldlink_ota::config::OtaSettings::default())
    );
    assert_eq!(
        parse("", origin()).unwrap().ota,
        None,
        "no agent unless asked"
    );
}

#[test]
fn ota_mistakes_are_reported_with_their_keys() {
    let errors = errors_of(
        "[ota]\ncommand_topic = \"ota/#\"\ndbus = \"session\"\nreboot_command = []\n\
         health_checks = [\"uplink\", \"moon\"]\nhealth_deadline = \"10s\"\nhealth_settle = \"1m\"\n\
         keep_free = -1\n",
    );
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "ota.command_topic",
        "ota.dbus",
        "ota.reboot_command",
        "ota.health_checks",
        "ota.health_settle",
        "ota.keep_free",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let settings = parse("[ota]\nenabled = false\n", origin()).unwrap();
    assert_eq!(settings.ota, None);
}
