//! Naming the frames the kernel side sent: code object → qualified name, file, line table,
//! read from the process's memory once and cached; instruction → line number; and the call
//! site of a stack (its innermost frame outside the standard library and site-packages).
use std::sync::Arc;

use herdwatch_common::PyFrameRef;
use rustc_hash::FxHashMap;

use crate::procs::{memory, python::CodeLayout};

/// Longest name or path kept from a code object (a bound on memory and on labels).
const MAX_NAME: usize = 200;
/// Longest line table read (a function of a few thousand lines).
const MAX_LINETABLE: usize = 64 * 1024;
/// Code objects cached across all processes; past this the cache starts again.
const MAX_CODES: usize = 65_536;

/// Where a query was issued from: the application's line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct CallSite {
    /// `co_filename`, as the process has it.
    pub file: Arc<str>,
    pub line: u32,
    /// `co_qualname`, e.g. `OrderService.create`.
    pub function: Arc<str>,
}

impl std::fmt::Display for CallSite {
    /// `shop/checkout.py:88 in create_order()`: the file's last two path parts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = self.file.rsplitn(3, '/');
        let name = parts.next().unwrap_or_default();
        let short = match parts.next() {
            Some(dir) if !dir.is_empty() => format!("{dir}/{name}"),
            _ => name.to_string(),
        };
        write!(f, "{short}:{} in {}()", self.line, self.function)
    }
}

#[derive(Debug)]
struct Code {
    file: Arc<str>,
    function: Arc<str>,
    first_line: u32,
    linetable: Box<[u8]>,
    /// The standard library, site-packages or a frozen module: not where a person fixes it.
    library: bool,
}

/// Code objects per (tgid, address), bounded; a process's entries go when it exits.
#[derive(Debug, Default)]
pub struct CodeCache {
    codes: FxHashMap<(u32, u64), Option<Arc<Code>>>,
    /// Call sites by the (tgid, code, instruction) of their frame.
    sites: FxHashMap<(u32, u64, u64), Arc<CallSite>>,
    pub stats: CodeStats,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct CodeStats {
    pub code_objects: usize,
    /// Code objects that could not be read (freed, or a garbage pointer).
    pub unreadable: u64,
}

impl CodeCache {
    /// The call site of a stack (innermost first): the innermost frame whose code is the
    /// application's. None when every frame is library code or unreadable. Shared: the same
    /// line is one allocation however often it queries.
    pub fn call_site(
        &mut self,
        tgid: u32,
        layout: &CodeLayout,
        frames: &[PyFrameRef],
    ) -> Option<Arc<CallSite>> {
        for f in frames {
            if let Some(site) = self.sites.get(&(tgid, f.code, f.instr)) {
                return Some(site.clone());
            }
            let Some(code) = self.code(tgid, layout, f.code) else {
                continue;
            };
            if code.library {
                continue;
            }
            let line = instruction_line(layout, f, &code).unwrap_or(code.first_line);
            let site = Arc::new(CallSite {
                file: code.file.clone(),
                line,
                function: code.function.clone(),
            });
            if self.sites.len() >= MAX_CODES {
                self.sites.clear();
            }
            self.sites.insert((tgid, f.code, f.instr), site.clone());
            return Some(site);
        }
        None
    }

    /// The code object among `frames` at which the kernel side's walks of `tgid` may stop
    /// (`is_walk_boundary`), if the stack reaches it. Reads each code object once (cached).
    pub fn walk_boundary(
        &mut self,
        tgid: u32,
        layout: &CodeLayout,
        frames: &[PyFrameRef],
    ) -> Option<u64> {
        for f in frames {
            if let Some(code) = self.code(tgid, layout, f.code)
                && is_walk_boundary(&code.file, &code.function)
            {
                return Some(f.code);
            }
        }
        None
    }

    pub fn forget_process(&mut self, tgid: u32) {
        self.codes.retain(|(t, _), _| *t != tgid);
        self.sites.retain(|(t, _, _), _| *t != tgid);
        self.stats.code_objects = self.codes.len();
    }

    fn code(&mut self, tgid: u32, layout: &CodeLayout, addr: u64) -> Option<Arc<Code>> {
        if let Some(known) = self.codes.get(&(tgid, addr)) {
            return known.clone();
        }
        let code = read_code(tgid, layout, addr).map(Arc::new);
        if code.is_none() {
            self.stats.unreadable += 1;
        }
        if self.codes.len() >= MAX_CODES {
            self.codes.clear();
        }
        self.codes.insert((tgid, addr), code.clone());
        self.stats.code_objects = self.codes.len();
        code
    }
}

fn read_code(pid: u32, layout: &CodeLayout, addr: u64) -> Option<Code> {
    let file = read_str(
        pid,
        layout,
        memory::read_u64(pid, addr + layout.co_filename)?,
    )?;
    let function = read_str(
        pid,
        layout,
        memory::read_u64(pid, addr + layout.co_qualname)?,
    )?;
    let first_line = memory::read_u32(pid, addr + layout.co_firstlineno)?;
    let table = memory::read_u64(pid, addr + layout.co_linetable)?;
    // PyBytesObject: ob_size at 16, bytes at 32.
    let len = usize::try_from(memory::read_u64(pid, table + 16)?).ok()?;
    let mut linetable = vec![0u8; len.min(MAX_LINETABLE)];
    if !memory::read(pid, table + 32, &mut linetable) {
        return None;
    }
    Some(Code {
        library: is_library(&file),
        file: file.into(),
        function: function.into(),
        first_line,
        linetable: linetable.into_boxed_slice(),
    })
}

/// A `str` object's text, bounded. Compact strings only (every code object's are).
fn read_str(pid: u32, layout: &CodeLayout, addr: u64) -> Option<String> {
    // PyASCIIObject: length at 16, state bit-field at 32 (interned:2, kind:3, compact:1, ascii:1).
    let len = usize::try_from(memory::read_u64(pid, addr + 16)?).ok()?;
    let state = memory::read_u32(pid, addr + 32)?;
    let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1 == 1, state >> 6 & 1 == 1);
    if !compact {
        return None;
    }
    let chars = len.min(MAX_NAME);
    let data = addr
        + if ascii {
            layout.ascii_data
        } else {
            layout.compact_data
        };
    let width = match kind {
        1 => 1,
        2 => 2,
        4 => 4,
        _ => return None,
    };
    let mut raw = vec![0u8; chars * width];
    if !memory::read(pid, data, &mut raw) {
        return None;
    }
    let text = raw
        .chunks_exact(width)
        .map(|c| {
            let mut v = [0u8; 4];
            v[..width].copy_from_slice(c);
            char::from_u32(u32::from_le_bytes(v)).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect();
    Some(text)
}

/// The frame a server runs each request or asyncio Task from: asyncio's `Handle._run` (it
/// calls the Task's step, so the Task's coroutine frames are all inward of it), gunicorn's
/// `<Worker>.handle_request` (the WSGI app and its queries are inward of it). Outward lies
/// only the server's own loop, which names no Task and holds no call site.
pub fn is_walk_boundary(file: &str, function: &str) -> bool {
    (function == "Handle._run" && file.ends_with("/asyncio/events.py"))
        || (function.ends_with(".handle_request") && file.contains("/gunicorn/workers/"))
}

/// Standard library, installed packages, frozen or generated code.
pub fn is_library(file: &str) -> bool {
    file.starts_with('<')
        || file.contains("/site-packages/")
        || file.contains("/dist-packages/")
        || stdlib_dir(file)
}

/// `…/lib/python3.11/asyncio/base_events.py` (but not its site-packages).
fn stdlib_dir(file: &str) -> bool {
    file.match_indices("/lib/python").any(|(at, m)| {
        let rest = &file[at + m.len()..];
        let version_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        version_end > 0 && rest[version_end..].starts_with('/')
    })
}

/// The line a frame is at, from the code object's location table.
fn instruction_line(layout: &CodeLayout, frame: &PyFrameRef, code: &Code) -> Option<u32> {
    let start = frame.code.checked_add(layout.co_code_adaptive)?;
    // `prev_instr` sits one code unit before the first instruction until the frame starts.
    let units = frame.instr.checked_sub(start)? / 2;
    line_at(&code.linetable, code.first_line, units)
}

/// CPython 3.11+ location table (Objects/locations.md): entries of `(first & 7) + 1` code
/// units; bits 3–6 of the first byte say how the line changes.
pub fn line_at(table: &[u8], first_line: u32, target_unit: u64) -> Option<u32> {
    let mut line = i64::from(first_line);
    let mut unit = 0u64;
    let mut at = 0usize;
    while at < table.len() {
        let first = table[at];
        let code = (first >> 3) & 15;
        let len = u64::from(first & 7) + 1;
        let delta = match code {
            13 | 14 => signed_varint(table, at + 1)?,
            11 => 1,
            12 => 2,
            _ => 0,
        };
        line += delta;
        if target_unit < unit + len {
            return (code != 15).then(|| u32::try_from(line).ok()).flatten();
        }
        unit += len;
        at += 1;
        while at < table.len() && table[at] & 0x80 == 0 {
            at += 1;
        }
    }
    None
}

fn signed_varint(table: &[u8], mut at: usize) -> Option<i64> {
    let mut byte = *table.get(at)?;
    let mut value = u64::from(byte & 63);
    let mut shift = 0;
    while byte & 64 != 0 && shift < 56 {
        at += 1;
        byte = *table.get(at)?;
        shift += 6;
        value |= u64::from(byte & 63) << shift;
    }
    let magnitude = (value >> 1) as i64;
    Some(if value & 1 == 1 {
        -magnitude
    } else {
        magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_paths() {
        for lib in [
            "/usr/lib/python3.11/asyncio/base_events.py",
            "/root/.pyenv/versions/3.11.7/lib/python3.11/socket.py",
            "/srv/venv/lib/python3.11/site-packages/psycopg/cursor.py",
            "/usr/lib/python3/dist-packages/flask/app.py",
            "<frozen importlib._bootstrap>",
        ] {
            assert!(is_library(lib), "{lib}");
        }
        for app in [
            "/srv/shop/checkout.py",
            "/work/agent/tests/apps/attribution/app.py",
            "/home/u/lib/pythonic/app.py",
        ] {
            assert!(!is_library(app), "{app}");
        }
    }

    #[test]
    fn walks_stop_only_at_a_servers_request_runner() {
        for (file, function) in [
            ("/usr/lib/python3.11/asyncio/events.py", "Handle._run"),
            (
                "/venv/lib/python3.12/site-packages/gunicorn/workers/sync.py",
                "SyncWorker.handle_request",
            ),
            (
                "/venv/lib/python3.11/site-packages/gunicorn/workers/gthread.py",
                "ThreadWorker.handle_request",
            ),
        ] {
            assert!(is_walk_boundary(file, function), "{file} {function}");
        }
        for (file, function) in [
            // The application's own methods of the same name are not the server's.
            ("/srv/shop/events.py", "Handle._run"),
            ("/srv/shop/handlers.py", "Api.handle_request"),
            (
                "/usr/lib/python3.11/asyncio/base_events.py",
                "BaseEventLoop._run_once",
            ),
            (
                "/usr/lib/python3.11/asyncio/events.py",
                "TimerHandle.__init__",
            ),
        ] {
            assert!(!is_walk_boundary(file, function), "{file} {function}");
        }
    }

    #[test]
    fn call_sites_read_as_file_line_function() {
        let site = CallSite {
            file: "/srv/shop/checkout.py".into(),
            line: 88,
            function: "create_order".into(),
        };
        assert_eq!(site.to_string(), "shop/checkout.py:88 in create_order()");
    }

    /// A compact ASCII `str` object as CPython 3.11 lays it out, in our own memory.
    fn fake_str(text: &[u8]) -> Vec<u8> {
        let layout = crate::procs::python::layout(3, 11).expect("3.11").code;
        let mut obj = vec![0u8; layout.ascii_data as usize + text.len() + 1];
        obj[16..24].copy_from_slice(&(text.len() as u64).to_le_bytes());
        // kind 1 (1 byte per char), compact, ascii.
        let state: u32 = (1 << 2) | (1 << 5) | (1 << 6);
        obj[32..36].copy_from_slice(&state.to_le_bytes());
        obj[layout.ascii_data as usize..][..text.len()].copy_from_slice(text);
        obj
    }

    #[test]
    fn code_objects_from_memory_bounded_and_garbage_refused() {
        let layout = crate::procs::python::layout(3, 11).expect("3.11").code;
        let file = fake_str(b"/srv/shop/checkout.py");
        let huge = fake_str(&vec![b'q'; 100_000]);
        let mut table = vec![0u8; 32 + 2];
        table[16..24].copy_from_slice(&2u64.to_le_bytes());
        table[32] = 0x80 | (11 << 3); // 1 unit, one line down
        table[33] = 0x80 | (11 << 3) | 1; // 2 units, one more line down
        let mut code = vec![0u8; layout.co_code_adaptive as usize + 16];
        let put = |code: &mut Vec<u8>, at: u64, v: u64| {
            code[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut code, layout.co_filename, file.as_ptr() as u64);
        put(&mut code, layout.co_qualname, huge.as_ptr() as u64);
        put(&mut code, layout.co_linetable, table.as_ptr() as u64);
        code[layout.co_firstlineno as usize..][..4].copy_from_slice(&87u32.to_le_bytes());
        let code_at = code.as_ptr() as u64;
        let me = std::process::id();
        let mut cache = CodeCache::default();
        let frames = [
            // Garbage first: an unmapped code object is skipped, counted, never a panic.
            PyFrameRef { code: 8, instr: 16 },
            // The second instruction (unit 1): line 87 + 1 + 1.
            PyFrameRef {
                code: code_at,
                instr: code_at + layout.co_code_adaptive + 2,
            },
        ];
        let site = cache.call_site(me, &layout, &frames).expect("a call site");
        assert_eq!((&*site.file, site.line), ("/srv/shop/checkout.py", 89));
        assert_eq!(site.function.len(), MAX_NAME, "a huge qualname is cut");
        assert_eq!(cache.stats.unreadable, 1);
        cache.forget_process(me);
        assert_eq!(cache.stats.code_objects, 0, "freed with its process");
        drop((file, huge, table, code));
    }

    #[test]
    fn the_walk_boundary_is_found_among_a_stacks_code_objects() {
        let layout = crate::procs::python::layout(3, 11).expect("3.11").code;
        let fake_code = |file: &[u8], name: &[u8]| {
            let (file, name) = (fake_str(file), fake_str(name));
            let table = vec![0u8; 32];
            let mut code = vec![0u8; layout.co_code_adaptive as usize + 16];
            for (at, v) in [
                (layout.co_filename, file.as_ptr() as u64),
                (layout.co_qualname, name.as_ptr() as u64),
                (layout.co_linetable, table.as_ptr() as u64),
            ] {
                code[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
            }
            (code, file, name, table)
        };
        let app = fake_code(b"/srv/shop/checkout.py", b"create_order");
        let runner = fake_code(b"/usr/lib/python3.11/asyncio/events.py", b"Handle._run");
        let frame = |c: &Vec<u8>| PyFrameRef {
            code: c.as_ptr() as u64,
            instr: 0,
        };
        let me = std::process::id();
        let mut cache = CodeCache::default();
        assert_eq!(
            cache.walk_boundary(me, &layout, &[frame(&app.0)]),
            None,
            "a stack without the runner has no boundary"
        );
        let stack = [
            PyFrameRef { code: 8, instr: 0 },
            frame(&app.0),
            frame(&runner.0),
        ];
        assert_eq!(
            cache.walk_boundary(me, &layout, &stack),
            Some(runner.0.as_ptr() as u64),
            "found past an unreadable frame"
        );
        drop((app, runner));
    }

    #[test]
    fn location_table_lines() {
        // first line 10: 2 units on line 10 (short form), 3 units one line down (code 11),
        // 1 unit with no location (code 15), then 4 units three lines down (code 13, svarint 6).
        let table = [
            0x80 | 1, // code 0: 2 units, same line, 1 column byte follows
            0x05,
            0x80 | (11 << 3) | 2, // 3 units, line + 1, two column bytes follow
            0x01,
            0x02,
            0x80 | (15 << 3),     // 1 unit, no location
            0x80 | (13 << 3) | 3, // 4 units, line delta svarint 6 → +3
            6,
        ];
        assert_eq!(line_at(&table, 10, 0), Some(10));
        assert_eq!(line_at(&table, 10, 1), Some(10));
        assert_eq!(line_at(&table, 10, 2), Some(11));
        assert_eq!(line_at(&table, 10, 4), Some(11));
        assert_eq!(line_at(&table, 10, 5), None, "no location");
        assert_eq!(line_at(&table, 10, 6), Some(14));
        assert_eq!(line_at(&table, 10, 9), Some(14));
        assert_eq!(line_at(&table, 10, 10), None, "past the end");
        assert_eq!(signed_varint(&[7], 0), Some(-3));
        assert_eq!(
            line_at(&[0x80 | (13 << 3), 0x40], 1, 0),
            None,
            "truncated varint"
        );
    }
}
