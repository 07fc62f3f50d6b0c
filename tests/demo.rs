//! The README's first command, `cargo run --bin lwm2md-demo`, end to end: the demo must exit 0
//! (it checks every value it shows and fails otherwise) and tell the whole story, from the
//! registration to the firmware updates and the refused forged package.

use std::process::Command;
use std::time::{Duration, Instant};

/// Lines (or parts of lines) every successful run prints, in this order.
const KEY_LINES: &[&str] = &[
    "== 3. Registration",
    "== 9. A write",
    "== 12. Shutdown",
    "It registered after",
    "its object list now has </5/0>",
    "== 15. Push: package 2.0.0 with Block1",
    "push [##############################] 100%",
    "2.04",
    "/5/0/3 read between two blocks: 1 (Downloading)",
    "/5/0/3 State = 2 (Downloaded); /5/0/6 = \"demo-os\", /5/0/7 = \"2.0.0\"",
    "slot B holds the verified image",
    "running slot B\n",
    "lwm2md_slot=A lwm2md_trial=B lwm2md_tried=1",
    "/5/0/5 Update Result = 1 (success)",
    "/5/0/7 = \"2.0.0\", /3/0/3 firmware version = \"2.0.0\"",
    "lwm2md_slot=B lwm2md_trial= lwm2md_tried=0",
    "== 17. Pull: package 3.0.0 over CoAP Block2",
    "/fw/3.0.0.pkg",
    "pull [##############################] 100%",
    "slot A holds the verified image",
    "lwm2md_slot=B lwm2md_trial=A lwm2md_tried=1",
    "/5/0/7 = \"3.0.0\", /3/0/3 firmware version = \"3.0.0\"",
    "lwm2md_slot=A lwm2md_trial= lwm2md_tried=0",
    "== 19. A forged package",
    "block 2 refused: 4.00",
    "/5/0/5 Update Result = 5 (integrity check failure), /5/0/3 State = 0 (Idle)",
    "/3/0/3 firmware version = \"3.0.0\"",
    "running slot A\n",
    "== 20. Shutdown",
    "Done.",
];

#[test]
fn the_demo_runs_end_to_end_and_tells_the_whole_story() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lwm2md-demo"))
        .output()
        .expect("run lwm2md-demo");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lwm2md-demo exited with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let mut rest = stdout.as_ref();
    for line in KEY_LINES {
        match rest.find(line) {
            Some(at) => rest = &rest[at + line.len()..],
            None => panic!("missing (in order): {line:?}\n--- stdout\n{stdout}"),
        }
    }
    // Without --verbose the agent's expected warnings (the forged package) stay out of sight.
    assert!(stderr.trim().is_empty(), "stderr:\n{stderr}");
    // The quick start promises a short demo; a slow one means something waited for a timeout.
    assert!(took < Duration::from_secs(40), "the demo took {took:?}");
}
