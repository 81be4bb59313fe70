//! Offsets of the scheduler's own per-task totals in `struct task_struct`, from the kernel's
//! BTF (btfparse; aya keeps its BTF type lookups private).
use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation};

/// The BTF blob in memory. btfparse reads it a few bytes at a time: from the file that was one
/// `pread` per field, millions of them for vmlinux (seconds of every agent start); from memory
/// the parse takes a small fraction of that. vmlinux BTF is a few MiB and is dropped after.
struct BtfBytes(Vec<u8>);

impl Readable for BtfBytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.0.get(start..start.checked_add(buffer.len())?));
        match bytes {
            Some(bytes) => {
                buffer.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
        }
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
    let bytes = std::fs::read(vmlinux).map_err(|e| format!("{}: {e}", vmlinux.display()))?;
    let types = TypeInformation::new(&BtfBytes(bytes))
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
