//! The lwm2md demo: starts a small local LwM2M server and the lwm2md agent (state in a temporary
//! directory) and walks a newcomer through registration, reads in several formats, a write, an
//! observation and a clean de-registration, then firmware updates on a fake A/B machine (a push,
//! a pull, a forged package), explaining each step.

mod files;
mod firmware;
mod kit;
mod progress;
mod server;
mod upload;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lwm2md::core::coap::message::{Code, Message, opt};
use lwm2md::core::lwm2m::content::{self, NewestModel, cf};
use lwm2md::core::lwm2m::path::Path;
use server::{DemoServer, ServerEvent, get};

const WAIT: Duration = Duration::from_secs(15);

fn say(step: &str, text: &str) {
    println!("\n\x1b[1m== {step}\x1b[0m");
    for line in text.lines() {
        println!("   {line}");
    }
}

/// Narration inside a step (indented like the step's text).
fn text(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

/// Values or files, indented under the narration.
fn detail(text: &str) {
    for line in text.lines() {
        println!("      {line}");
    }
}

fn show(label: &str, text: &str) {
    println!("   {label}");
    for line in text.lines() {
        println!("      {line}");
    }
}

/// Decodes a payload with lwm2md's codecs into `path = value` lines.
fn values(format: u16, base: &str, payload: &[u8]) -> String {
    let Ok(base) = Path::parse(base) else {
        return String::new();
    };
    match content::decode(format, &base, payload, &NewestModel) {
        Ok(d) => d
            .records
            .iter()
            .map(|r| format!("{} = {}", r.path, r.value))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("(could not decode: {e})"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn expect_ok(server: &mut DemoServer, msg: Message, what: &str) -> anyhow::Result<Message> {
    let resp = server
        .request(msg)
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| what.to_string())?;
    if !resp.code.is_success() {
        bail!("{what}: the agent answered {}", resp.code);
    }
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // `lwm2md-demo fake-boot DIR`: power the fake A/B machine on once (its boot loader runs),
    // for tests that cut the power with kill -9.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, dir] = args.as_slice()
        && cmd == "fake-boot"
    {
        let slot = lwm2md::ab::fake::simulate_boot(std::path::Path::new(dir))
            .with_context(|| format!("fake-boot {dir}"))?;
        println!("{slot}");
        return Ok(());
    }
    let verbose = std::env::args().any(|a| a == "--verbose" || a == "-v");
    // Without --verbose only the agent's errors show: the warnings it logs on purpose (a
    // forged package, the fake machine's reboot) are what the demo narrates anyway.
    let _ = lwm2md::logging::init(if verbose {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Error
    });

    let state_dir = std::env::temp_dir().join(format!("lwm2md-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).context("creating the demo state directory")?;
    let result = run(&state_dir).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

async fn run(state_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut server = DemoServer::start()
        .await
        .context("starting the demo LwM2M server")?;
    let port = server.port();
    say(
        "1. A LwM2M server",
        &format!(
            "A tiny LwM2M server is listening on coap://127.0.0.1:{port}.\n\
             In production this is Leshan, Coiote, ThingsBoard... any LwM2M 1.1 server."
        ),
    );

    let config = format!(
        "[agent]\nendpoint = \"urn:dev:os:lwm2md-demo\"\nstate_dir = {state:?}\n\n\
         [[server]]\nuri = \"coap://127.0.0.1:{port}\"\nshort_id = 1\nlifetime = 300\n\n\
         [device]\nmanufacturer = \"Demo Gateways Ltd\"\nmodel = \"EDGE-1\"\nreboot_command = [\"/bin/true\"]\n",
        state = state_dir.display().to_string()
    );
    let settings =
        lwm2md::config::Settings::from_toml(&config, &lwm2md::config::Environment::system())
            .context("the demo configuration is invalid")?;
    say(
        "2. The agent",
        &format!(
            "lwm2md starts with this configuration (state kept in {}):",
            state_dir.display()
        ),
    );
    show("config.toml", &config);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let agent = tokio::spawn(lwm2md::runtime::run(settings, async {
        let _ = stop_rx.await;
    }));

    // Registration.
    let Some(ServerEvent::Registered { query, links }) = server.next_event(WAIT).await else {
        bail!("the agent did not register within {} s", WAIT.as_secs());
    };
    say(
        "3. Registration",
        &format!(
            "The agent registered after {} ms: POST /rd with these parameters\n\
             (ep = endpoint name, lt = lifetime in seconds, lwm2m = protocol version, b = binding U = UDP):",
            started.elapsed().as_millis()
        ),
    );
    show("query", &query.join("&"));
    show(
        "object list (</>;ct= lists the extra content formats; ver= marks object versions other than 1.0)",
        &links.replace(",<", ",\n<"),
    );

    // Reads in several formats.
    say(
        "4. Reading the Device object",
        "The server reads /3/0 (Device) as SenML JSON, a format made for values with names:",
    );
    let resp = expect_ok(&mut server, get("/3/0", Some(cf::SENML_JSON)), "read /3/0").await?;
    show(
        "payload",
        &String::from_utf8_lossy(&resp.payload).replace("},{", "},\n{"),
    );

    let resp = expect_ok(&mut server, get("/3/0/0", None), "read /3/0/0").await?;
    say(
        "5. One resource as plain text",
        &format!(
            "Without an Accept option, a single resource comes back as text/plain (format {}):\n/3/0/0 Manufacturer = {:?}",
            resp.content_format().ok().flatten().unwrap_or(0),
            String::from_utf8_lossy(&resp.payload)
        ),
    );

    let resp = expect_ok(&mut server, get("/3/0", Some(cf::TLV)), "read /3/0 as TLV").await?;
    say(
        "6. The same object in TLV",
        "LwM2M 1.0 servers use TLV, a compact binary format. The bytes, then what they mean:",
    );
    show("bytes", &hex(&resp.payload));
    show("decoded", &values(cf::TLV, "/3/0", &resp.payload));

    let resp = expect_ok(&mut server, get("/4/0", Some(cf::SENML_CBOR)), "read /4/0").await?;
    say(
        "7. Connectivity Monitoring in SenML CBOR",
        "/4/0 reports the network this gateway really uses (bearer, addresses, routers),\n\
         read from the kernel; radio values appear only when a modem is present:",
    );
    show("decoded", &values(cf::SENML_CBOR, "/4/0", &resp.payload));

    let resp = expect_ok(
        &mut server,
        get("/3/0", Some(cf::LINK_FORMAT)),
        "discover /3/0",
    )
    .await?;
    say(
        "8. Discover",
        "Discover lists the resources an instance has (dim= counts the instances of a multi-instance resource):",
    );
    show(
        "links",
        &String::from_utf8_lossy(&resp.payload).replace(",<", ",\n<"),
    );

    // A write that changes the registration.
    let mut write = Message::request(Code::PUT);
    write.set_uri_path("/1/0/1");
    write.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::TEXT));
    write.payload = b"120".to_vec();
    expect_ok(&mut server, write, "write /1/0/1").await?;
    say(
        "9. A write",
        "The server writes the registration lifetime /1/0/1 = 120 s. The agent answers 2.04 Changed\n\
         and immediately sends a registration Update carrying the new lifetime:",
    );
    match server.next_event(WAIT).await {
        Some(ServerEvent::Updated { query }) => show("update query", &query.join("&")),
        other => bail!("expected a registration update, got {other:?}"),
    }

    // An observation.
    let mut attrs = Message::request(Code::PUT);
    attrs.set_uri_path("/3/0/13");
    attrs.add_option(opt::URI_QUERY, b"pmin=1".to_vec());
    attrs.add_option(opt::URI_QUERY, b"pmax=2".to_vec());
    expect_ok(&mut server, attrs, "write-attributes").await?;
    let (first, token) = server
        .observe("/3/0/13", None)
        .await
        .map_err(anyhow::Error::msg)?;
    say(
        "10. Observing the device clock",
        "The server sets pmin=1 pmax=2 on /3/0/13 (Current Time) and observes it: the agent must\n\
         report at least every 2 s and at most every 1 s. Notifications as they arrive:",
    );
    show(
        "first answer",
        &format!(
            "Observe={} value={}",
            first.observe().ok().flatten().unwrap_or(0),
            String::from_utf8_lossy(&first.payload)
        ),
    );
    let t0 = Instant::now();
    for _ in 0..3 {
        match server.next_event(WAIT).await {
            Some(ServerEvent::Notification {
                observe, payload, ..
            }) => show(
                "notification",
                &format!(
                    "after {:.1} s: Observe={observe} value={}",
                    t0.elapsed().as_secs_f32(),
                    String::from_utf8_lossy(&payload)
                ),
            ),
            other => bail!("expected a notification, got {other:?}"),
        }
    }
    expect_ok(&mut server, get("/3/0/13", None), "read before cancel").await?;
    server
        .cancel("/3/0/13", token)
        .await
        .map_err(anyhow::Error::msg)?;
    say(
        "11. Cancel",
        "The server cancels the observation (GET with Observe=1): notifications stop.",
    );

    // Clean shutdown.
    let _ = stop_tx.send(());
    let stopping = Instant::now();
    match server.next_event(WAIT).await {
        Some(ServerEvent::Deregistered) => {}
        Some(ServerEvent::Notification { .. }) => {
            // A notification may have been in flight when we cancelled; the De-register follows.
            if !matches!(
                server.next_event(WAIT).await,
                Some(ServerEvent::Deregistered)
            ) {
                bail!("no de-registration");
            }
        }
        other => bail!("expected a de-registration, got {other:?}"),
    }
    agent.await.context("agent task")?.context("agent")?;
    say(
        "12. Shutdown",
        &format!(
            "On SIGTERM (here: the demo's stop signal) the agent de-registers (DELETE /rd/demo)\n\
             and exits: {} ms from the signal to exit.",
            stopping.elapsed().as_millis()
        ),
    );
    firmware::chapter(&mut server, state_dir, &config, 13).await?;
    println!("\nDone. Run the whole test suite with: tests/run");
    Ok(())
}
