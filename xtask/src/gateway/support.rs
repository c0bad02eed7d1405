//! What the gateway stage needs around the servers it runs: a process whose
//! output is kept line by line with the time each line arrived (so a
//! scenario can order events across processes) and that is stopped however
//! the stage ends, a minimal HTTP client that can pick its source address
//! on loopback, and the deploy/ files with their addresses replaced.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// One line a process wrote, and when the stage read it.
#[derive(Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

/// A running server. Dropping it stops it: SIGTERM to its process group,
/// then SIGKILL after a grace period.
pub struct Server {
    pub name: String,
    child: Child,
    exited: Option<ExitStatus>,
    lines: Arc<Mutex<Vec<Line>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts `command` in a process group of its own (nginx's workers
    /// included), with stdout and stderr kept and copied to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Server> {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.process_group(0);
        // SAFETY: prctl is async-signal-safe; this runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // Should the stage itself be killed, its servers go with it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().with_context(|| format!("starting {name}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let file = Arc::new(Mutex::new(
            File::create(log).with_context(|| format!("creating {}", log.display()))?,
        ));
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        let readers = streams
            .into_iter()
            .map(|stream| {
                let (lines, file) = (Arc::clone(&lines), Arc::clone(&file));
                std::thread::spawn(move || {
                    for text in BufReader::new(stream).lines().map_while(Result::ok) {
                        let _ = writeln!(file.lock().expect("log file"), "{text}");
                        lines.lock().expect("lines").push(Line { at: Instant::now(), text });
                    }
                })
            })
            .collect();
        Ok(Server { name: name.to_string(), child, exited: None, lines, readers })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().expect("lines").clone()
    }

    /// The first line that `matches`, waiting up to `deadline` for it.
    pub fn wait_for_line(
        &self,
        what: &str,
        deadline: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Line> {
        let started = Instant::now();
        loop {
            if let Some(line) = self.lines().into_iter().find(|line| matches(&line.text)) {
                return Ok(line);
            }
            if started.elapsed() > deadline {
                bail!("{}: no line {what} within {deadline:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is our own child's.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits up to `deadline` for the process to exit, then reads the rest
    /// of its output.
    pub fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if started.elapsed() > deadline {
                bail!("{} did not exit within {deadline:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM to the group, SIGKILL to it after 5 s.
    fn stop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        let group = self.pid();
        // SAFETY: as in `signal`; the group is the one `spawn` created.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        if self.wait_exit(Duration::from_secs(5)).is_err() {
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = self.wait_exit(Duration::from_secs(5));
        }
        // Workers of a master that exited first.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.0 request (so that no answer is chunked), from `from` on
/// loopback when given: 127.0.0.0/8 is all local, so each client of a
/// scenario can have an address of its own.
pub fn http(
    to: SocketAddr,
    from: Option<Ipv4Addr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(from) = from {
        socket
            .bind(&SocketAddrV4::new(from, 0).into())
            .with_context(|| format!("binding {from}"))?;
    }
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: gateway.test\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of the header")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    Ok(Answer { status, headers, body: body.to_string() })
}

/// A deploy/ file as the stage runs it: each `(from, to)` replaced, and
/// each `from` required exactly once, so that an edit of the file that
/// moves an address fails here rather than testing something else.
pub fn render(root: &Path, file: &str, replace: &[(&str, String)]) -> anyhow::Result<String> {
    let path = root.join(file);
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for (from, to) in replace {
        let count = text.matches(from).count();
        if count != 1 {
            bail!(
                "{file} holds {from:?} {count} times, not once: update the gateway stage with it"
            );
        }
        text = text.replace(from, to);
    }
    Ok(text)
}

/// The first line of what `program args` prints (on stdout or stderr).
pub fn version(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    let text = [output.stdout, output.stderr].concat();
    Ok(String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string())
}
