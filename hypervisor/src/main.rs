#![no_std]
#![no_main]

use bootloader_api::{entry_point, BootInfo};

entry_point!(kernel_main);

fn kernel_main(_boot_info: &'static mut BootInfo) -> ! {
    for b in b"hello from hypervisor\n" {
        // SAFETY: port 0x3F8 is COM1's data register; a write only sends a byte.
        unsafe { x86_64::instructions::port::Port::<u8>::new(0x3f8).write(*b) };
    }
    loop {
        x86_64::instructions::hlt();
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {
        x86_64::instructions::hlt();
    }
}
