//! Offsets of the scheduler's own per-task totals in `struct task_struct`, from the kernel's
//! BTF (btfparse; aya keeps its BTF type lookups private).
use std::{fs::File, os::unix::fs::FileExt as _, path::Path};

use btfparse::{Offset, Readable, TypeInformation};

struct BtfFile(File);

impl Readable for BtfFile {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        self.0.read_exact_at(buffer, offset).map_err(Into::into)
    }
}

/// Byte offsets in `task_struct` the programs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOffsets {
    pub sum_exec_runtime: u32,
    pub run_delay: u32,
    pub pid: u32,
}

/// The offsets from this kernel's BTF, or the reason they are unavailable.
pub fn task_offsets(vmlinux: &Path) -> Result<TaskOffsets, String> {
    let file = File::open(vmlinux).map_err(|e| format!("{}: {e}", vmlinux.display()))?;
    let types = TypeInformation::new(&BtfFile(file))
        .map_err(|e| format!("parsing {}: {e:?}", vmlinux.display()))?;
    let task = types
        .id_of("task_struct")
        .ok_or("no struct task_struct in BTF")?;
    let byte_offset = |path: &str| -> Result<u32, String> {
        match types.offset_of(task, path) {
            Ok((_, Offset::ByteOffset(o))) => Ok(o),
            Ok((_, other)) => Err(format!(
                "task_struct.{path} is not byte-aligned ({other:?})"
            )),
            Err(e) => Err(format!("task_struct.{path}: {e:?}")),
        }
    };
    Ok(TaskOffsets {
        sum_exec_runtime: byte_offset("se.sum_exec_runtime")?,
        run_delay: byte_offset("sched_info.run_delay")?,
        pid: byte_offset("pid")?,
    })
}
