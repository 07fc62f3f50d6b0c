//! `lwm2md-slots` end to end: `provision` and `status` on each backend, with the real tools on
//! plain files (`grub-editenv`, `mkenvimage`, `fw_printenv`/`fw_setenv`), through the daemon's
//! own configuration file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn slots(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lwm2md-slots"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("lwm2md-slots runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether `tool` is absent (CI installs every tool: there, absence fails the test).
fn missing(tool: &str) -> bool {
    let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file());
    if !found {
        assert!(
            std::env::var_os("LWM2MD_REQUIRE_TOOLS").is_none(),
            "{tool} is required (LWM2MD_REQUIRE_TOOLS) but not installed"
        );
        eprintln!("SKIP: {tool} is not installed");
    }
    !found
}

/// A daemon configuration with `update` as its `[update]` table.
fn config(dir: &Path, update: &str) -> PathBuf {
    let keys = dir.join("keys.d");
    std::fs::create_dir_all(&keys).expect("keys dir");
    for slot in ["a.img", "b.img"] {
        std::fs::write(dir.join(slot), vec![0u8; 64 << 10]).expect("slot file");
    }
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nstate_dir = \"{d}/state\"\n\n[[server]]\nuri = \"coap://127.0.0.1:5683\"\n\
             short_id = 1\n\n[update]\ncompatible = \"test\"\nkeys_dir = \"{k}\"\n\
             slot_a = \"{d}/a.img\"\nslot_b = \"{d}/b.img\"\n{update}\n",
            d = dir.display(),
            k = keys.display()
        ),
    )
    .expect("config");
    path
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn has(out: &Output, line: &str) -> bool {
    lines(out).iter().any(|l| l == line)
}

#[test]
fn grub_provision_then_status() {
    if missing("grub-editenv") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = tmp.path().join("env");
    let cfg = config(
        tmp.path(),
        &format!("backend = \"grub\"\ngrub_env_dir = \"{}\"", env.display()),
    );

    // Before: the state is unreadable and said so, with the devices still shown.
    let before = slots(&cfg, &["status"]);
    assert_eq!(before.status.code(), Some(1), "{}", text(&before));
    assert!(has(&before, "backend=grub"), "{}", text(&before));
    assert!(
        has(
            &before,
            &format!("slot_B={}", tmp.path().join("b.img").display())
        ),
        "{}",
        text(&before)
    );
    assert!(has(&before, "state=unreadable"), "{}", text(&before));
    assert!(
        text(&before).contains("not provisioned"),
        "{}",
        text(&before)
    );

    let out = slots(&cfg, &["provision", "--primary", "B"]);
    assert!(out.status.success(), "{}", text(&out));
    for name in ["env1", "env2", "lock1", "lock2"] {
        assert!(env.join(name).is_file(), "{name} missing");
    }
    // GRUB's own tool reads the copy in use.
    let listed = Command::new("grub-editenv")
        .arg(env.join("env2"))
        .arg("list")
        .output()
        .expect("grub-editenv");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("lwm2md_slot=B"),
        "{}",
        text(&listed)
    );

    // The running slot is unknown on this host (no lwm2md.slot= on its command line), so the
    // status fails, but prints the boot state it could read.
    let after = slots(&cfg, &["status"]);
    assert_eq!(after.status.code(), Some(1), "{}", text(&after));
    for line in [
        "booted=unknown",
        "primary=B",
        "trial=",
        "bootable_A=1",
        "bootable_B=1",
    ] {
        assert!(has(&after, line), "{line} in:\n{}", text(&after));
    }

    // Provisioning is not a repair.
    let again = slots(&cfg, &["provision", "--primary", "A"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("already provisioned"),
        "{}",
        text(&again)
    );
    let unchanged = slots(&cfg, &["status"]);
    assert!(has(&unchanged, "primary=B"), "{}", text(&unchanged));
}

#[test]
fn uboot_provision_adds_the_boot_counter() {
    if missing("mkenvimage") || missing("fw_printenv") || missing("fw_setenv") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // A redundant environment as an image build makes it (mkenvimage -r, two copies).
    let init = tmp.path().join("init.txt");
    std::fs::write(&init, "bootcmd=run distro_bootcmd\n").expect("init");
    let copy = tmp.path().join("copy.bin");
    let made = Command::new("mkenvimage")
        .args(["-r", "-s", "0x4000", "-o"])
        .arg(&copy)
        .arg(&init)
        .output()
        .expect("mkenvimage");
    assert!(made.status.success(), "{}", text(&made));
    let one = std::fs::read(&copy).expect("copy");
    let env = tmp.path().join("env.bin");
    std::fs::write(&env, [one.clone(), one].concat()).expect("env");
    let fw_env = tmp.path().join("fw_env.config");
    std::fs::write(
        &fw_env,
        format!("{0} 0x0000 0x4000\n{0} 0x4000 0x4000\n", env.display()),
    )
    .expect("fw_env.config");
    let cfg = config(
        tmp.path(),
        &format!(
            "backend = \"uboot\"\nuboot_config = \"{}\"",
            fw_env.display()
        ),
    );

    let out = slots(&cfg, &["provision"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = Command::new("fw_printenv")
        .arg("-c")
        .arg(&fw_env)
        .output()
        .expect("fw_printenv");
    let env_text = String::from_utf8_lossy(&printed.stdout).into_owned();
    for line in [
        "lwm2md_slot=A",
        "bootlimit=1",
        "upgrade_available=0",
        "bootcmd=run distro_bootcmd",
    ] {
        assert!(
            env_text.lines().any(|l| l == line),
            "{line} in:\n{env_text}"
        );
    }
    assert!(
        env_text.lines().any(|l| l.starts_with("altbootcmd=")),
        "{env_text}"
    );
    let status = slots(&cfg, &["status"]);
    assert!(has(&status, "primary=A"), "{}", text(&status));

    let again = slots(&cfg, &["provision", "--primary", "B"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("already holds"), "{}", text(&again));
}

#[test]
fn fake_provision_and_usage_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let machine = tmp.path().join("machine");
    let cfg = config(
        tmp.path(),
        &format!(
            "backend = \"fake\"\nfake_dir = \"{}\"\nfake_slot_size = 65536",
            machine.display()
        ),
    );
    let out = slots(&cfg, &["provision", "--primary", "B"]);
    assert!(out.status.success(), "{}", text(&out));
    // The fake machine boots its primary slot, so here the status is complete.
    let status = slots(&cfg, &["status"]);
    assert!(status.status.success(), "{}", text(&status));
    for line in ["backend=fake", "booted=B", "primary=B", "trial="] {
        assert!(has(&status, line), "{line} in:\n{}", text(&status));
    }
    let again = slots(&cfg, &["provision"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));

    let bad_slot = slots(&cfg, &["provision", "--primary", "C"]);
    assert_eq!(bad_slot.status.code(), Some(2), "{}", text(&bad_slot));
    let no_update = tmp.path().join("plain.toml");
    std::fs::write(
        &no_update,
        "[[server]]\nuri = \"coap://127.0.0.1:5683\"\nshort_id = 1\n",
    )
    .expect("config");
    let out = slots(&no_update, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no [update]"), "{}", text(&out));
}
