//! Finding (or mounting) tracefs and reading tracepoint `format` files, so the kernel programs
//! read fields at the offsets this kernel really uses.
use std::path::{Path, PathBuf};

use herdwatch_common::TracepointOffsets;

use crate::error::{Error, Result};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Where tracefs is mounted, mounting it at /sys/kernel/tracing when nothing is there yet.
pub fn ensure_mounted() -> Result<PathBuf> {
    if let Some(found) = find_mounted() {
        return Ok(found);
    }
    // Mounted but closed to this user (tracefs is mode 0700): mounting again would not help,
    // and "not mounted" would send the reader the wrong way.
    if let Some((path, source)) = find_unreadable() {
        return Err(Error::TracefsUnreadable { path, source });
    }
    let target = PathBuf::from(CANDIDATES[0]);
    mount_tracefs(&target).map_err(|source| Error::TracefsUnavailable {
        path: target.clone(),
        source,
    })?;
    if target.join("events").is_dir() {
        Ok(target)
    } else {
        Err(Error::TracefsUnavailable {
            path: target,
            source: std::io::Error::other("mounted, but it has no events/ directory"),
        })
    }
}

/// A mounted tracefs, without trying to mount one.
pub fn find_mounted() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// A candidate this process may not list (permission denied), with the error: tracefs is
/// there, an unmounted candidate is an ordinary readable sysfs or debugfs directory.
fn find_unreadable() -> Option<(PathBuf, std::io::Error)> {
    CANDIDATES
        .iter()
        .find_map(|candidate| match std::fs::read_dir(candidate) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Some((PathBuf::from(candidate), e))
            }
            _ => None,
        })
}

fn mount_tracefs(target: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    let to_c = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let (src, fstype) = (to_c("nodev")?, to_c("tracefs")?);
    let dir = to_c(&target.to_string_lossy())?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a tracepoint format file. Pure; unknown lines are ignored.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines().filter_map(parse_field_line).collect()
}

fn parse_field_line(line: &str) -> Option<Field> {
    let line = line.trim();
    let decl = line.strip_prefix("field:")?;
    let mut parts = decl.split(';').map(str::trim);
    let declaration = parts.next()?;
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse().ok();
        }
    }
    // "char prev_comm[16]" → "prev_comm"; "__data_loc char[] filename" → "filename".
    let last = declaration.split_whitespace().last()?;
    let name = last.split('[').next()?.to_string();
    Some(Field {
        name,
        offset: offset?,
        size: size?,
    })
}

fn field_offset(
    tracefs: &Path,
    category: &str,
    event: &str,
    field: &str,
    size: u32,
) -> Result<u32> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::TracepointMissing {
        category: category.into(),
        name: event.into(),
        detail: format!("{}: {e}", path.display()),
    })?;
    let found = parse_format(&text)
        .into_iter()
        .find(|f| f.name == field)
        .ok_or_else(|| Error::TracepointMissing {
            category: category.into(),
            name: event.into(),
            detail: format!("no field {field}"),
        })?;
    if found.size != size {
        return Err(Error::TracepointMissing {
            category: category.into(),
            name: event.into(),
            detail: format!(
                "field {field} is {} bytes, the program reads {size}",
                found.size
            ),
        });
    }
    Ok(found.offset)
}

/// Offsets of every field the programs read, from this kernel's format files.
pub fn read_offsets(tracefs: &Path) -> Result<TracepointOffsets> {
    let f = |c, e, n, s| field_offset(tracefs, c, e, n, s);
    Ok(TracepointOffsets {
        switch_prev_pid: f("sched", "sched_switch", "prev_pid", 4)?,
        switch_prev_state: f("sched", "sched_switch", "prev_state", 8)?,
        switch_next_pid: f("sched", "sched_switch", "next_pid", 4)?,
        wakeup_pid: f("sched", "sched_wakeup", "pid", 4)?,
        exec_filename: f("sched", "sched_process_exec", "filename", 4)?,
        exec_pid: f("sched", "sched_process_exec", "pid", 4)?,
        exec_old_pid: f("sched", "sched_process_exec", "old_pid", 4)?,
        exit_group_dead: f("sched", "sched_process_exit", "group_dead", 1)?,
        newtask_pid: f("task", "task_newtask", "pid", 4)?,
        newtask_clone_flags: f("task", "task_newtask", "clone_flags", 8)?,
        // Filled from BTF by the loader when available.
        task_sum_exec_runtime: 0,
        task_run_delay: 0,
        task_pid: 0,
        _reserved: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWITCH: &str = "name: sched_switch\nID: 316\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;\n\
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
\nprint fmt: \"prev_comm=%s\"\n";

    #[test]
    fn parses_fields_arrays_and_data_loc() {
        let fields = parse_format(SWITCH);
        let get = |n: &str| fields.iter().find(|f| f.name == n).cloned();
        assert_eq!(get("prev_pid").map(|f| (f.offset, f.size)), Some((24, 4)));
        assert_eq!(get("prev_comm").map(|f| (f.offset, f.size)), Some((8, 16)));
        assert_eq!(get("prev_state").map(|f| f.size), Some(8));
        assert_eq!(get("filename").map(|f| f.offset), Some(8));
        assert_eq!(fields.len(), 5);
    }

    #[test]
    fn garbage_lines_are_ignored() {
        assert!(parse_format("field:\nfield:int x; offset:zz; size:4;\n\u{0}\u{1}").is_empty());
    }
}
