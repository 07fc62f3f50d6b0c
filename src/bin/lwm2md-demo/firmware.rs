//! The demo's firmware-update chapter: the agent runs with `[update]` on a fake A/B machine
//! (two slot files and a boot-loader state file in the demo's directory), and the demo server
//! pushes one signed package with Block1, has the agent pull another over CoAP Block2, and
//! pushes a forged one that must be refused. Every claim printed is checked against what the
//! agent answers and what the fake machine's files say; any mismatch stops the demo with an
//! error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lwm2md::ab::fake;
use lwm2md::config::{Environment, Settings};
use lwm2md::core::coap::message::{Code, Message, opt};
use lwm2md::core::lwm2m::content::cf;
use lwm2md::runtime::RunError;
use lwm2md::update::Slot;
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::kit::{COMPATIBLE, Kit, Package};
use crate::progress::Progress;
use crate::server::{DemoServer, ServerEvent, get};
use crate::upload::Block1Upload;
use crate::{WAIT, detail, expect_ok, say, show, text};

/// Object 5 resources.
const PACKAGE: &str = "/5/0/0";
const URI: &str = "/5/0/1";
const UPDATE: &str = "/5/0/2";
const STATE: &str = "/5/0/3";
const RESULT: &str = "/5/0/5";
const NAME: &str = "/5/0/6";
const VERSION: &str = "/5/0/7";
/// Device firmware version.
const FIRMWARE_VERSION: &str = "/3/0/3";
/// /5/0/3 values.
const DOWNLOADING: u64 = 1;
const DOWNLOADED: u64 = 2;
/// /5/0/5 values.
const SUCCESS: u64 = 1;
const INTEGRITY: u64 = 5;
/// Size of each fake slot.
const SLOT_SIZE: u64 = 16 << 20;
/// How often the demo polls a resource while it waits for a change.
const POLL: Duration = Duration::from_millis(50);

/// The agent running in this process (the daemon's `runtime::run`, as `lwm2md` runs it).
struct Agent {
    task: JoinHandle<Result<(), RunError>>,
    /// Dropping or sending stops the agent, like SIGTERM.
    stop: oneshot::Sender<()>,
}

impl Agent {
    fn start(settings: &Settings) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(lwm2md::runtime::run(settings.clone(), async {
            let _ = stopped.await;
        }));
        Self { task, stop }
    }

    /// Waits for the agent's (new) registration; fails if the agent stops first. Returns how
    /// long it took and the object list.
    async fn registered(&mut self, server: &mut DemoServer) -> anyhow::Result<(Duration, String)> {
        let started = Instant::now();
        let deadline = started + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                event = server.next_event(left) => match event {
                    Some(ServerEvent::Registered { links, .. }) => return Ok((started.elapsed(), links)),
                    Some(_) => {}
                    None => bail!("the agent did not register within {} s", WAIT.as_secs()),
                },
                ended = &mut self.task => bail!("the agent stopped instead of registering: {}", outcome(ended)),
            }
        }
    }

    /// Waits for the agent to stop on its own (the fake machine's reboot).
    async fn ended(self) -> anyhow::Result<()> {
        // `stop` stays alive until the task ended: dropping it would stop the agent.
        let Self { task, stop } = self;
        let ended = finished(task).await;
        drop(stop);
        ended
    }

    /// Stops the agent (SIGTERM) and waits for it.
    async fn stop(self) -> anyhow::Result<()> {
        let Self { task, stop } = self;
        let _ = stop.send(());
        finished(task).await
    }
}

async fn finished(task: JoinHandle<Result<(), RunError>>) -> anyhow::Result<()> {
    match tokio::time::timeout(WAIT, task).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(other) => bail!("the agent failed: {}", outcome(other)),
        Err(_) => bail!("the agent did not stop within {} s", WAIT.as_secs()),
    }
}

fn outcome(ended: Result<Result<(), RunError>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Ok(())) => "it stopped normally".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("the agent task failed: {e}"),
    }
}

/// The chapter's state: the server, the agent's configuration, the fake machine.
struct Fota<'a> {
    server: &'a mut DemoServer,
    settings: Settings,
    machine: PathBuf,
    step: u32,
}

/// Runs the chapter; `config` is the agent's configuration so far, `dir` the demo's directory.
pub(crate) async fn chapter(
    server: &mut DemoServer,
    dir: &Path,
    config: &str,
    first_step: u32,
) -> anyhow::Result<()> {
    let kit = Kit::create(dir).context("preparing keys and packages")?;
    let machine = dir.join("machine");
    let section = update_section(&machine, &kit.keys_dir);
    let settings = Settings::from_toml(&format!("{config}\n{section}"), &Environment::system())
        .context("the demo's [update] configuration is invalid")?;
    let mut fota = Fota {
        server,
        settings,
        machine,
        step: first_step,
    };
    fota.introduce(&kit, &section);
    let agent = fota.boot_first().await?;
    fota.push(&kit.v2).await?;
    let agent = fota.update(agent, &kit.v2, Slot::B).await?;
    fota.pull(&kit.v3).await?;
    let agent = fota.update(agent, &kit.v3, Slot::A).await?;
    fota.forged(&kit.forged, &kit.v3).await?;
    fota.shutdown(agent).await
}

fn update_section(machine: &Path, keys_dir: &Path) -> String {
    format!(
        "[update]\nbackend = \"fake\"\nfake_dir = {machine:?}\nfake_slot_size = {SLOT_SIZE}\n\
         compatible = \"{COMPATIBLE}\"\nkeys_dir = {keys:?}\nhealth_target = \"\"\n",
        machine = machine.display().to_string(),
        keys = keys_dir.display().to_string(),
    )
}

impl Fota<'_> {
    fn heading(&mut self, title: &str) -> String {
        let heading = format!("{}. {title}", self.step);
        self.step += 1;
        heading
    }

    fn introduce(&mut self, kit: &Kit, section: &str) {
        let heading = self.heading("Firmware updates: what the vendor prepares");
        say(
            &heading,
            &format!(
                "A signing key (ed25519, key id {}) and two signed packages of a {} KiB demo image.\n\
                 The device trusts only the public key, in its keys directory. A package carries a\n\
                 manifest (compatible string, version, the SHA-256 of every chunk) signed with the key.",
                kit.key_id,
                kit.v2.image_size >> 10
            ),
        );
        let files: Vec<String> = [&kit.v2, &kit.v3]
            .iter()
            .map(|p| format!("{} ({} bytes)", p.path.display(), p.bytes.len()))
            .collect();
        show("packages", &files.join("\n"));
        say(
            &self.heading("The agent with [update]"),
            "The agent starts again with firmware updates configured. The \"fake\" backend is an A/B\n\
             machine in two files: slot A runs, slot B is free. health_target = \"\": no systemd here.",
        );
        show("[update] added to config.toml", section);
    }

    /// Starts the agent with `[update]` for the first time; the fake machine is created in slot A.
    async fn boot_first(&mut self) -> anyhow::Result<Agent> {
        let mut agent = Agent::start(&self.settings);
        let (took, links) = agent.registered(self.server).await?;
        if !links.contains("</5/0>") {
            bail!("the agent registered without object 5: {links}");
        }
        let version = self.read(FIRMWARE_VERSION).await?;
        let state = self.read_int(STATE).await?;
        let boot = BootView::read(&self.machine)?;
        if state != 0 || boot.booted != Slot::A {
            bail!("unexpected start: State {state}, {}", boot.describe());
        }
        text(&format!(
            "It registered after {} ms; its object list now has </5/0> (Firmware Update).",
            took.as_millis()
        ));
        detail(&format!(
            "{FIRMWARE_VERSION} firmware version = {version:?} (from the host: /etc/os-release)\n\
             {STATE} State = 0 (Idle)\nfake machine: {}",
            boot.describe()
        ));
        Ok(agent)
    }

    async fn push(&mut self, package: &Package) -> anyhow::Result<()> {
        say(
            &self.heading(&format!("Push: package {} with Block1", package.version)),
            &format!(
                "The server writes the package to {PACKAGE} (Package, content format 42 octet-stream)\n\
                 in 1 KiB blocks. The agent verifies the signature as soon as the manifest has arrived,\n\
                 then checks and writes each chunk into the inactive slot B while the blocks flow:\n\
                 the running slot A is never touched."
            ),
        );
        let mut upload = Block1Upload::new(PACKAGE, cf::OPAQUE, package.bytes.clone());
        let (last, during) = self.send_blocks(&mut upload).await?;
        if last.code != Code::CHANGED {
            bail!("the agent refused the package: {}", last.code);
        }
        if during != DOWNLOADING {
            bail!("during the transfer {STATE} read {during}, not 1 (Downloading)");
        }
        detail(&format!(
            "{STATE} read between two blocks: 1 (Downloading); other requests are served meanwhile."
        ));
        self.downloaded(package, Slot::B).await
    }

    /// Sends every block with a progress bar; returns the last answer and the State read after
    /// the first block.
    async fn send_blocks(&mut self, upload: &mut Block1Upload) -> anyhow::Result<(Message, u64)> {
        let mut bar = Progress::new("push", upload.total() as u64);
        let mut during = None;
        loop {
            let done = upload.send_next(self.server).await?;
            let detail = format!("block {}/{}", upload.blocks(), upload.total_blocks());
            if let Some(last) = done {
                let detail = if last.code.is_success() {
                    format!("{detail}  {}", last.code)
                } else {
                    format!("block {} refused: {}", upload.blocks() + 1, last.code)
                };
                bar.finish(upload.sent() as u64, &detail);
                return Ok((last, during.unwrap_or(0)));
            }
            bar.update(upload.sent() as u64, &detail);
            if during.is_none() {
                during = Some(self.read_int(STATE).await?);
            }
        }
    }

    /// Waits for State 2 (Downloaded), then checks name, version and the image in `slot`.
    async fn downloaded(&mut self, package: &Package, slot: Slot) -> anyhow::Result<()> {
        self.wait_value(STATE, DOWNLOADED, None).await?;
        let (name, version) = (self.read(NAME).await?, self.read(VERSION).await?);
        if version != package.version {
            bail!(
                "{VERSION} is {version:?} after the download, not {:?}",
                package.version
            );
        }
        let matches = slot_holds(&self.machine, slot, package)?;
        if !matches {
            bail!(
                "slot {slot} does not hold the image of package {}",
                package.version
            );
        }
        detail(&format!(
            "{STATE} State = 2 (Downloaded); {NAME} = {name:?}, {VERSION} = {version:?}\n\
             slot {slot} holds the verified image (its SHA-256 matches the manifest's)."
        ));
        Ok(())
    }

    /// Execute Update, the fake reboot, the trial boot, registration and commit: `slot` must then
    /// run `package`.
    async fn update(
        &mut self,
        agent: Agent,
        package: &Package,
        slot: Slot,
    ) -> anyhow::Result<Agent> {
        let mut execute = Message::request(Code::POST);
        execute.set_uri_path(UPDATE);
        expect_ok(self.server, execute, "execute /5/0/2").await?;
        say(
            &self.heading(&format!(
                "Update: execute {UPDATE}, reboot into slot {slot}"
            )),
            &format!(
                "The agent answers 2.04, sets the boot loader's one-time trial to slot {slot} and reboots.\n\
                 The fake machine \"reboots\": the agent de-registers and stops; the boot loader sees the\n\
                 trial, records that it tried it (lwm2md_tried=1) and boots slot {slot} (the rule of\n\
                 packaging/grub/lwm2md.cfg and packaging/uboot/boot.cmd)."
            ),
        );
        agent.ended().await?;
        self.deregistered().await?;
        let trial = BootView::read(&self.machine)?;
        if trial.booted != slot || trial.trial != Some(slot) || !trial.tried {
            bail!(
                "after the reboot: {} (expected a trial boot of {slot})",
                trial.describe()
            );
        }
        show("the fake machine after the reboot", &trial.describe());
        text(&format!(
            "lwm2md_slot is still {}: should slot {slot} not come up, or the power fail now, the\n\
             next boot sees the trial tried and falls back to it.",
            trial.primary
        ));
        let mut agent = Agent::start(&self.settings);
        let (took, _) = agent.registered(self.server).await?;
        self.committed(package, slot, took).await?;
        Ok(agent)
    }

    /// After the trial boot: the agent registered, so it commits; checks the result.
    async fn committed(
        &mut self,
        package: &Package,
        slot: Slot,
        took: Duration,
    ) -> anyhow::Result<()> {
        self.wait_value(RESULT, SUCCESS, None).await?;
        let version = self.read(VERSION).await?;
        let firmware = self.read(FIRMWARE_VERSION).await?;
        let boot = BootView::read(&self.machine)?;
        if version != package.version || firmware != package.version {
            bail!("after the update {VERSION} = {version:?}, {FIRMWARE_VERSION} = {firmware:?}");
        }
        if boot.booted != slot || boot.primary != slot || boot.trial.is_some() {
            bail!("slot {slot} was not committed: {}", boot.describe());
        }
        text(&format!(
            "The agent starts again, now in slot {slot}, and registers after {} ms. Having reached the\n\
             server from the new image, it commits it: slot {slot} becomes the boot loader's primary.",
            took.as_millis()
        ));
        detail(&format!(
            "{RESULT} Update Result = 1 (success)\n{VERSION} = {version:?}, \
             {FIRMWARE_VERSION} firmware version = {firmware:?}\nfake machine: {}",
            boot.describe()
        ));
        Ok(())
    }

    async fn pull(&mut self, package: &Package) -> anyhow::Result<()> {
        let port = self.server.port();
        let name = format!("{}.pkg", package.version);
        let sent = self.server.serve_file(&name, package.bytes.clone());
        let uri = format!("coap://127.0.0.1:{port}/fw/{name}");
        say(
            &self.heading(&format!(
                "Pull: package {} over CoAP Block2",
                package.version
            )),
            &format!(
                "Now the server only tells the agent where the package is: it writes {URI} (Package URI)\n\
                 = {uri}\n\
                 and the agent downloads it itself, block by block (Block2, with an ETag so a changed\n\
                 file is never mixed with the old one), into the inactive slot A."
            ),
        );
        let mut write = Message::request(Code::PUT);
        write.set_uri_path(URI);
        write.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::TEXT));
        write.payload = uri.into_bytes();
        expect_ok(self.server, write, "write /5/0/1").await?;
        let mut bar = Progress::new("pull", package.bytes.len() as u64);
        self.wait_value(STATE, DOWNLOADED, Some((&mut bar, &sent)))
            .await?;
        bar.finish(sent.load(Ordering::Relaxed), "served by the demo server");
        self.downloaded(package, Slot::A).await
    }

    /// A forged package is refused; nothing changes.
    async fn forged(&mut self, forged: &[u8], running: &Package) -> anyhow::Result<()> {
        say(
            &self.heading("A forged package"),
            "The server pushes a copy of package 2.0.0 with one byte of its signature flipped.",
        );
        let mut upload = Block1Upload::new(PACKAGE, cf::OPAQUE, forged.to_vec());
        let (last, _) = self.send_blocks(&mut upload).await?;
        if last.code.is_success() {
            bail!("the agent accepted a forged package ({})", last.code);
        }
        self.wait_value(RESULT, INTEGRITY, None).await?;
        let state = self.read_int(STATE).await?;
        let firmware = self.read(FIRMWARE_VERSION).await?;
        let boot = BootView::read(&self.machine)?;
        let unchanged = boot.booted == Slot::A && boot.primary == Slot::A && boot.trial.is_none();
        if state != 0 || firmware != running.version || !unchanged || boot.bad != [false, true] {
            bail!(
                "after the forged package: State {state}, firmware {firmware:?}, {}",
                boot.describe()
            );
        }
        text(&format!(
            "The agent checked the signature as soon as the manifest had arrived and refused block {}\n\
             with {}, which ends the transfer. Slot B stays marked unbootable; slot A runs on.",
            upload.blocks() + 1,
            last.code
        ));
        detail(&format!(
            "{RESULT} Update Result = 5 (integrity check failure), {STATE} State = 0 (Idle)\n\
             {FIRMWARE_VERSION} firmware version = {firmware:?}\nfake machine: {}",
            boot.describe()
        ));
        Ok(())
    }

    async fn shutdown(&mut self, agent: Agent) -> anyhow::Result<()> {
        agent.stop().await?;
        self.deregistered().await?;
        say(
            &self.heading("Shutdown, and why all this is power-safe"),
            "The agent de-registers and stops. As for power cuts: the running slot is never written,\n\
             and the boot loader boots a new slot only once (the trial) and falls back to the old one\n\
             unless the agent, after registering from the new image, commits it. A power cut during a\n\
             download leaves the old slot running; one during the trial boot makes the next boot fall\n\
             back. The boot variables and the agent's journal are replaced atomically (write, fsync,\n\
             rename), so a cut leaves the old or the new state, never a mix.",
        );
        Ok(())
    }

    /// Expects the de-registration (after the agent stopped), skipping other events.
    async fn deregistered(&mut self) -> anyhow::Result<()> {
        loop {
            match self.server.next_event(WAIT).await {
                Some(ServerEvent::Deregistered) => return Ok(()),
                Some(_) => {}
                None => bail!("the agent stopped without de-registering"),
            }
        }
    }

    async fn read(&mut self, path: &str) -> anyhow::Result<String> {
        let resp = expect_ok(
            self.server,
            get(path, Some(cf::TEXT)),
            &format!("read {path}"),
        )
        .await?;
        String::from_utf8(resp.payload).with_context(|| format!("{path} is not text"))
    }

    async fn read_int(&mut self, path: &str) -> anyhow::Result<u64> {
        let text = self.read(path).await?;
        text.parse()
            .with_context(|| format!("{path} = {text:?} is not a number"))
    }

    /// Polls `path` until it reads `want`; draws the pull's progress from the server's counter
    /// meanwhile. A failed update (State back to Idle with a failure result) ends the wait.
    async fn wait_value(
        &mut self,
        path: &str,
        want: u64,
        mut progress: Option<(&mut Progress, &AtomicU64)>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.read_int(path).await?;
            if value == want {
                return Ok(());
            }
            if let Some((bar, sent)) = progress.as_mut() {
                bar.update(sent.load(Ordering::Relaxed), "served by the demo server");
            }
            if path == STATE && value == 0 {
                let result = self.read_int(RESULT).await?;
                if result > SUCCESS {
                    bail!("{STATE} went back to Idle with Update Result {result}");
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{path} is still {value}, not {want}, after {} s",
                    WAIT.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The fake machine as its files show it.
struct BootView {
    booted: Slot,
    primary: Slot,
    trial: Option<Slot>,
    tried: bool,
    /// Slots marked unbootable (A, B).
    bad: [bool; 2],
}

impl BootView {
    fn read(machine: &Path) -> anyhow::Result<Self> {
        let vars = fake::read_vars(machine).context("reading the fake boot state")?;
        let booted_file = machine.join(fake::BOOTED_FILE);
        let booted = match std::fs::read_to_string(&booted_file)
            .with_context(|| format!("reading {}", booted_file.display()))?
            .trim()
        {
            "A" => Slot::A,
            "B" => Slot::B,
            other => bail!("{}: {other:?}", booted_file.display()),
        };
        Ok(Self {
            booted,
            primary: vars.primary,
            trial: vars.trial,
            tried: vars.tried,
            bad: vars.bad,
        })
    }

    fn describe(&self) -> String {
        format!(
            "running slot {}\nboot variables: lwm2md_slot={} lwm2md_trial={} lwm2md_tried={} \
             lwm2md_bad_A={} lwm2md_bad_B={}",
            self.booted,
            self.primary,
            self.trial.map_or(String::new(), |s| s.to_string()),
            u8::from(self.tried),
            u8::from(self.bad[0]),
            u8::from(self.bad[1]),
        )
    }
}

/// True when `slot`'s file starts with `package`'s image (by SHA-256).
fn slot_holds(machine: &Path, slot: Slot, package: &Package) -> anyhow::Result<bool> {
    use std::io::Read as _;
    let path = machine.join(fake::IMAGE_FILES[usize::from(slot == Slot::B)]);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut image = Vec::new();
    file.take(package.image_size)
        .read_to_end(&mut image)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(image.len() as u64 == package.image_size
        && Sha256::digest(&image).as_slice() == package.image_sha256)
}
