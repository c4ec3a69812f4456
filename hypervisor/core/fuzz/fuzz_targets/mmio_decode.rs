//! The instruction bytes behind an MMIO exit are guest memory: in every CPU mode the
//! decoder must never panic or read out of bounds, a decoded instruction must fit in the
//! input and the 15-byte limit and depend only on its own bytes, and its sizes and
//! register numbers must be ones the kernel can act on.
#![no_main]

use hv_core::mmio_decode::{
    alu, decode, merge_register, AluOp, CpuMode, DecodeError, Extend, MmioOp, Operand, ALU_FLAGS_MASK,
    MAX_INSTRUCTION_LEN,
};
use libfuzzer_sys::fuzz_target;

const MODES: [CpuMode; 4] = [CpuMode::Real16, CpuMode::Protected16, CpuMode::Protected32, CpuMode::Long64];

fn valid_size(size: u8) -> bool {
    matches!(size, 1 | 2 | 4 | 8)
}

fn check_register(index: u8, high_byte: bool, size: u8) {
    assert!(index <= 15);
    // AH, CH, DH, BH only exist as byte operands of RAX..RBX.
    assert!(!high_byte || (index <= 3 && size == 1));
}

fn check_operand(operand: Operand, size: u8) {
    match operand {
        Operand::Reg { index, high_byte } => check_register(index, high_byte, size),
        // Immediates are already truncated to the access size.
        Operand::Imm(value) => assert!(size == 8 || value >> (u32::from(size) * 8) == 0),
    }
}

fuzz_target!(|data: &[u8]| {
    for mode in MODES {
        let Ok(instruction) = decode(data, mode) else {
            if data.len() >= MAX_INSTRUCTION_LEN {
                // With 15 bytes present the decoder can always decide.
                assert_ne!(decode(data, mode), Err(DecodeError::Truncated));
            }
            continue;
        };
        let len = usize::from(instruction.len);
        assert!(len >= 1 && len <= MAX_INSTRUCTION_LEN && len <= data.len());
        assert!(valid_size(instruction.size));
        assert!(matches!(instruction.address_size, 2 | 4 | 8));
        // The instruction depends only on its own bytes.
        assert_eq!(decode(&data[..len], mode), Ok(instruction));
        assert_eq!(decode(&data[..len - 1], mode), Err(DecodeError::Truncated));

        let size = instruction.size;
        match instruction.op {
            MmioOp::Load { dest, high_byte, extend, dest_size } => {
                check_register(dest, high_byte, dest_size);
                assert!(valid_size(dest_size) && dest_size >= size);
                assert!(extend != Extend::None || dest_size == size);
                // Applying the load to a register never panics and keeps the
                // documented untouched bits.
                let merged = merge_register(u64::MAX, 0, size, high_byte, extend, dest_size);
                if dest_size <= 2 {
                    assert_eq!(merged >> 16, u64::MAX >> 16);
                }
            }
            MmioOp::Store { src } => check_operand(src, size),
            MmioOp::StoreString { .. } => assert!(instruction.segment.is_none()),
            MmioOp::Alu { alu: op, src, writes_back, .. } => {
                check_operand(src, size);
                assert_eq!(writes_back, !matches!(op, AluOp::Cmp | AluOp::Test));
                // Feed the instruction bytes as operands through the flag computation.
                let word = data.iter().take(8).fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
                let out = alu(op, size, word, word.rotate_left(17));
                assert_eq!(out.flags & !ALU_FLAGS_MASK, 0);
                assert!(size == 8 || out.result >> (u32::from(size) * 8) == 0);
            }
        }
        assert!(instruction.reads_memory() || instruction.writes_memory());
    }
});
