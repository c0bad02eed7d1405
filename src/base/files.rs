//! Files healthd reads (the config, CA bundles): regular files only, up to
//! a size cap. The file is opened without blocking (a FIFO would otherwise
//! wait for a writer) and checked on the open descriptor, so what is read
//! is what was checked; `/dev/zero`, a FIFO or a directory is a reason,
//! never a hang or an allocation without end.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The most a config file may hold: a config of 10,000 checks is about 1 MB.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// The most a PEM file (a CA bundle) may hold: every public root of a
/// system store together is about 200 KB.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The bytes of the regular file at `path`, at most `cap` of them; else a
/// reason fit for `FILE: KEY: REASON` (it never holds the contents).
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|error| format!("cannot read {}: {}", path.display(), io_reason(&error)))?;
    let metadata = file
        .metadata()
        .map_err(|error| format!("cannot read {}: {}", path.display(), io_reason(&error)))?;
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!("{} is {what}: expected a regular file", path.display()));
    }
    if metadata.len() > cap {
        return Err(too_large(path, cap));
    }
    read_at_most(file, cap).map_err(|error| match error {
        ReadError::TooLarge => too_large(path, cap),
        ReadError::Io(error) => format!("cannot read {}: {}", path.display(), io_reason(&error)),
    })
}

/// `read_capped` as text.
pub fn read_text_capped(path: &Path, cap: u64) -> Result<String, String> {
    String::from_utf8(read_capped(path, cap)?)
        .map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

enum ReadError {
    TooLarge,
    Io(std::io::Error),
}

/// Reads at most `cap` bytes: a file that grows while read is still capped.
fn read_at_most(file: File, cap: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

fn too_large(path: &Path, cap: u64) -> String {
    format!("{} is larger than {} bytes", path.display(), cap)
}

/// The error's kind in words, without the OS's message numbers.
fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("healthd-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_regular_file_under_the_cap_is_read() {
        let dir = temp_dir("regular");
        let path = dir.join("a.toml");
        std::fs::write(&path, "[server]\n").unwrap();
        assert_eq!(read_text_capped(&path, 100).unwrap(), "[server]\n");
        assert_eq!(
            read_capped(&path, 3).unwrap_err(),
            format!("{} is larger than 3 bytes", path.display())
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn devices_fifos_directories_and_missing_files_are_reasons_not_hangs() {
        let dir = temp_dir("odd");
        let fifo = dir.join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        for (path, said) in [
            (Path::new("/dev/zero").to_path_buf(), "is a device"),
            (fifo, "is a FIFO"),
            (dir.clone(), "is a directory"),
            (dir.join("missing"), "no such file"),
        ] {
            let reason = read_capped(&path, MAX_PEM_BYTES).unwrap_err();
            assert!(reason.contains(said), "{}: {reason}", path.display());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
