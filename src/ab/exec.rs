//! Running boot-loader tools through a trait, so the same backend code runs the real tools on
//! the device, the real tools on plain files in tests, and scripted replies in unit tests.
//!
//! [`SystemRunner`] is the only place in the crate that spawns boot-loader tools
//! (`fw_printenv`, `fw_setenv`, `grub-editenv`). [`RecordingRunner`] logs every call (and
//! either forwards it to another runner or answers from a closure), which is how the tests
//! prove that each state change is exactly one `fw_setenv` transaction.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use super::AbError;

/// What a tool printed and how it exited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// An output with exit code 0 and the given stdout (for scripted replies).
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        Self {
            code: Some(0),
            stdout: stdout.into(),
            stderr: Vec::new(),
        }
    }

    /// Whether the tool exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output as text (lossy: tool output is never trusted to be UTF-8).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// `Ok(self)` on exit code 0, else [`AbError::Tool`] naming the command line.
    pub fn checked(self, program: &str, args: &[&str]) -> Result<Self, AbError> {
        if self.success() {
            Ok(self)
        } else {
            Err(AbError::Tool {
                command: command_line(program, args),
                status: self
                    .code
                    .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}")),
                stderr: self.stderr_text().trim().to_owned(),
            })
        }
    }
}

/// `program arg…` for messages.
pub fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a program to completion.
pub trait CommandRunner: Send {
    /// Runs `program` with `args`, feeding `stdin` (if any) and collecting its output. A
    /// non-zero exit is not an error here (callers decide, usually with [`Output::checked`]);
    /// failing to start the program is.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, AbError>;
}

impl<R: CommandRunner + Sync + ?Sized> CommandRunner for &R {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, AbError> {
        (**self).run(program, args, stdin)
    }
}

impl<R: CommandRunner + ?Sized> CommandRunner for Box<R> {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, AbError> {
        (**self).run(program, args, stdin)
    }
}

/// Runs real programs with `std::process`.
///
/// The environment is inherited except `LC_ALL=C`, so tool messages are the untranslated ones
/// the backends match on. There is no timeout: the tools work on local files and
/// `fw_setenv` blocks only on `/var/lock/fw_printenv.lock`, which another writer holds for the
/// length of one write.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, AbError> {
        let io_error = |source| AbError::Io {
            path: program.to_owned(),
            source,
        };
        let mut child = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error)?;
        // Feed stdin from a second thread while this one collects the output, so a tool that
        // writes before it has read all its input cannot deadlock against us.
        let output = std::thread::scope(|scope| {
            let feeder = child.stdin.take().map(|mut pipe| {
                let data = stdin.unwrap_or_default();
                scope.spawn(move || pipe.write_all(data))
            });
            let output = child.wait_with_output();
            let fed = feeder.map_or(Ok(()), |f| f.join().unwrap_or(Ok(())));
            (output, fed)
        });
        let (output, fed) = output;
        let output = output.map_err(io_error)?;
        // A tool that exits without reading all of stdin gives EPIPE here; its exit status
        // (checked by the caller) is the better error then.
        if let Err(e) = fed
            && output.status.success()
        {
            return Err(io_error(e));
        }
        Ok(Output {
            code: output.status.code(),
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// What was fed to stdin.
    pub stdin: Option<Vec<u8>>,
}

impl Call {
    /// The stdin as text (lossy).
    pub fn stdin_text(&self) -> String {
        String::from_utf8_lossy(self.stdin.as_deref().unwrap_or_default()).into_owned()
    }
}

/// A shared, cloneable view of the calls a [`RecordingRunner`] has seen (keep one before
/// moving the runner into a backend).
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<Call>>>);

impl CallLog {
    fn lock(&self) -> MutexGuard<'_, Vec<Call>> {
        // A panic while the log was held (only possible in a test) leaves it usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// All calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().clone()
    }

    /// The calls of `program` so far.
    pub fn calls_of(&self, program: &str) -> Vec<Call> {
        self.lock()
            .iter()
            .filter(|c| c.program == program)
            .cloned()
            .collect()
    }

    /// Forgets the calls so far.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

type Reply = Box<dyn Fn(&Call) -> Result<Output, AbError> + Send>;

/// Records every call, then forwards it to an inner runner or answers it with a closure.
pub struct RecordingRunner {
    log: CallLog,
    reply: Reply,
}

impl std::fmt::Debug for RecordingRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingRunner")
            .field("calls", &self.log.lock().len())
            .finish_non_exhaustive()
    }
}

impl RecordingRunner {
    /// Records, then runs the call with `inner` (for example the [`SystemRunner`]).
    pub fn forwarding(inner: impl CommandRunner + 'static) -> Self {
        Self {
            log: CallLog::default(),
            reply: Box::new(move |call: &Call| {
                let args: Vec<&str> = call.args.iter().map(String::as_str).collect();
                inner.run(&call.program, &args, call.stdin.as_deref())
            }),
        }
    }

    /// Records, then answers with `reply` (no process is started).
    pub fn replying(reply: impl Fn(&Call) -> Result<Output, AbError> + Send + 'static) -> Self {
        Self {
            log: CallLog::default(),
            reply: Box::new(reply),
        }
    }

    /// The log of calls (shared with the runner).
    pub fn log(&self) -> CallLog {
        self.log.clone()
    }
}

impl CommandRunner for RecordingRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, AbError> {
        let call = Call {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            stdin: stdin.map(<[u8]>::to_vec),
        };
        self.log.lock().push(call.clone());
        (self.reply)(&call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_runner_feeds_stdin_and_reports_exit_codes() {
        let out = SystemRunner
            .run("cat", &[], Some(b"hello"))
            .expect("cat runs");
        assert_eq!(out, Output::ok("hello"));
        let out = SystemRunner
            .run("sh", &["-c", "echo oops >&2; exit 3"], None)
            .expect("sh runs");
        assert_eq!(out.code, Some(3));
        let err = out.checked("sh", &["-c", "…"]).expect_err("non-zero");
        assert_eq!(err.to_string(), "sh -c … failed (exit 3): oops");
        assert!(matches!(
            SystemRunner.run("/nonexistent/tool", &[], None),
            Err(AbError::Io { .. })
        ));
        // A large input to a tool that reads it all (no pipe deadlock).
        let big = vec![b'x'; 1 << 20];
        let out = SystemRunner.run("wc", &["-c"], Some(&big)).expect("wc");
        assert_eq!(out.stdout_text().trim(), "1048576");
    }

    #[test]
    fn recording_runner_logs_and_replies() {
        let runner = RecordingRunner::replying(|call| Ok(Output::ok(call.args.join(","))));
        let log = runner.log();
        let out = runner.run("tool", &["a", "b"], Some(b"in")).expect("reply");
        assert_eq!(out.stdout_text(), "a,b");
        let calls = log.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].stdin_text(), "in");
        assert_eq!(log.calls_of("other"), vec![]);
        let forwarding = RecordingRunner::forwarding(SystemRunner);
        let out = forwarding.run("echo", &["hi"], None).expect("echo");
        assert_eq!(out.stdout_text(), "hi\n");
        assert_eq!(forwarding.log().calls().len(), 1);
    }
}
