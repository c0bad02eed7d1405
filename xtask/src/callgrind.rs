//! Instructions per request, counted by callgrind: unlike requests/s on a
//! shared two-core machine, the count does not move with what else runs,
//! so it shows what healthd's own work per probe costs next to the
//! baseline's, and whether a change made it cheaper.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// Requests sent before counting starts: connection set-up, first-use
/// allocations and lazy initialisation are not what a probe costs.
const WARM_UP: usize = 500;

/// A server process running under `valgrind --tool=callgrind`.
pub struct Instrumented {
    pid: u32,
    out_file: PathBuf,
}

/// The command line that runs `program` under callgrind, counting nothing
/// until `count_requests` switches instrumentation on.
pub fn wrap(program: &Path, out_dir: &Path) -> (Command, PathBuf) {
    let out_file = out_dir.join(format!(
        "callgrind.{}.out",
        program.file_name().map_or("server".into(), |name| name.to_string_lossy())
    ));
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg("--instr-atstart=no")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg("--quiet")
        .arg(program);
    (command, out_file)
}

impl Instrumented {
    pub fn new(pid: u32, out_file: PathBuf) -> Self {
        Instrumented { pid, out_file }
    }

    /// Sends `count` requests for `path` over one keep-alive connection
    /// with instruction counting on, and returns instructions per request
    /// across every thread of the server (the log writer's included).
    /// The dump is moved to `keep` when given, else removed.
    pub fn count_requests(
        &self,
        port: u16,
        path: &str,
        token: Option<&str>,
        count: usize,
        keep: Option<&Path>,
    ) -> anyhow::Result<f64> {
        let mut client = KeepAliveClient::connect(port, path, token)?;
        self.control(&["--instr=on"])?;
        for _ in 0..WARM_UP {
            client.request()?;
        }
        self.control(&["--zero"])?;
        for _ in 0..count {
            client.request()?;
        }
        let before = dumped_files(&self.out_file)?;
        self.control(&["--dump"])?;
        // Switching instrumentation off discards what it counted: only
        // after the dump.
        self.control(&["--instr=off"])?;
        let dump = dumped_files(&self.out_file)?
            .into_iter()
            .find(|file| !before.contains(file))
            .context("callgrind wrote no dump")?;
        let text = std::fs::read_to_string(&dump)?;
        match keep {
            Some(keep) => std::fs::rename(&dump, keep)?,
            None => std::fs::remove_file(&dump)?,
        }
        let total: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:")))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no instruction total in {}", dump.display()))?;
        Ok(total / count as f64)
    }

    fn control(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = Command::new("callgrind_control")
            .args(args)
            .arg(self.pid.to_string())
            .output()
            .context("running callgrind_control")?;
        if !output.status.success() {
            bail!(
                "callgrind_control {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// Instructions per request spent in each of `functions` and in what it
/// calls (callgrind's inclusive cost), read from a dump of `requests`
/// requests; `None` for a function the dump does not name (inlined).
pub fn inclusive_per_request(
    dump: &Path,
    requests: usize,
    functions: &[&str],
) -> anyhow::Result<Vec<Option<f64>>> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(dump)
        .output()
        .context("running callgrind_annotate")?;
    if !output.status.success() {
        bail!("callgrind_annotate failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(functions
        .iter()
        .map(|function| {
            // `3,808 ( 1.2%)  ???:crate::module::function [/path/binary]`
            let name = format!(":{function} [");
            let line = text.lines().find(|line| line.contains(&name))?;
            let count: f64 = line.split_whitespace().next()?.replace(',', "").parse().ok()?;
            Some(count / requests as f64)
        })
        .collect())
}

/// The dumps callgrind has written next to `out_file` (`out_file.N`).
fn dumped_files(out_file: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = out_file.parent().context("no directory")?;
    let prefix = format!("{}.", out_file.file_name().context("no file name")?.to_string_lossy());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|name| name.to_string_lossy().starts_with(&prefix)) {
            files.push(path);
        }
    }
    Ok(files)
}

/// HTTP/1.1 GETs, one after another, on one connection.
struct KeepAliveClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
    line: String,
    body: Vec<u8>,
}

impl KeepAliveClient {
    fn connect(port: u16, path: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        // Valgrind runs the server tens of times slower than native.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        let auth =
            token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n").into_bytes();
        Ok(KeepAliveClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            request,
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// One request; its answer must be 200 with a body.
    fn request(&mut self) -> anyhow::Result<()> {
        self.writer.write_all(&self.request)?;
        self.line.clear();
        self.reader.read_line(&mut self.line)?;
        if !self.line.starts_with("HTTP/1.1 200") {
            bail!("unexpected answer: {:?}", self.line.trim_end());
        }
        let mut length = None;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                bail!("the server closed the connection");
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.context("no Content-Length")?;
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body)?;
        Ok(())
    }
}
