//! Debian packages a test needs (monitoring plugins, dnsmasq), installed
//! when missing, the way `cargo xtask gateway` installs its servers: as root
//! with `apt-get`, while `/usr/sbin/policy-rc.d` answers 101 so that no
//! package starts a system service; otherwise a panic that says what to
//! install. Never a silent skip.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::process::lock;

/// `path` (a file the package ships), after installing `package` if the
/// file is missing. Panics when it cannot be installed, naming the package.
pub fn require_package(path: &str, package: &str) -> PathBuf {
    // One apt-get at a time within the test process; other processes wait
    // on dpkg's own lock.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _installing = lock(&INSTALLING);
    let wanted = Path::new(path);
    if wanted.exists() {
        return wanted.to_owned();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the tests need {path}, from Debian's package {package}: install it \
             (`sudo apt-get install {package}`) or run the tests as root, which installs it"
        );
    }
    eprintln!("testkit: installing Debian's {package} for {path}");
    if let Err(error) = install(package) {
        panic!("installing Debian's {package} (for {path}) failed: {error}");
    }
    assert!(wanted.exists(), "{package} is installed but {path} is not there");
    wanted.to_owned()
}

fn install(package: &str) -> Result<(), String> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    // Whatever was there (a container's own, often) comes back afterwards.
    let previous = std::fs::read(policy).ok().zip(std::fs::metadata(policy).ok());
    std::fs::write(
        policy,
        "#!/bin/sh\n# healthd tests: start no service during an install\nexit 101\n",
    )
    .map_err(|e| format!("writing {}: {e}", policy.display()))?;
    std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", policy.display()))?;
    let apt = |args: &[&str]| -> Result<(), String> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("running apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("apt-get {} failed ({status})", args.join(" ")))
        }
    };
    let lock_wait = ["-o", "DPkg::Lock::Timeout=300"];
    let install = ["install", "-y", "-q", "--no-install-recommends", package];
    fn with_lock_wait<'a>(args: &[&'a str], lock_wait: &[&'a str]) -> Vec<&'a str> {
        [args, lock_wait].concat()
    }
    // Try from the package lists there are; update them only if that fails.
    let installed = apt(&with_lock_wait(&install, &lock_wait)).or_else(|_| {
        apt(&with_lock_wait(&["update", "-q"], &lock_wait))?;
        apt(&with_lock_wait(&install, &lock_wait))
    });
    let restored = match previous {
        Some((bytes, metadata)) => std::fs::write(policy, bytes)
            .and_then(|()| std::fs::set_permissions(policy, metadata.permissions())),
        None => std::fs::remove_file(policy),
    };
    installed?;
    restored.map_err(|e| format!("restoring {}: {e}", policy.display()))
}
