//! `lwm2md-slots`: the A/B boot state the daemon works on, for image builders and operators.
//!
//! `status` shows which slot runs and what the boot loader will do next; `provision` writes the
//! first boot state at image build time (GRUB's env copies and locks, U-Boot's variables, or a
//! fake machine). Both read the daemon's own configuration (`[update]`), so they always act on
//! the same backend, devices and env files the daemon uses.
//!
//! Exit status: 0 on success, 1 when the state cannot be read or written, 2 for usage and
//! configuration errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lwm2md::ab::Slot;
use lwm2md::ab::fake::{self, FakeSlots};
use lwm2md::config::{self, Environment, Overrides, UpdateBackend, UpdateSettings};
use lwm2md::runtime::firmware::assemble::{grub_backend, open_backend, uboot_backend};

/// Show or provision the A/B boot state of lwm2md's `[update]` backend.
#[derive(Debug, Parser)]
#[command(name = "lwm2md-slots", version, about)]
struct Cli {
    /// The daemon's main configuration file (its config.d/*.toml drop-ins are read too).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the backend, the slot devices, the running slot and the boot state as
    /// `key=value` lines.
    Status,
    /// Write the first boot state, with PRIMARY as the slot to boot (image build time).
    /// Refuses a backend that already holds a boot state.
    Provision {
        /// The slot holding the installed system.
        #[arg(long, value_parser = parse_slot, default_value = "A")]
        primary: Slot,
    },
}

fn parse_slot(text: &str) -> Result<Slot, String> {
    Slot::parse(text).ok_or_else(|| format!("\"{text}\" is not a slot: use A or B"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let update = match load_update(cli.config) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("lwm2md-slots: {e:#}");
            return ExitCode::from(2);
        }
    };
    let done = match cli.command {
        Command::Status => status(&update),
        Command::Provision { primary } => provision(&update, primary),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lwm2md-slots: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_update(config: Option<PathBuf>) -> anyhow::Result<UpdateSettings> {
    let overrides = Overrides {
        config,
        ..Overrides::default()
    };
    let settings = config::load(&overrides, &Environment::system())?;
    settings
        .update
        .context("the configuration sets no [update] backend")
}

fn backend_name(backend: &UpdateBackend) -> &'static str {
    match backend {
        UpdateBackend::Grub { .. } => "grub",
        UpdateBackend::Uboot { .. } => "uboot",
        UpdateBackend::Fake { .. } => "fake",
    }
}

/// Everything that can be read is printed, even when another part fails (an operator looking
/// at a broken device needs the rest); the exit status then says that something failed.
fn status(update: &UpdateSettings) -> anyhow::Result<()> {
    println!("backend={}", backend_name(&update.backend));
    let slots = open_backend(&update.backend, false).context("cannot open the backend")?;
    for slot in [Slot::A, Slot::B] {
        println!("slot_{slot}={}", slots.device(slot).display());
    }
    let booted = slots.booted();
    match &booted {
        Ok(slot) => println!("booted={slot}"),
        Err(e) => println!("booted=unknown\nbooted_error={e}"),
    }
    let state = slots.state();
    match &state {
        Ok(s) => {
            println!("primary={}", s.primary);
            println!("trial={}", s.trial.map(|t| t.name()).unwrap_or_default());
            println!("bootable_A={}", u8::from(s.bootable[0]));
            println!("bootable_B={}", u8::from(s.bootable[1]));
        }
        Err(e) => println!("state=unreadable\nstate_error={e}"),
    }
    booted.context("cannot tell the running slot")?;
    state.context("cannot read the boot state")?;
    Ok(())
}

fn provision(update: &UpdateSettings, primary: Slot) -> anyhow::Result<()> {
    match &update.backend {
        UpdateBackend::Grub {
            env_dir,
            slot_a,
            slot_b,
        } => {
            grub_backend(env_dir, [slot_a.clone(), slot_b.clone()]).provision(primary)?;
            println!("provisioned {}: primary {primary}", env_dir.display());
        }
        UpdateBackend::Uboot {
            config,
            allow_single_env,
            slot_a,
            slot_b,
        } => {
            uboot_backend(config, *allow_single_env, [slot_a.clone(), slot_b.clone()])?
                .provision(primary)?;
            println!(
                "provisioned the U-Boot environment of {}: primary {primary}",
                config.display()
            );
        }
        UpdateBackend::Fake { dir, slot_size } => {
            if dir.join(fake::STATE_FILE).exists() {
                bail!("{} already holds a fake machine", dir.display());
            }
            FakeSlots::create(dir, *slot_size, primary)?;
            println!(
                "created a fake machine in {}: primary {primary}",
                dir.display()
            );
        }
    }
    Ok(())
}
