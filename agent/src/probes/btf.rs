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

/// `(se.sum_exec_runtime, sched_info.run_delay)` byte offsets in `task_struct`, or a reason.
pub fn task_offsets(vmlinux: &Path) -> Result<(u32, u32), String> {
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
    Ok((
        byte_offset("se.sum_exec_runtime")?,
        byte_offset("sched_info.run_delay")?,
    ))
}
