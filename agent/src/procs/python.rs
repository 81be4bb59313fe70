//! Which CPython a process runs and where its interpreter state lives, so the kernel side can
//! walk its frames (`PY_PROCS`).
//!
//! `_PyRuntime` is a dynamic symbol of `libpython3.X.so` (a shared build, e.g. pyenv's) or of
//! the `python3.X` executable itself (a static build, e.g. Debian's). Its address in the process
//! is the symbol's value plus the load bias of the file's mapping (/proc/<pid>/maps). The
//! version comes from the `Py_Version` symbol (3.11+), else from the file's name. Layouts are
//! per version in [`layout`]; a version without one is "unreadable" and its queries are
//! attributed by the thread heuristic, marked as such.
use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use herdwatch_common::{PY_NO_CFRAME, PyOffsets, PyProcess, py_flags};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, read::ReadCache};

/// A CPython version's layout: what the kernel side reads, and what the agent reads from code
/// objects to name a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `_PyRuntime.interpreters.head`.
    pub runtime_interpreters_head: u64,
    pub kernel: PyOffsets,
    pub code: CodeLayout,
}

/// Offsets in `PyCodeObject` and in the string objects it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLayout {
    pub co_filename: u64,
    pub co_qualname: u64,
    pub co_firstlineno: u64,
    pub co_linetable: u64,
    pub co_code_adaptive: u64,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's characters start.
    pub ascii_data: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where other compact strings' characters start.
    pub compact_data: u64,
    /// True when the frame's instruction field points at the last instruction started
    /// (`prev_instr`, 3.11–3.12) rather than the current one (`instr_ptr`, 3.13).
    pub instr_is_previous: bool,
}

/// Offsets measured with `offsetof` against each version's own internal headers
/// (Include/internal/pycore_{runtime,interp,frame,code}.h), x86_64 and aarch64 alike (LP64).
pub fn layout(major: u8, minor: u8) -> Option<Layout> {
    let frame = |code, previous, instr, owner| PyOffsets {
        frame_code: code,
        frame_previous: previous,
        frame_instr: instr,
        frame_owner: owner,
        owner_generator: 1,
        ..PyOffsets::default()
    };
    match (major, minor) {
        (3, 11) => Some(Layout {
            runtime_interpreters_head: 40,
            kernel: PyOffsets {
                interp_threads_head: 16,
                tstate_next: 8,
                tstate_native_thread_id: 160,
                tstate_frame: 56,
                cframe_current_frame: 8,
                owner_cstack: 0xff,
                ..frame(32, 48, 56, 69)
            },
            code: CodeLayout {
                co_filename: 112,
                co_qualname: 128,
                co_firstlineno: 72,
                co_linetable: 136,
                co_code_adaptive: 184,
                ascii_data: 48,
                compact_data: 72,
                instr_is_previous: true,
            },
        }),
        (3, 12) => Some(Layout {
            runtime_interpreters_head: 40,
            kernel: PyOffsets {
                interp_threads_head: 72,
                tstate_next: 8,
                tstate_native_thread_id: 144,
                tstate_frame: 56,
                cframe_current_frame: 0,
                owner_cstack: 3,
                ..frame(0, 8, 56, 70)
            },
            code: CodeLayout {
                co_filename: 112,
                co_qualname: 128,
                co_firstlineno: 68,
                co_linetable: 136,
                co_code_adaptive: 192,
                ascii_data: 40,
                compact_data: 56,
                instr_is_previous: true,
            },
        }),
        (3, 13) => Some(Layout {
            runtime_interpreters_head: 632,
            kernel: PyOffsets {
                interp_threads_head: 7344,
                tstate_next: 8,
                tstate_native_thread_id: 160,
                tstate_frame: 72,
                cframe_current_frame: PY_NO_CFRAME,
                owner_cstack: 3,
                ..frame(0, 8, 56, 70)
            },
            code: CodeLayout {
                co_filename: 112,
                co_qualname: 128,
                co_firstlineno: 68,
                co_linetable: 136,
                co_code_adaptive: 200,
                ascii_data: 40,
                compact_data: 56,
                instr_is_previous: false,
            },
        }),
        _ => None,
    }
}

/// Why a process's frames cannot be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("frame walking is off (python_frames = false)")]
    Off,
    #[error("no python executable or libpython mapped")]
    NotPython,
    #[error("{0}: no _PyRuntime among its dynamic symbols (stripped or not CPython)")]
    NoRuntime(PathBuf),
    #[error("CPython {0}.{1} has no frame layout in this agent")]
    Version(u8, u8),
    #[error("{0}")]
    Io(String),
}

/// A process whose frames the kernel side can walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    pub major: u8,
    pub minor: u8,
    /// The file `_PyRuntime` was found in (as the process sees it).
    pub file: PathBuf,
    pub layout: Layout,
    pub process: PyProcess,
}

/// Symbols of one interpreter file, read once per (device, inode).
#[derive(Debug, Clone)]
struct FileSymbols {
    runtime: Option<u64>,
    py_version: Option<u64>,
    /// `p_vaddr - p_offset` of the first loadable segment, rounded down to a page.
    first_load_vaddr: u64,
}

/// Finds interpreters; caches what it read of each interpreter file (bounded).
#[derive(Debug, Default)]
pub struct Interpreters {
    files: HashMap<(u64, u64), FileSymbols>,
}

const MAX_FILES: usize = 256;
const PAGE: u64 = 4096;

impl Interpreters {
    /// The interpreter of `pid`. `asyncio`: its frames are walked on HTTP writes too.
    pub fn discover(&mut self, pid: u32, asyncio: bool) -> Result<Interpreter, Unreadable> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|e| Unreadable::Io(format!("/proc/{pid}/maps: {e}")))?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let (file, base) = python_mapping(&maps, exe.as_deref()).ok_or(Unreadable::NotPython)?;
        let symbols = self.symbols(pid, &file)?;
        let runtime = symbols
            .runtime
            .ok_or_else(|| Unreadable::NoRuntime(file.clone()))?;
        let bias = base.wrapping_sub(symbols.first_load_vaddr);
        let (major, minor) = symbols
            .py_version
            .and_then(|at| super::memory::read_u32(pid, bias.wrapping_add(at)))
            .map(|hex| ((hex >> 24) as u8, (hex >> 16) as u8))
            .or_else(|| version_from_name(&file))
            .ok_or(Unreadable::NotPython)?;
        let layout = layout(major, minor).ok_or(Unreadable::Version(major, minor))?;
        let (pidns_dev, pidns_ino) = foreign_pid_namespace(pid);
        Ok(Interpreter {
            major,
            minor,
            file,
            layout,
            process: PyProcess {
                interp_head_addr: bias
                    .wrapping_add(runtime)
                    .wrapping_add(layout.runtime_interpreters_head),
                pidns_dev,
                pidns_ino,
                offsets: layout.kernel,
                flags: if asyncio { py_flags::WALK_HTTP } else { 0 },
                _reserved: 0,
                boundary_code: 0,
            },
        })
    }

    fn symbols(&mut self, pid: u32, file: &Path) -> Result<FileSymbols, Unreadable> {
        // Through the process's root: a container's python is not at that path on the host.
        let on_host =
            Path::new(&format!("/proc/{pid}/root")).join(file.strip_prefix("/").unwrap_or(file));
        let f = File::open(&on_host)
            .map_err(|e| Unreadable::Io(format!("{}: {e}", on_host.display())))?;
        let meta = f
            .metadata()
            .map_err(|e| Unreadable::Io(format!("{}: {e}", on_host.display())))?;
        let key = (meta.dev(), meta.ino());
        if let Some(s) = self.files.get(&key) {
            return Ok(s.clone());
        }
        let cache = ReadCache::new(f);
        let elf = object::File::parse(&cache)
            .map_err(|e| Unreadable::Io(format!("{}: {e}", file.display())))?;
        let mut runtime = None;
        let mut py_version = None;
        for sym in elf.dynamic_symbols() {
            match sym.name() {
                Ok("_PyRuntime") => runtime = Some(sym.address()),
                Ok("Py_Version") => py_version = Some(sym.address()),
                _ => {}
            }
        }
        let first_load_vaddr = elf
            .segments()
            .map(|s| s.address().wrapping_sub(s.file_range().0))
            .min()
            .unwrap_or(0)
            & !(PAGE - 1);
        let symbols = FileSymbols {
            runtime,
            py_version,
            first_load_vaddr,
        };
        if self.files.len() >= MAX_FILES {
            self.files.clear();
        }
        self.files.insert(key, symbols.clone());
        Ok(symbols)
    }
}

/// The interpreter file in a maps listing and the start of its mapping at file offset 0:
/// libpython when mapped (a shared build keeps `_PyRuntime` there), else the executable when
/// its name says python.
fn python_mapping(maps: &str, exe: Option<&Path>) -> Option<(PathBuf, u64)> {
    let mut exe_base = None;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(_dev), Some(_inode), Some(path)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if u64::from_str_radix(offset, 16).ok() != Some(0) {
            continue;
        }
        let Some(start) = range
            .split('-')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.starts_with("libpython3.") {
            return Some((PathBuf::from(path), start));
        }
        if exe_base.is_none() && exe.is_some_and(|e| e == Path::new(path)) {
            exe_base = Some(start);
        }
    }
    let exe = exe?;
    let name = exe.file_name()?.to_str()?;
    (name.starts_with("python") && exe_base.is_some())
        .then(|| (exe.to_path_buf(), exe_base.unwrap_or(0)))
}

/// `python3.11`, `libpython3.11.so.1.0` → (3, 11).
fn version_from_name(file: &Path) -> Option<(u8, u8)> {
    let name = file.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("lib")
        .unwrap_or(name)
        .strip_prefix("python")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The process's pid namespace when it differs from the agent's, as (device, inode).
fn foreign_pid_namespace(pid: u32) -> (u64, u64) {
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/pid"));
    let ours = std::fs::metadata("/proc/self/ns/pid");
    match (theirs, ours) {
        (Ok(t), Ok(o)) if (t.dev(), t.ino()) != (o.dev(), o.ino()) => (t.dev(), t.ino()),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(
            version_from_name(Path::new("/usr/bin/python3.11")),
            Some((3, 11))
        );
        assert_eq!(
            version_from_name(Path::new("/x/lib/libpython3.12.so.1.0")),
            Some((3, 12))
        );
        assert_eq!(version_from_name(Path::new("/usr/bin/node")), None);
    }

    #[test]
    fn libpython_wins_over_the_executable() {
        let maps = "\
55d0c000-55d0d000 r--p 00000000 fe:01 10 /root/.pyenv/versions/3.11.7/bin/python3.11
7f00a000-7f00b000 r--p 00000000 fe:01 11 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
7f00b000-7f00c000 r-xp 00001000 fe:01 11 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
";
        let exe = Path::new("/root/.pyenv/versions/3.11.7/bin/python3.11");
        assert_eq!(
            python_mapping(maps, Some(exe)),
            Some((
                PathBuf::from("/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0"),
                0x7f00a000
            ))
        );
        let static_build = "00400000-00420000 r--p 00000000 fe:01 12 /usr/bin/python3.11\n";
        assert_eq!(
            python_mapping(static_build, Some(Path::new("/usr/bin/python3.11"))),
            Some((PathBuf::from("/usr/bin/python3.11"), 0x400000))
        );
        assert_eq!(
            python_mapping(static_build, Some(Path::new("/usr/bin/node"))),
            None
        );
    }

    #[test]
    fn pointer_offsets_fit_the_kernel_block() {
        // The kernel side reads pointers at `offset & 0x38` and the owner byte below 72.
        for minor in 11..=13 {
            let l = layout(3, minor).expect("layout");
            for off in [
                l.kernel.frame_code,
                l.kernel.frame_previous,
                l.kernel.frame_instr,
            ] {
                assert_eq!(off & !0x38, 0, "3.{minor}: {off}");
            }
            let owner = l.kernel.frame_owner as usize;
            assert!(
                (8..herdwatch_common::PY_FRAME_BLOCK).contains(&owner),
                "3.{minor}: {owner}"
            );
        }
        assert!(layout(3, 10).is_none());
    }
}
