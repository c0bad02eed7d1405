//! Python tools the tests run (an SMTP server, a webhook signature
//! verifier), from PyPI at the exact versions `testkit/python-requirements.txt`
//! pins, in a venv of the project's own under `target/testkit/venv`:
//! installed on first use, reused while the pins and the Python stay the same.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::process::lock;

const REQUIREMENTS: &str = include_str!("../python-requirements.txt");

/// The venv's `python`, with the pinned tools installed. Panics, saying
/// why, when they cannot be installed.
pub fn python() -> PathBuf {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _installing = lock(&INSTALLING);
    let venv = target_dir().join("testkit/venv");
    std::fs::create_dir_all(venv.parent().unwrap()).expect("creating target/testkit");
    // Another test process may be installing too: one at a time.
    let lock_file = std::fs::File::create(venv.with_extension("lock")).expect("the venv's lock");
    // SAFETY: flock on a file this function holds open.
    unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX) };
    let python = venv.join("bin/python");
    let stamp = venv.join(".testkit-stamp");
    let version = Command::new("python3")
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|error| panic!("the tests need python3 (Debian's python3-venv): {error}"));
    let want = format!("{:x} {version}", Sha256::digest(REQUIREMENTS.as_bytes()));
    if std::fs::read_to_string(&stamp).is_ok_and(|have| have == want) && python.exists() {
        return python;
    }
    eprintln!("testkit: installing the tests' Python tools into {}", venv.display());
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv));
    let requirements = venv.join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS).expect("writing the requirements");
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "--require-virtualenv", "-r"])
        .arg(&requirements));
    std::fs::write(&stamp, want).expect("writing the venv's stamp");
    python
}

fn run(command: &mut Command) {
    let status = command.status().unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    assert!(status.success(), "{command:?} failed ({status}): see its output above");
}

/// The workspace's target directory, where cargo builds.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target"))
}
