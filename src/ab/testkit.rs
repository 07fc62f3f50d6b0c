//! Test helpers for the A/B backends: tool discovery with skip messages, a runner that captures
//! every file write a tool makes (for the torn-write tests), U-Boot environments on plain
//! files, and GRUB itself (grub-emu) booting the real `packaging/grub/lwm2md.cfg` against an
//! env directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::exec::{CommandRunner, Output, SystemRunner};
use super::{AbError, Slot};

/// The Debian package that provides each tool, for the skip message.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "grub-editenv" => "grub-common",
        "grub-emu" => "grub-emu",
        "fw_printenv" | "fw_setenv" => "libubootenv-tool",
        "mkenvimage" | "mkimage" => "u-boot-tools",
        "mke2fs" | "debugfs" => "e2fsprogs",
        "losetup" | "mount" => "mount",
        _ => "?",
    }
}

/// Whether `tool` is absent from `$PATH` (then prints why the caller skips).
pub(crate) fn missing_tool(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(tool).is_file());
    if !found {
        // CI installs every tool (tests/run); there a missing tool is a broken setup, not a
        // reason to pass without testing anything.
        if std::env::var_os("LWM2MD_REQUIRE_TOOLS").is_some() {
            panic!(
                "{tool} is required (LWM2MD_REQUIRE_TOOLS) but not installed: apt-get install {}",
                package_of(tool)
            );
        }
        eprintln!(
            "SKIP: {tool} is not installed (apt-get install {}); this test needs the real tool",
            package_of(tool)
        );
    }
    !found
}

/// Whether any of `tools` is missing.
pub(crate) fn missing_any(tools: &[&str]) -> bool {
    tools.iter().any(|t| missing_tool(t))
}

/// Runs a tool and insists on success (test setup only).
pub(crate) fn run_ok(program: &str, args: &[&str]) -> Output {
    let out = SystemRunner
        .run(program, args, None)
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.success(),
        "{program} {args:?} failed: {}",
        out.stderr_text()
    );
    out
}

/// One file write made by a tool: the file's bytes before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileWrite {
    pub path: PathBuf,
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
}

/// Forwards to the real tools and records, for every call that writes, the target file
/// before and after (`grub-editenv FILE set|create|unset`, `fw_setenv` on `env_file`).
pub(crate) struct CapturingRunner {
    pub writes: Arc<Mutex<Vec<FileWrite>>>,
    /// The U-Boot env file `fw_setenv` writes.
    pub env_file: Option<PathBuf>,
}

impl CapturingRunner {
    pub(crate) fn new(env_file: Option<PathBuf>) -> (Self, Arc<Mutex<Vec<FileWrite>>>) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                writes: writes.clone(),
                env_file,
            },
            writes,
        )
    }
}

impl CommandRunner for CapturingRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, AbError> {
        let target = match (program, args) {
            ("grub-editenv", [file, "set" | "create" | "unset", ..]) => Some(PathBuf::from(file)),
            ("fw_setenv", _) => self.env_file.clone(),
            _ => None,
        };
        let before = target.as_ref().map(|p| std::fs::read(p).ok());
        let out = SystemRunner.run(program, args, stdin)?;
        if let (Some(path), Some(before)) = (target, before) {
            let after = std::fs::read(&path).ok();
            if after != before {
                self.writes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(FileWrite {
                        path,
                        before,
                        after,
                    });
            }
        }
        Ok(out)
    }
}

/// How a cut write can leave a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tear {
    /// The first `k` bytes of the new content (grub-editenv: O_TRUNC, then write).
    Truncate,
    /// The first `k` bytes of the new content over the old file (in-place writers: GRUB's
    /// save_env, libubootenv).
    Overlay,
}

/// The contents a cut during `write` can leave, for every byte boundary `k` and each model in
/// `tears`, plus "not started" and "done". A `k` whose result equals the one for `k - 1` (the
/// overlay model where old and new agree on byte `k - 1`) is listed once: identical bytes,
/// identical outcome.
pub(crate) fn torn_versions(write: &FileWrite, tears: &[Tear]) -> Vec<(String, Option<Vec<u8>>)> {
    let old = write.before.clone().unwrap_or_default();
    let new = write.after.clone().unwrap_or_default();
    let mut out: Vec<(String, Option<Vec<u8>>)> =
        vec![("not started".into(), write.before.clone())];
    for tear in tears {
        for k in 0..=new.len() {
            match tear {
                Tear::Truncate => out.push((format!("truncated at {k}"), Some(new[..k].to_vec()))),
                Tear::Overlay => {
                    if k > 0 && old.get(k - 1) == Some(&new[k - 1]) {
                        continue;
                    }
                    let mut overlay = old.clone();
                    if overlay.len() < k {
                        overlay.resize(k, 0);
                    }
                    overlay[..k].copy_from_slice(&new[..k]);
                    out.push((format!("first {k} bytes written in place"), Some(overlay)));
                }
            }
        }
    }
    out.push(("done".into(), write.after.clone()));
    out
}

/// Creates a redundant U-Boot environment (two 16 KiB copies in `dir/env.bin`, the
/// `fw_env.config` naming them) holding `vars`, as `mkenvimage -r` would for an image build.
pub(crate) fn uboot_env(dir: &Path, vars: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let init = dir.join("init.txt");
    std::fs::write(&init, text).expect("write init");
    let copy = dir.join("copy.bin");
    run_ok(
        "mkenvimage",
        &[
            "-r",
            "-s",
            "0x4000",
            "-o",
            &copy.display().to_string(),
            &init.display().to_string(),
        ],
    );
    let one = std::fs::read(&copy).expect("copy");
    let env = dir.join("env.bin");
    std::fs::write(&env, [one.clone(), one].concat()).expect("env");
    let config = dir.join("fw_env.config");
    std::fs::write(
        &config,
        format!("{0} 0x0000 0x4000\n{0} 0x4000 0x4000\n", env.display()),
    )
    .expect("config");
    (config, env)
}

/// `fw_printenv -c config` as a map (panics if unreadable).
pub(crate) fn printenv(config: &Path) -> BTreeMap<String, String> {
    let out = run_ok("fw_printenv", &["-c", &config.display().to_string()]);
    out.stdout_text()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What GRUB did in one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrubBoot {
    /// The slot of the entry GRUB booted (from the `lwm2md.slot=` it passed to the kernel).
    pub slot: Slot,
    /// The arguments of the `linux` command.
    pub linux: Vec<String>,
    /// The `initrd` argument.
    pub initrd: String,
    /// Everything GRUB printed (escape sequences removed).
    pub console: String,
}

/// Whether grub-emu and the tools to build its disk are present.
pub(crate) fn grub_emu_missing() -> bool {
    missing_any(&["grub-emu", "mke2fs", "debugfs", "timeout"])
}

fn strip_escapes(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// The snippet under test.
pub(crate) fn grub_snippet() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/grub/lwm2md.cfg")
}

/// Boots GRUB (grub-emu) once on the env files in `env_dir`: builds an ext2 disk image holding
/// them under `/lwm2md` (GRUB's save_env needs a real disk: it writes the file's blocks in
/// place), runs a grub.cfg that stubs `linux` / `initrd` (the emulator cannot load a kernel)
/// and sources the real snippet, lets the menu boot the default entry, then copies the env
/// files back from the image into `env_dir`.
pub(crate) fn grub_emu_boot(env_dir: &Path) -> GrubBoot {
    let work = tempfile::tempdir().expect("tempdir");
    let fs = work.path().join("fs");
    let in_fs = fs.join("lwm2md");
    std::fs::create_dir_all(&in_fs).expect("mkdir");
    let names = ["env1", "env2", "lock1", "lock2"];
    for name in names {
        let from = env_dir.join(name);
        if from.exists() {
            std::fs::copy(&from, in_fs.join(name)).expect("copy in");
        }
    }
    let image = work.path().join("boot.img");
    let image_arg = image.display().to_string();
    run_ok(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext2",
            "-b",
            "1024",
            "-d",
            &fs.display().to_string(),
            &image_arg,
            "1M",
        ],
    );
    let map = work.path().join("device.map");
    std::fs::write(&map, format!("(hd0) {image_arg}\n")).expect("device.map");
    let cfg = format!(
        r#"set lwm2md_envdir=(hd0)/lwm2md
set lwm2md_dev_A=(hd0,gpt2)
set lwm2md_dev_B=(hd0,gpt3)
set lwm2md_root_A=PARTUUID=0fc63daf-02
set lwm2md_root_B=PARTUUID=0fc63daf-03
set lwm2md_initrd=/boot/initrd.img
set lwm2md_cmdline="console=ttyS0 quiet"
function linux {{ for a in $@; do echo "LWM2M-ARG [$a]"; done; }}
function initrd {{ echo "LWM2M-INITRD [$1]"; halt; }}
set timeout=0
source (host){}
"#,
        grub_snippet().display()
    );
    std::fs::write(work.path().join("grub.cfg"), cfg).expect("grub.cfg");
    let out = SystemRunner
        .run(
            "timeout",
            &[
                "30",
                "grub-emu",
                "-d",
                &work.path().display().to_string(),
                "-r",
                "host",
                "-m",
                &map.display().to_string(),
            ],
            None,
        )
        .expect("grub-emu runs");
    let console = strip_escapes(&out.stdout_text());
    let linux: Vec<String> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LWM2M-ARG ["))
        .map(|a| a.trim_end_matches(']').to_owned())
        .collect();
    let initrd = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("LWM2M-INITRD ["))
        .map(|a| a.trim_end_matches(']').to_owned())
        .unwrap_or_default();
    let slot = linux
        .iter()
        .find_map(|a| a.strip_prefix("lwm2md.slot="))
        .and_then(Slot::parse)
        .unwrap_or_else(|| panic!("GRUB booted no lwm2md entry:\n{console}"));
    for name in names {
        if in_fs.join(name).exists() {
            let dest = env_dir.join(name);
            run_ok(
                "debugfs",
                &[
                    "-R",
                    &format!("dump /lwm2md/{name} {}", dest.display()),
                    &image_arg,
                ],
            );
        }
    }
    GrubBoot {
        slot,
        linux,
        initrd,
        console,
    }
}
