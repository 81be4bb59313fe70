//! herdwatch kernel side. Hot counters stay in maps; the ring buffer carries only boundary
//! events (a task is created, exec'd or exits) — never one record per context switch.
#![no_std]
#![no_main]
// Atomic add on map memory (BPF_XADD): the bpfel target exposes no atomic RMW types.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod maps;
mod per_call;
mod process;
mod python;
mod sched;
mod socket;
mod syscalls;
mod trampoline;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never called at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
