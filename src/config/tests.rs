//! Tests of configuration loading: file/key/reason errors, drop-in merging, CLI overrides.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

const MACHINE_ID: &str = "0123456789ABCDEF0123456789abcdef\n";
const ENDPOINT_FROM_MACHINE_ID: &str = "urn:uuid:01234567-89ab-cdef-0123-456789abcdef";

/// A fake root: `etc/lwm2md/config.toml`, `etc/lwm2md/config.d/`, `etc/machine-id`.
struct Root {
    dir: TempDir,
}

impl Root {
    fn new() -> Self {
        let root = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(root.path("etc/lwm2md/config.d")).unwrap();
        root.write("etc/machine-id", MACHINE_ID);
        root
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        fs::write(&path, text).unwrap();
        path
    }

    fn main(&self, text: &str) -> PathBuf {
        self.write("etc/lwm2md/config.toml", text)
    }

    fn drop_in(&self, name: &str, text: &str) -> PathBuf {
        self.write(&format!("etc/lwm2md/config.d/{name}"), text)
    }

    fn env(&self) -> Environment {
        Environment::rooted_at(self.dir.path(), Some("gw-test"))
    }

    fn load(&self) -> Result<Settings, ConfigError> {
        self.load_with(&Overrides::default())
    }

    fn load_with(&self, overrides: &Overrides) -> Result<Settings, ConfigError> {
        load(overrides, &self.env())
    }

    /// Loads and returns the error message, failing the test if loading succeeds.
    fn error(&self) -> String {
        match self.load() {
            Ok(settings) => panic!("expected an error, got {settings:#?}"),
            Err(e) => e.to_string(),
        }
    }
}

const ONE_SERVER: &str = r#"
[[server]]
uri = "coap://127.0.0.1"
short_id = 1
"#;

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error message lacks {part:?}:\n{message}"
        );
    }
}

#[test]
fn full_example_parses_into_the_expected_settings() {
    let root = Root::new();
    root.main(
        r#"
[agent]
endpoint = "urn:dev:os:acme-gw-0042"
state_dir = "/var/lib/lwm2md-test"
log_level = "debug"

[coap]
ack_timeout = 3.5
ack_random_factor = 1.25
max_retransmit = 5
block_size = 256
max_body_size = 131072

[registration]
retry_initial = 30
retry_max = 7200

[observe]
sample_interval = 20

[[server]]
uri = "coap://lwm2m.example.net:5683/rd"
short_id = 101
lifetime = 3600
default_pmin = 5
default_pmax = 600
disable_timeout = 120
notification_storing = false
binding = "UQ"
notification_mode = "con"
lwm2m_version = "1.1"
content_format = "senml-json"

[[server]]
uri = "coap://[2001:db8::7]"
short_id = 102
lwm2m_version = "1.0"

[device]
manufacturer = "ACME"
model = "GW-1"
serial = "SN42"
firmware_version = "1.2.3"
hardware_version = "rev B"
device_type = "router"
reboot_command = ["/usr/sbin/reboot", "--force"]
factory_reset_command = ["/usr/libexec/acme/factory-reset"]

[connectivity]
modem_manager = false
ignore_interfaces = ["lo", "veth*", "docker0"]
"#,
    );
    let s = root.load().unwrap();

    assert_eq!(
        s.agent,
        AgentSettings {
            endpoint: "urn:dev:os:acme-gw-0042".into(),
            state_dir: "/var/lib/lwm2md-test".into(),
            log_level: LogLevel::Debug,
        }
    );
    assert_eq!(s.coap.ack_timeout, Duration::from_millis(3500));
    assert_eq!(s.coap.ack_random_factor, 1.25);
    assert_eq!(s.coap.max_retransmit, 5);
    assert_eq!(s.coap.block_size.get(), 256);
    assert_eq!(s.coap.block_size.szx(), 4);
    assert_eq!(s.coap.max_body_size, 131072);
    assert_eq!(s.registration.retry_initial, Duration::from_secs(30));
    assert_eq!(s.registration.retry_max, Duration::from_secs(7200));
    assert_eq!(s.observe.sample_interval, Duration::from_secs(20));

    assert_eq!(s.servers.len(), 2);
    let a = &s.servers[0];
    assert_eq!(a.uri.host(), &ServerHost::Name("lwm2m.example.net".into()));
    assert_eq!(a.uri.port(), 5683);
    assert_eq!(a.uri.path_segments(), ["rd"]);
    assert_eq!(a.short_id.get(), 101);
    assert_eq!(a.lifetime, Duration::from_secs(3600));
    assert_eq!(a.default_pmin, Duration::from_secs(5));
    assert_eq!(a.default_pmax, Some(Duration::from_secs(600)));
    assert_eq!(a.disable_timeout, Duration::from_secs(120));
    assert!(!a.notification_storing);
    assert_eq!(a.binding.as_str(), "UQ");
    assert_eq!(a.notification_mode, NotificationMode::Con);
    assert_eq!(a.lwm2m_version, Lwm2mVersion::V1_1);
    assert_eq!(a.content_format, ContentFormat::SenmlJson);
    let b = &s.servers[1];
    assert_eq!(
        b.uri.host(),
        &ServerHost::Ip("2001:db8::7".parse().unwrap())
    );
    assert_eq!(b.short_id.get(), 102);
    assert_eq!(b.lwm2m_version, Lwm2mVersion::V1_0);
    // The documented version-dependent default.
    assert_eq!(b.content_format, ContentFormat::Tlv);

    let d = &s.device;
    assert_eq!(d.manufacturer.as_deref(), Some("ACME"));
    assert_eq!(d.model.as_deref(), Some("GW-1"));
    assert_eq!(d.serial.as_deref(), Some("SN42"));
    assert_eq!(d.firmware_version.as_deref(), Some("1.2.3"));
    assert_eq!(d.hardware_version.as_deref(), Some("rev B"));
    assert_eq!(d.device_type, "router");
    let reboot = d.reboot_command.as_ref().unwrap();
    assert_eq!(reboot.program(), Path::new("/usr/sbin/reboot"));
    assert_eq!(reboot.args(), ["--force"]);
    let reset = d.factory_reset_command.as_ref().unwrap();
    assert_eq!(
        reset.program(),
        Path::new("/usr/libexec/acme/factory-reset")
    );
    assert!(reset.args().is_empty());

    assert!(!s.connectivity.modem_manager);
    let ignored = &s.connectivity.ignore_interfaces;
    assert_eq!(ignored.len(), 3);
    assert!(ignored[0].matches("lo") && !ignored[0].matches("lo0"));
    assert!(ignored[1].matches("veth1234") && !ignored[1].matches("eth0"));
    assert!(ignored[2].matches("docker0"));
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let root = Root::new();
    root.main(ONE_SERVER);
    let s = root.load().unwrap();

    assert_eq!(s.agent.endpoint, ENDPOINT_FROM_MACHINE_ID);
    assert_eq!(s.agent.state_dir, Path::new("/var/lib/lwm2md"));
    assert_eq!(s.agent.log_level, LogLevel::Info);
    assert_eq!(s.coap.ack_timeout, Duration::from_secs(2));
    assert_eq!(s.coap.ack_random_factor, 1.5);
    assert_eq!(s.coap.max_retransmit, 4);
    assert_eq!(s.coap.block_size.get(), 1024);
    assert_eq!(s.coap.max_body_size, 65536);
    assert_eq!(s.registration.retry_initial, Duration::from_secs(15));
    assert_eq!(s.registration.retry_max, Duration::from_secs(3600));
    assert_eq!(s.observe.sample_interval, Duration::from_secs(10));
    let server = &s.servers[0];
    assert_eq!(server.uri.port(), 5683);
    assert_eq!(server.lifetime, Duration::from_secs(86400));
    assert_eq!(server.default_pmin, Duration::ZERO);
    assert_eq!(server.default_pmax, None);
    assert_eq!(server.disable_timeout, Duration::from_secs(86400));
    assert!(server.notification_storing);
    assert_eq!(server.binding.as_str(), "U");
    assert_eq!(server.notification_mode, NotificationMode::Non);
    assert_eq!(server.lwm2m_version, Lwm2mVersion::V1_1);
    assert_eq!(server.content_format, ContentFormat::SenmlCbor);
    assert_eq!(s.device.device_type, "gateway");
    assert_eq!(s.device.manufacturer, None);
    assert_eq!(s.device.reboot_command, None);
    assert_eq!(s.device.factory_reset_command, None);
    assert!(s.connectivity.modem_manager);
    assert_eq!(
        s.connectivity.ignore_interfaces,
        [InterfacePattern::new("lo").unwrap()]
    );
}

#[test]
fn readme_example_parses() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("### Example\n\n```toml\n")
        .expect("README has an example");
    let example = &readme[start..]["### Example\n\n```toml\n".len()..];
    let example = &example[..example.find("```").unwrap()];
    let s = Settings::from_toml(example, &Root::new().env()).unwrap();
    assert_eq!(s.agent.endpoint, "urn:dev:os:acme-gw-0042");
    assert_eq!(s.servers[0].short_id.get(), 101);
    assert_eq!(s.servers[0].lifetime, Duration::from_secs(3600));
}

/// The README's example error is exactly what the loader prints for that mistake.
#[test]
fn readme_error_example_is_what_we_print() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("`/etc/lwm2md/config.d/10-site.toml: ")
        .expect("README has an example error");
    let example = &readme[start + 1..];
    let example = &example[..example.find('`').unwrap()];

    let root = Root::new();
    root.main(ONE_SERVER);
    root.drop_in(
        "10-site.toml",
        "[[server]]\nuri = \"coap://127.0.0.1\"\nshort_id = 1\nlifetime = 0\n",
    );
    let message = root.error();
    let root_prefix = root.dir.path().display().to_string();
    assert_eq!(message.replacen(&root_prefix, "", 1), example);
}

/// Every kind of mistake, each in a drop-in over a valid main file, must name that drop-in,
/// the key path and the reason.
#[test]
fn every_error_names_file_key_and_reason() {
    let server = |extra: &str| format!("[[server]]\nuri = \"coap://h\"\nshort_id = 1\n{extra}\n");
    let cases: Vec<(String, &str, &[&str])> = vec![
        // Unknown keys, at every depth.
        (
            "[agnet]\nendpoint = \"x\"\n".into(),
            "agnet",
            &["unknown field", "line 1"],
        ),
        (
            "[agent]\nendpont = \"x\"\n".into(),
            "agent.endpont",
            &["unknown field", "line 2"],
        ),
        (
            server("lifetim = 5"),
            "server[0].lifetim",
            &["unknown field", "line 4"],
        ),
        (
            format!("{}{}", server(""), server("colour = 1")),
            "server[1].colour",
            &["unknown field", "line 8"],
        ),
        // Wrong types.
        (
            server("lifetime = \"1h\""),
            "server[0].lifetime",
            &["invalid type", "line 4"],
        ),
        (
            "[coap]\nblock_size = 1.5\n".into(),
            "coap.block_size",
            &["invalid type"],
        ),
        (
            "[device]\nreboot_command = \"/sbin/reboot\"\n".into(),
            "device.reboot_command",
            &["invalid type"],
        ),
        (
            "[device]\nreboot_command = [\"/sbin/reboot\", 1]\n".into(),
            "device.reboot_command[1]",
            &["invalid type"],
        ),
        ("server = 3\n".into(), "server", &["invalid type"]),
        // Syntax.
        (
            "[coap]\nblock_size = 12x\n".into(),
            "coap.block_size",
            &["line 2"],
        ),
        // Ranges and spellings.
        (
            server("lifetime = 0"),
            "server[0].lifetime",
            &["must be between 1 and 4294967295, found 0"],
        ),
        (
            server("default_pmin = -1"),
            "server[0].default_pmin",
            &["must be between 0 and 4294967295, found -1"],
        ),
        (
            server("default_pmin = 60\ndefault_pmax = 30"),
            "server[0].default_pmax",
            &["must not be less than default_pmin (60 s)"],
        ),
        (
            server("disable_timeout = 4294967296"),
            "server[0].disable_timeout",
            &["found 4294967296"],
        ),
        (
            server("binding = \"UX\""),
            "server[0].binding",
            &["letters U, T, S, N, Q", "\"UX\""],
        ),
        (
            server("binding = \"UU\""),
            "server[0].binding",
            &["each at most once"],
        ),
        (
            server("binding = \"T\""),
            "server[0].binding",
            &["must include U"],
        ),
        (
            server("notification_mode = \"confirmable\""),
            "server[0].notification_mode",
            &["\"non\", \"con\"", "\"confirmable\""],
        ),
        (
            server("lwm2m_version = \"1.2\""),
            "server[0].lwm2m_version",
            &["\"1.0\", \"1.1\"", "\"1.2\""],
        ),
        (
            server("content_format = \"json\""),
            "server[0].content_format",
            &["\"senml-cbor\", \"senml-json\", \"tlv\""],
        ),
        (
            server("lwm2m_version = \"1.0\"\ncontent_format = \"senml-cbor\""),
            "server[0].content_format",
            &["not defined by LwM2M 1.0"],
        ),
        (
            "[[server]]\nuri = \"coaps://h\"\nshort_id = 1\n".into(),
            "server[0].uri",
            &["coaps:// needs DTLS credentials", "security = \"psk\""],
        ),
        (
            server("security = \"psk\""),
            "server[0].security",
            &["needs a coaps:// URI"],
        ),
        (
            server("psk_identity = \"x\""),
            "server[0].security",
            &["need security = \"psk\""],
        ),
        (
            "[[server]]\nuri = \"coaps://h\"\nshort_id = 1\nsecurity = \"nosec\"\n".into(),
            "server[0].security",
            &["cannot be used with a coaps:// URI"],
        ),
        (
            "[[server]]\nuri = \"coaps://h\"\nshort_id = 1\nsecurity = \"certificate\"\n".into(),
            "server[0].certificate_file",
            &["missing"],
        ),
        (
            server("security = \"certificate\""),
            "server[0].security",
            &["needs a coaps:// URI"],
        ),
        (
            server("server_name = \"x\""),
            "server[0].security",
            &["need security = \"certificate\""],
        ),
        (
            "[[server]]\nuri = \"coaps://h\"\nshort_id = 1\nsecurity = \"rpk\"\n".into(),
            "server[0].security",
            &["raw public keys are not supported"],
        ),
        (
            "[[server]]\nuri = \"coaps://h\"\nshort_id = 1\nsecurity = \"psk\"\n".into(),
            "server[0].psk_identity",
            &["missing"],
        ),
        (
            "[[server]]\nuri = \"coaps://h\"\nshort_id = 1\nsecurity = \"psk\"\n\
             psk_identity = \"d\"\npsk_key_file = \"rel/psk\"\n"
                .into(),
            "server[0].psk_key_file",
            &["must be an absolute path"],
        ),
        (
            "[[server]]\nuri = \"coap://h:99999\"\nshort_id = 1\n".into(),
            "server[0].uri",
            &["invalid port"],
        ),
        (
            "[[server]]\nuri = \"coap://h\"\nshort_id = 0\n".into(),
            "server[0].short_id",
            &["between 1 and 65534, found 0"],
        ),
        (
            "[[server]]\nuri = \"coap://h\"\nshort_id = 65535\n".into(),
            "server[0].short_id",
            &["found 65535"],
        ),
        (
            "[[server]]\nshort_id = 1\n".into(),
            "server[0].uri",
            &["missing"],
        ),
        (
            "[[server]]\nuri = \"coap://h\"\n".into(),
            "server[0].short_id",
            &["missing"],
        ),
        (
            format!("{}{}", server(""), server("")),
            "server[1].short_id",
            &["short id 1 is already used by server[0]"],
        ),
        (
            "server = []\n".into(),
            "server",
            &["no LwM2M server configured"],
        ),
        (
            "[coap]\nblock_size = 100\n".into(),
            "coap.block_size",
            &["16, 32, 64, 128, 256, 512 or 1024, found 100"],
        ),
        (
            "[coap]\nblock_size = 2048\n".into(),
            "coap.block_size",
            &["found 2048"],
        ),
        (
            "[coap]\nack_random_factor = 0.5\n".into(),
            "coap.ack_random_factor",
            &["at least 1.0, found 0.5"],
        ),
        (
            "[coap]\nack_random_factor = nan\n".into(),
            "coap.ack_random_factor",
            &["at least 1.0"],
        ),
        (
            "[coap]\nack_timeout = 0\n".into(),
            "coap.ack_timeout",
            &["more than 0"],
        ),
        (
            "[coap]\nack_timeout = 2000\n".into(),
            "coap.ack_timeout",
            &["at most 300"],
        ),
        (
            "[coap]\nmax_retransmit = 11\n".into(),
            "coap.max_retransmit",
            &["between 0 and 10, found 11"],
        ),
        (
            "[coap]\nmax_body_size = 0\n".into(),
            "coap.max_body_size",
            &["found 0"],
        ),
        (
            "[registration]\nretry_initial = 0\n".into(),
            "registration.retry_initial",
            &["found 0"],
        ),
        (
            "[registration]\nretry_initial = 60\nretry_max = 30\n".into(),
            "registration.retry_max",
            &["must not be less than registration.retry_initial (60 s)"],
        ),
        (
            "[registration]\nretry_initial = 7200\n".into(),
            "registration.retry_initial",
            &["3600 s, the default"],
        ),
        (
            "[observe]\nsample_interval = 0\n".into(),
            "observe.sample_interval",
            &["found 0"],
        ),
        (
            "[agent]\nlog_level = \"verbose\"\n".into(),
            "agent.log_level",
            &[
                "\"error\", \"warn\", \"info\", \"debug\", \"trace\"",
                "\"verbose\"",
            ],
        ),
        (
            "[agent]\nstate_dir = \"var/lib/x\"\n".into(),
            "agent.state_dir",
            &["absolute path"],
        ),
        (
            "[agent]\nendpoint = \"\"\n".into(),
            "agent.endpoint",
            &["1 to 252 bytes"],
        ),
        (
            "[agent]\nendpoint = \"a\\nb\"\n".into(),
            "agent.endpoint",
            &["control characters"],
        ),
        (
            "[device]\nreboot_command = []\n".into(),
            "device.reboot_command",
            &["must not be empty"],
        ),
        (
            "[device]\nfactory_reset_command = [\"wipe\", \"--all\"]\n".into(),
            "device.factory_reset_command[0]",
            &["absolute path", "\"wipe\""],
        ),
        (
            "[connectivity]\nignore_interfaces = [\"lo\", \"eth*0\"]\n".into(),
            "connectivity.ignore_interfaces[1]",
            &["\"eth*0\""],
        ),
        (
            "[connectivity]\nignore_interfaces = [\"much-too-long-name0\"]\n".into(),
            "connectivity.ignore_interfaces[0]",
            &["1 to 15 characters"],
        ),
    ];
    for (text, key, reasons) in cases {
        let root = Root::new();
        root.main(ONE_SERVER);
        let file = root.drop_in("50-broken.toml", &text);
        let message = root.error();
        let file_part = format!("{}: ", file.display());
        let key_part = format!(": {key}: ");
        assert!(message.starts_with(&file_part), "{text}\n→ {message}");
        assert_contains(&message, &[&key_part]);
        assert_contains(&message, reasons);
    }
}

#[test]
fn semantic_errors_name_the_file_that_set_the_key() {
    let root = Root::new();
    let main = root.main(&format!("{ONE_SERVER}\n[coap]\nblock_size = 100\n"));
    // Later drop-ins touch the same table without fixing the bad key.
    root.drop_in("10-a.toml", "[coap]\nmax_retransmit = 2\n");
    root.drop_in("20-b.toml", "[agent]\nlog_level = \"debug\"\n");
    let message = root.error();
    assert!(
        message.starts_with(&format!("{}: coap.block_size: ", main.display())),
        "{message}"
    );
    assert_contains(&message, &["(line 7, column 14)"]);

    // And the other way round: the drop-in set it, the main file is innocent.
    let root = Root::new();
    root.main(&format!("{ONE_SERVER}\n[coap]\nblock_size = 256\n"));
    let bad = root.drop_in("10-a.toml", "[coap]\nack_random_factor = 0.9\n");
    root.drop_in("20-b.toml", "[coap]\nblock_size = 512\n");
    let message = root.error();
    assert!(
        message.starts_with(&format!("{}: coap.ack_random_factor: ", bad.display())),
        "{message}"
    );
}

#[test]
fn a_replaced_server_list_takes_its_origin_with_it() {
    let root = Root::new();
    root.main("[[server]]\nuri = \"coap://h\"\nshort_id = 1\nlifetime = 0\n");
    // The drop-in replaces the whole list; its server lacks short_id, so the error is the
    // drop-in's even though the old list set server[0].short_id.
    let drop_in = root.drop_in("10-a.toml", "[[server]]\nuri = \"coap://h2\"\n");
    let message = root.error();
    assert!(
        message.starts_with(&format!(
            "{}: server[0].short_id: missing",
            drop_in.display()
        )),
        "{message}"
    );
}

#[test]
fn drop_ins_apply_in_lexical_order_tables_merge_arrays_replace() {
    let root = Root::new();
    root.main(
        r#"
[coap]
block_size = 128
max_retransmit = 2

[[server]]
uri = "coap://first"
short_id = 1

[[server]]
uri = "coap://second"
short_id = 2

[connectivity]
ignore_interfaces = ["lo", "docker*"]
"#,
    );
    // Written out of order on purpose: the directory order must not matter.
    root.drop_in("20-b.toml", "[coap]\nblock_size = 512\n");
    root.drop_in("10-a.toml", "[coap]\nblock_size = 256\nack_timeout = 3\n");
    root.drop_in(
        "30-servers.toml",
        "[[server]]\nuri = \"coap://third\"\nshort_id = 3\n",
    );
    root.drop_in(
        "40-net.toml",
        "[connectivity]\nignore_interfaces = [\"wg0\"]\n",
    );
    // Not drop-ins: wrong suffix, hidden, a directory. Each would break loading if read.
    root.drop_in("50-x.toml.bak", "garbage = [");
    root.drop_in(".60-hidden.toml", "garbage = [");
    fs::create_dir(root.path("etc/lwm2md/config.d/70-dir.toml")).unwrap();

    let s = root.load().unwrap();
    assert_eq!(s.coap.block_size.get(), 512, "the later file wins");
    assert_eq!(
        s.coap.max_retransmit, 2,
        "tables merge: untouched keys stay"
    );
    assert_eq!(s.coap.ack_timeout, Duration::from_secs(3));
    assert_eq!(
        s.servers.len(),
        1,
        "the server list is replaced, not appended"
    );
    assert_eq!(s.servers[0].short_id.get(), 3);
    assert_eq!(
        s.connectivity.ignore_interfaces,
        [InterfacePattern::new("wg0").unwrap()]
    );
}

#[test]
fn drop_in_only_configuration_without_main_file() {
    let root = Root::new();
    root.drop_in("10-server.toml", ONE_SERVER);
    let s = root.load().unwrap();
    assert_eq!(s.servers.len(), 1);
}

#[test]
fn missing_default_file_is_fine_missing_explicit_file_is_not() {
    let root = Root::new();
    // No file at all: the default may be absent, but then nothing names a server.
    let message = root.error();
    assert_contains(
        &message,
        &["etc/lwm2md/config.toml: server: no LwM2M server configured"],
    );

    let missing = root.path("nowhere/lwm2md.toml");
    let overrides = Overrides {
        config: Some(missing.clone()),
        ..Overrides::default()
    };
    let err = root.load_with(&overrides).unwrap_err();
    assert!(matches!(err, ConfigError::Read { ref file, .. } if *file == missing));
    assert_contains(&err.to_string(), &["nowhere/lwm2md.toml", "cannot read"]);
}

#[test]
fn explicit_config_file_reads_drop_ins_next_to_it() {
    let root = Root::new();
    root.main("[agent]\nendpoint = \"from-default-location\"\n");
    fs::create_dir_all(root.path("alt/config.d")).unwrap();
    let alt = root.write("alt/lwm2md.toml", ONE_SERVER);
    root.write(
        "alt/config.d/10.toml",
        "[agent]\nendpoint = \"from-alt-drop-in\"\n",
    );
    let overrides = Overrides {
        config: Some(alt),
        ..Overrides::default()
    };
    let s = root.load_with(&overrides).unwrap();
    assert_eq!(s.agent.endpoint, "from-alt-drop-in");
}

#[test]
fn command_line_overrides_win_over_files() {
    let root = Root::new();
    root.main(
        r#"
[agent]
endpoint = "file-endpoint"
state_dir = "/var/lib/file"
log_level = "warn"

[[server]]
uri = "coap://a"
short_id = 7
lifetime = 60

[[server]]
uri = "coap://b"
short_id = 8
"#,
    );
    let overrides = Overrides {
        config: None,
        server_uri: Some("coap://[::1]:5999".into()),
        endpoint: Some("cli-endpoint".into()),
        state_dir: Some("/tmp/state".into()),
        log_level: Some("trace".into()),
    };
    let s = root.load_with(&overrides).unwrap();
    assert_eq!(s.agent.endpoint, "cli-endpoint");
    assert_eq!(s.agent.state_dir, Path::new("/tmp/state"));
    assert_eq!(s.agent.log_level, LogLevel::Trace);
    assert_eq!(s.servers.len(), 1);
    let server = &s.servers[0];
    assert_eq!(server.short_id.get(), 1);
    assert_eq!(server.uri.host(), &ServerHost::Ip("::1".parse().unwrap()));
    assert_eq!(server.uri.port(), 5999);
    assert_eq!(
        server.lifetime,
        Duration::from_secs(86400),
        "the replacement server has defaults, not the file's values"
    );
}

#[test]
fn bad_command_line_values_name_the_flag() {
    let root = Root::new();
    root.main(ONE_SERVER);
    let cases = [
        (
            Overrides {
                server_uri: Some("coaps://h".into()),
                ..Overrides::default()
            },
            "command line --server-uri: server[0].uri: coaps:// needs DTLS credentials",
        ),
        (
            Overrides {
                log_level: Some("loud".into()),
                ..Overrides::default()
            },
            "command line --log-level: agent.log_level: must be one of",
        ),
        (
            Overrides {
                state_dir: Some("relative".into()),
                ..Overrides::default()
            },
            "command line --state-dir: agent.state_dir: must be an absolute path",
        ),
        (
            Overrides {
                endpoint: Some(String::new()),
                ..Overrides::default()
            },
            "command line --endpoint: agent.endpoint: must be 1 to 252 bytes",
        ),
    ];
    for (overrides, expected) in cases {
        let message = root.load_with(&overrides).unwrap_err().to_string();
        assert!(message.starts_with(expected), "{message}");
    }
}

#[test]
fn default_endpoint_comes_from_the_machine_id_then_the_host_name() {
    let root = Root::new();
    root.main(ONE_SERVER);
    assert_eq!(
        root.load().unwrap().agent.endpoint,
        ENDPOINT_FROM_MACHINE_ID
    );

    // Malformed machine ids (first boot, truncated, all zeros) fall back to the host name.
    for bad in [
        "",
        "uninitialized\n",
        "0123456789abcdef",
        "00000000000000000000000000000000\n",
        "0123456789abcdef0123456789abcdeg",
    ] {
        root.write("etc/machine-id", bad);
        assert_eq!(
            root.load().unwrap().agent.endpoint,
            "urn:dev:os:gw-test",
            "{bad:?}"
        );
    }
    fs::remove_file(root.path("etc/machine-id")).unwrap();
    assert_eq!(root.load().unwrap().agent.endpoint, "urn:dev:os:gw-test");

    // No usable host name either: a clear error instead of a fleet-wide "localhost".
    for hostname in [None, Some("localhost"), Some("")] {
        let env = Environment::rooted_at(root.dir.path(), hostname);
        let message = load(&Overrides::default(), &env).unwrap_err().to_string();
        assert_contains(
            &message,
            &["agent.endpoint: no default endpoint name", "machine-id"],
        );
    }
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let root = Root::new();
    let main = root.main("[agent]\nendpoint = \"unterminated\n");
    let err = root.load().unwrap_err();
    match &err {
        ConfigError::Parse {
            file, line, column, ..
        } => {
            assert_eq!(file, &main);
            assert_eq!(*line, 2);
            assert!(*column >= 12, "column {column}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert_contains(
        &err.to_string(),
        &[&main.display().to_string(), "(line 2, column"],
    );
}

#[test]
fn from_toml_validates_like_files() {
    let env = Root::new().env();
    let s = Settings::from_toml(ONE_SERVER, &env).unwrap();
    assert_eq!(s.servers[0].short_id.get(), 1);
    let message = Settings::from_toml("[coap]\nblock_size = 3\n", &env)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("<inline>: coap.block_size: "),
        "{message}"
    );
}

#[test]
fn value_types_reject_what_validation_rejects() {
    assert!(ShortServerId::new(0).is_none());
    assert!(ShortServerId::new(65535).is_none());
    assert_eq!(
        ShortServerId::new(65534).map(ShortServerId::get),
        Some(65534)
    );
    for size in [0, 8, 15, 17, 100, 2048] {
        assert!(BlockSize::new(size).is_none(), "{size}");
    }
    assert_eq!(BlockSize::new(16).map(BlockSize::szx), Some(0));
    assert_eq!(BlockSize::new(1024).map(BlockSize::szx), Some(6));
    assert!(Binding::new("").is_none());
    assert!(Binding::new("u").is_none());
    assert!(Binding::new("UQS").is_some_and(|b| b.has('S')));
    assert!(ExecCommand::new(&[]).is_none());
    assert!(ExecCommand::new(&["reboot".into()]).is_none());
    assert!(InterfacePattern::new("*").is_some_and(|p| p.matches("anything")));
    assert!(InterfacePattern::new("").is_none());
    assert!(InterfacePattern::new("a b").is_none());
}

const SERVER: &str = "[[server]]\nuri = \"coap://s\"\nshort_id = 1\n";

fn from_text(text: &str) -> Result<Settings, ConfigError> {
    let root = Root::new();
    Settings::from_toml(text, &Environment::rooted_at(root.dir.path(), Some("gw")))
}

#[test]
fn update_section_defaults_and_backends() {
    let s = from_text(SERVER).expect("valid");
    assert_eq!(s.update, None, "no backend: firmware updates off");
    let s = from_text(&format!(
        "{SERVER}[update]\nbackend = \"uboot\"\ncompatible = \"acme-gw2\"\nslot_a = \"/dev/mmcblk0p2\"\nslot_b = \"/dev/mmcblk0p3\"\n"
    ))
    .expect("valid");
    let u = s.update.expect("update settings");
    assert_eq!(
        u.backend,
        UpdateBackend::Uboot {
            config: PathBuf::from("/etc/fw_env.config"),
            allow_single_env: false,
            slot_a: PathBuf::from("/dev/mmcblk0p2"),
            slot_b: PathBuf::from("/dev/mmcblk0p3"),
        }
    );
    assert_eq!(u.health_target.as_deref(), Some("boot-complete.target"));
    assert_eq!(u.health_timeout, Duration::from_secs(600));
    assert_eq!(u.keys_dir, PathBuf::from("/etc/lwm2md/keys.d"));
    assert!(u.require_registration);
    let s = from_text(&format!(
        "{SERVER}[update]\nbackend = \"fake\"\ncompatible = \"x\"\nfake_dir = \"/tmp/slots\"\nhealth_target = \"\"\n"
    ))
    .expect("valid");
    let u = s.update.expect("update settings");
    assert_eq!(
        u.backend,
        UpdateBackend::Fake {
            dir: PathBuf::from("/tmp/slots"),
            slot_size: 64 << 20,
        }
    );
    assert_eq!(
        u.health_target, None,
        "an empty target disables the systemd half of the gate"
    );
}

#[test]
fn update_section_errors_name_the_key() {
    for (body, key, reason) in [
        (
            "backend = \"efi\"\ncompatible = \"x\"",
            "update.backend",
            "must be",
        ),
        (
            "backend = \"fake\"\nfake_dir = \"/x\"",
            "update.compatible",
            "is required",
        ),
        (
            "backend = \"grub\"\ncompatible = \"x\"\nslot_a = \"/a\"",
            "update.slot_b",
            "is required",
        ),
        (
            "backend = \"grub\"\ncompatible = \"x\"\nslot_a = \"a\"\nslot_b = \"/b\"",
            "update.slot_a",
            "absolute",
        ),
        (
            "backend = \"fake\"\ncompatible = \"x\"\nfake_dir = \"/x\"\nrevoked_keys = [\"ABC\"]",
            "update.revoked_keys[0]",
            "16 lowercase hex",
        ),
        (
            "backend = \"fake\"\ncompatible = \"x\"\nfake_dir = \"/x\"\nhealth_timeout = 1",
            "update.health_timeout",
            "between 10",
        ),
        (
            "backend = \"fake\"\ncompatible = \"x\"\nfake_dir = \"/x\"\ndownload_retry_initial = 60\ndownload_retry_max = 5",
            "update.download_retry_max",
            "below",
        ),
        (
            "backend = \"fake\"\ncompatible = \"x\"\nfake_dir = \"/x\"\nbogus = 1",
            "bogus",
            "unknown",
        ),
    ] {
        let err = from_text(&format!("{SERVER}[update]\n{body}\n"))
            .expect_err(body)
            .to_string();
        assert_contains(&err, &[key, reason]);
    }
}

#[test]
fn psk_credentials_come_from_a_private_key_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = Root::new();
    let key = root.write("server1.psk", "s3cret\n");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = format!(
        "[[server]]\nuri = \"coaps://h\"\nshort_id = 1\nsecurity = \"psk\"\n\
         psk_identity = \"dev-7\"\npsk_key_file = \"{}\"\n",
        key.display()
    );
    let env = Environment::rooted_at(root.dir.path(), Some("gw"));
    let settings = Settings::from_toml(&text, &env).expect("valid");
    let server = &settings.servers[0];
    assert_eq!(server.uri.port(), 5684);
    assert_eq!(
        server.security,
        ServerSecurity::Psk {
            identity: b"dev-7".to_vec(),
            key: Secret(b"s3cret".to_vec()),
        }
    );
    // Debug output never shows the key.
    assert!(!format!("{settings:?}").contains("s3cret"));

    // Readable by the group: refused, naming the file and the fix.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = Settings::from_toml(&text, &env)
        .expect_err("refused")
        .to_string();
    assert_contains(&err, &["server[0].psk_key_file", "mode 0640", "chmod 600"]);

    // Too long for a PSK.
    std::fs::write(&key, [b'k'; 65]).expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = Settings::from_toml(&text, &env)
        .expect_err("refused")
        .to_string();
    assert_contains(&err, &["1 to 64 bytes", "65"]);
}

#[test]
fn certificate_credentials_come_from_pem_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = Root::new();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["dev".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let cert_file = root.write("client.pem", &cert.pem());
    let anchor_file = root.write("ca.pem", &cert.pem());
    let key_file = root.write("client.key", &key.serialize_pem());
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = format!(
        "[[server]]\nuri = \"coaps://10.0.0.1\"\nshort_id = 1\nsecurity = \"certificate\"\n\
         certificate_file = \"{}\"\nprivate_key_file = \"{}\"\n\
         server_certificate_file = \"{}\"\nserver_name = \"lwm2m.example\"\n",
        cert_file.display(),
        key_file.display(),
        anchor_file.display()
    );
    let env = Environment::rooted_at(root.dir.path(), Some("gw"));
    let settings = Settings::from_toml(&text, &env).expect("valid");
    assert_eq!(
        settings.servers[0].security,
        ServerSecurity::Certificate {
            certificate: cert.der().to_vec(),
            private_key: Secret(key.serialize_der()),
            server_certificate: cert.der().to_vec(),
            server_name: Some("lwm2m.example".into()),
        }
    );
    assert!(!format!("{settings:?}").contains(&format!("{:?}", key.serialize_der())));

    // A private key others can read is refused.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = Settings::from_toml(&text, &env)
        .expect_err("refused")
        .to_string();
    assert_contains(&err, &["server[0].private_key_file", "mode 0644"]);

    // Not PKCS#8 (a certificate where the key should be): named as such.
    std::fs::write(&key_file, cert.pem()).expect("write");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = Settings::from_toml(&text, &env)
        .expect_err("refused")
        .to_string();
    assert_contains(&err, &["not a PEM PKCS#8 private key"]);
}

#[test]
fn coaps_download_credentials_per_prefix() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = Root::new();
    let key = root.write("fw.psk", "download-key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let update = "[update]\nbackend = \"fake\"\ncompatible = \"x\"\nfake_dir = \"/tmp/slots\"\n";
    let env = Environment::rooted_at(root.dir.path(), Some("gw"));
    let text = format!(
        "{SERVER}{update}[[update.coaps]]\nprefix = \"coaps://fw.example.com/\"\n\
         security = \"psk\"\npsk_identity = \"gw-7\"\npsk_key_file = \"{}\"\n",
        key.display()
    );
    let s = Settings::from_toml(&text, &env).expect("valid");
    let u = s.update.expect("update");
    assert_eq!(
        u.coaps,
        vec![CoapsCredential {
            prefix: "coaps://fw.example.com/".into(),
            security: ServerSecurity::Psk {
                identity: b"gw-7".to_vec(),
                key: Secret(b"download-key".to_vec()),
            },
        }]
    );
    for (table, key_name, reason) in [
        ("security = \"psk\"\n", "update.coaps[0].prefix", "missing"),
        (
            "prefix = \"coap://fw.example.com/\"\nsecurity = \"psk\"\n",
            "update.coaps[0].prefix",
            "must be a coaps://",
        ),
        (
            "prefix = \"coaps://fw.example.com/\"\n",
            "update.coaps[0].uri",
            "needs DTLS credentials",
        ),
    ] {
        let err = Settings::from_toml(&format!("{SERVER}{update}[[update.coaps]]\n{table}"), &env)
            .expect_err("refused")
            .to_string();
        assert_contains(&err, &[key_name, reason]);
    }
}

#[test]
fn a_bootstrap_server_alone_is_a_complete_configuration() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = Root::new();
    let env = Environment::rooted_at(root.dir.path(), Some("gw"));
    let settings =
        Settings::from_toml("[bootstrap]\nuri = \"coap://bs.example\"\n", &env).expect("valid");
    assert!(settings.servers.is_empty());
    let bs = settings.bootstrap.expect("bootstrap");
    assert_eq!(bs.uri.port(), 5683);
    assert_eq!(bs.security, ServerSecurity::NoSec);
    assert_eq!(bs.hold_off, Duration::ZERO);
    assert_eq!(bs.fallback_after, 3);
    assert_eq!(bs.timeout, Duration::from_secs(247));

    // PSK for the Bootstrap-Server follows the [[server]] rules, key file privacy included.
    let key = root.write("bs.psk", "bs-key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = format!(
        "[bootstrap]\nuri = \"coaps://bs.example\"\nsecurity = \"psk\"\npsk_identity = \"gw\"\n\
         psk_key_file = \"{}\"\nhold_off = 10\nfallback_after = 0\n",
        key.display()
    );
    let err = Settings::from_toml(&text, &env).expect_err("world-readable key");
    assert_contains(&err.to_string(), &["bootstrap.psk_key_file", "chmod 600"]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let bs = Settings::from_toml(&text, &env)
        .expect("valid")
        .bootstrap
        .expect("bootstrap");
    assert_eq!(bs.hold_off, Duration::from_secs(10));
    assert_eq!(bs.fallback_after, 0);
    assert!(matches!(bs.security, ServerSecurity::Psk { .. }));

    for (text, parts) in [
        (
            "[bootstrap]\nhold_off = 1\n",
            &["bootstrap.uri", "missing"][..],
        ),
        (
            "[bootstrap]\nuri = \"coap://b\"\ntimeout = 0\n",
            &["bootstrap.timeout", "between 1 and"][..],
        ),
        (
            "[bootstrap]\nuri = \"coaps://b\"\n",
            &["bootstrap.uri", "credentials"][..],
        ),
        (
            "[bootstrap]\nuri = \"coap://b\"\nport = 1\n",
            &["unknown field", "port"][..],
        ),
    ] {
        let err = Settings::from_toml(text, &env).expect_err(text).to_string();
        assert_contains(&err, parts);
    }
}
