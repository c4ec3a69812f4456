//! Decoding the guest instruction behind an MMIO exit.
//!
//! When a guest touches a page the hypervisor emulates (the xAPIC page at `0xFEE0_0000`,
//! the I/O APIC page at `0xFEC0_0000`, later other devices), the CPU leaves the guest with
//! an EPT violation. The exit qualification says whether the access was a read or a write
//! and the guest-physical address, but neither the instruction length (EPT violations do
//! not report one) nor the register or data involved. The kernel fetches up to
//! [`MAX_INSTRUCTION_LEN`] bytes at the guest RIP through the guest's page tables and hands
//! them to [`decode`], which answers:
//! - how long the instruction is (to advance RIP),
//! - how many bytes it accesses (1, 2, 4 or 8),
//! - what to do with the data: a [`MmioOp`] (load into a register, store a register or an
//!   immediate, store a string element, or an arithmetic/logic operation with the memory
//!   operand).
//!
//! The bytes are guest-controlled: every path returns a [`DecodeError`] instead of
//! panicking, and every byte is read through a bounds-checked cursor.
//!
//! Only the instruction forms that compilers and kernels use for device registers are
//! decoded; everything else is [`DecodeError::Unsupported`]:
//! - `MOV` 88/89 (store register), 8A/8B (load register), C6 /0 and C7 /0 (store
//!   immediate), A0-A3 (`MOV AL/rAX` to or from a direct address, "moffs");
//! - `MOVZX` 0F B6/B7, `MOVSX` 0F BE/BF, `MOVSXD` 63 (64-bit mode only);
//! - `STOS` AA/AB, with or without `REP`;
//! - `ADD`/`OR`/`AND`/`SUB`/`XOR`/`CMP` with a register (00-03, 08-0B, 20-23, 28-2B,
//!   30-33, 38-3B) or an immediate (group 1: 80, 81, 83), and `TEST` with a register
//!   (84/85) or an immediate (group 3: F6/F7 /0, and the /1 alias).
//!
//! The effective address is never computed (the exit already gives the guest-physical
//! address), but every addressing byte is skipped exactly as the CPU would, so the length is
//! right.
//!
//! References (Intel SDM, current numbering):
//! - Vol. 2A chapter 2 "Instruction Format": 2.1.1 prefixes, 2.1.2 opcodes, 2.1.3 ModR/M
//!   and SIB bytes, 2.1.4 displacement and immediate bytes; table 2-1 (16-bit addressing
//!   forms with the ModR/M byte), table 2-2 (32-bit addressing forms with the ModR/M byte),
//!   table 2-3 (32-bit addressing forms with the SIB byte); 2.2.1 REX prefixes (table 2-4
//!   REX fields, table 2-5 special cases of REX encodings); 2.2.1.6 RIP-relative
//!   addressing; 2.3.11 the 15-byte instruction length limit.
//! - Vol. 2D appendix A, table A-2 (one-byte opcode map), table A-3 (two-byte opcode map),
//!   table A-6 (opcode extensions by ModR/M.reg, "groups").
//! - Vol. 1 3.4.1.1 (register writes in 64-bit mode: 32-bit results zero-extend, 8- and
//!   16-bit results keep the other bits), 3.4.3.1 (status flags), 3.6 and table 3-4
//!   (operand- and address-size attributes, 64-bit mode included).
//!
//! Modelling decisions:
//! - The CPU raises #UD or #GP for a malformed instruction before it touches memory, so an
//!   EPT violation never comes from one: [`DecodeError::Invalid`] means the bytes changed
//!   under the guest (another vCPU rewrote the code) or the fetch was wrong, and the kernel
//!   can simply resume the guest. Too-long instructions and a misplaced `LOCK` are both
//!   `Invalid`.
//! - `F2`/`F3` before non-string forms are accepted and ignored (they are the HLE hints
//!   `XACQUIRE`/`XRELEASE`, or no-ops). Before `STOS` both mean "repeat": the SDM reserves
//!   `F2` there, processors repeat as with `F3`, and so does this decoder.
//! - In 64-bit mode the ES, CS, SS and DS overrides do nothing (their bases are zero) and are
//!   not reported; an FS or GS override is not cancelled by a later ES/CS/SS/DS prefix.
//!   Outside 64-bit mode the last segment prefix wins.
//! - Opcode 82 (an alias of 80 outside 64-bit mode) and ADC/SBB are not decoded.

/// Longest instruction the processor executes, prefixes included; a longer one raises #GP
/// (SDM Vol. 2A 2.3.11: "the maximum length of an Intel 64 and IA-32 instruction remains
/// 15 bytes").
pub const MAX_INSTRUCTION_LEN: usize = 15;

// Legacy prefixes (SDM Vol. 2A 2.1.1).
/// Operand-size override: toggles between 16- and 32-bit operands (group 3).
const PREFIX_OPERAND_SIZE: u8 = 0x66;
/// Address-size override: toggles between 16- and 32-bit, or 64- and 32-bit, addressing
/// (group 4).
const PREFIX_ADDRESS_SIZE: u8 = 0x67;
/// `LOCK` (group 1).
const PREFIX_LOCK: u8 = 0xF0;
/// `REPNE`/`XACQUIRE` (group 1).
const PREFIX_REPNE: u8 = 0xF2;
/// `REP`/`XRELEASE` (group 1).
const PREFIX_REP: u8 = 0xF3;
/// ES segment override (group 2).
const PREFIX_ES: u8 = 0x26;
/// CS segment override (group 2).
const PREFIX_CS: u8 = 0x2E;
/// SS segment override (group 2).
const PREFIX_SS: u8 = 0x36;
/// DS segment override (group 2).
const PREFIX_DS: u8 = 0x3E;
/// FS segment override (group 2).
const PREFIX_FS: u8 = 0x64;
/// GS segment override (group 2).
const PREFIX_GS: u8 = 0x65;

// REX prefix (SDM Vol. 2A 2.2.1, table 2-4): `0100WRXB`, 64-bit mode only.
/// The high nibble that makes a byte a REX prefix in 64-bit mode (40-4F)...
const REX_HIGH_NIBBLE: u8 = 0x40;
/// ...selected by this mask.
const HIGH_NIBBLE_MASK: u8 = 0xF0;
/// REX.W: 64-bit operand size (takes precedence over 66).
const REX_W: u8 = 0x08;
/// REX.R: bit 3 of the ModR/M.reg register number.
const REX_R: u8 = 0x04;

/// First byte of the two-byte opcode map (SDM Vol. 2D table A-3).
const TWO_BYTE_ESCAPE: u8 = 0x0F;

// One-byte opcodes (SDM Vol. 2D table A-2) of the supported forms.
/// `TEST r/m8, r8`.
const OP_TEST_RM8_R8: u8 = 0x84;
/// `TEST r/m, r` (16/32/64-bit).
const OP_TEST_RM_R: u8 = 0x85;
/// Group 1 `op r/m8, imm8`.
const OP_GROUP1_RM8_IMM8: u8 = 0x80;
/// Group 1 `op r/m, imm16/imm32` (imm32 sign-extended for 64-bit operands).
const OP_GROUP1_RM_IMM: u8 = 0x81;
/// Group 1 `op r/m, imm8` (imm8 sign-extended to the operand size).
const OP_GROUP1_RM_IMM8: u8 = 0x83;
/// `MOV r/m8, r8`.
const OP_MOV_RM8_R8: u8 = 0x88;
/// `MOV r/m, r`.
const OP_MOV_RM_R: u8 = 0x89;
/// `MOV r8, r/m8`.
const OP_MOV_R8_RM8: u8 = 0x8A;
/// `MOV r, r/m`.
const OP_MOV_R_RM: u8 = 0x8B;
/// `MOVSXD r, r/m32` in 64-bit mode (`ARPL` elsewhere, not decoded).
const OP_MOVSXD: u8 = 0x63;
/// `MOV AL, moffs8`.
const OP_MOV_AL_MOFFS: u8 = 0xA0;
/// `MOV rAX, moffs`.
const OP_MOV_RAX_MOFFS: u8 = 0xA1;
/// `MOV moffs8, AL`.
const OP_MOV_MOFFS_AL: u8 = 0xA2;
/// `MOV moffs, rAX`.
const OP_MOV_MOFFS_RAX: u8 = 0xA3;
/// `STOSB`.
const OP_STOS_BYTE: u8 = 0xAA;
/// `STOSW`/`STOSD`/`STOSQ`.
const OP_STOS: u8 = 0xAB;
/// Group 11 `MOV r/m8, imm8` (only /0 exists with a memory operand).
const OP_MOV_RM8_IMM8: u8 = 0xC6;
/// Group 11 `MOV r/m, imm16/imm32` (only /0 exists with a memory operand).
const OP_MOV_RM_IMM: u8 = 0xC7;
/// Group 3 with byte operands (`TEST r/m8, imm8` is /0 and /1).
const OP_GROUP3_RM8: u8 = 0xF6;
/// Group 3 with full-size operands (`TEST r/m, imm16/imm32` is /0 and /1).
const OP_GROUP3_RM: u8 = 0xF7;

// Second bytes of the two-byte opcodes (SDM Vol. 2D table A-3).
/// `MOVZX r, r/m8` (0F B6).
const OP2_MOVZX_BYTE: u8 = 0xB6;
/// `MOVZX r, r/m16` (0F B7).
const OP2_MOVZX_WORD: u8 = 0xB7;
/// `MOVSX r, r/m8` (0F BE).
const OP2_MOVSX_BYTE: u8 = 0xBE;
/// `MOVSX r, r/m16` (0F BF).
const OP2_MOVSX_WORD: u8 = 0xBF;

/// Bit 0 ("w") of the ALU opcodes 00-3B and of A0-A3: clear for 8-bit operands, set for
/// the full operand size.
const OPCODE_FULL_SIZE: u8 = 0x01;
/// Bit 1 ("d") of the ALU opcodes 00-3B (`00ooo0dw`, SDM Vol. 2D table A-2): set when the
/// register is the destination (`op r, r/m`).
const ALU_OPCODE_REG_IS_DEST: u8 = 0x02;
/// Opcode bits 5:3 of the ALU opcodes 00-3B select the operation, numbered as group 1.
const ALU_OPCODE_OPERATION_SHIFT: u8 = 3;

// ModR/M fields (SDM Vol. 2A 2.1.3, tables 2-1 and 2-2).
/// ModR/M.mod value that names a register, not memory.
const MOD_REGISTER: u8 = 0b11;
/// ModR/M.mod value with an 8-bit displacement.
const MOD_DISP8: u8 = 0b01;
/// ModR/M.mod value with no displacement (except the special cases below).
const MOD_NO_DISP: u8 = 0b00;
/// With 32/64-bit addressing, ModR/M.rm value that means "a SIB byte follows".
const RM_SIB: u8 = 0b100;
/// With 32/64-bit addressing and mod 00, this ModR/M.rm (or SIB.base) value means "no base
/// register, a 32-bit displacement follows" (RIP-relative for ModR/M.rm in 64-bit mode;
/// SDM table 2-7). REX.B does not change this (SDM table 2-5).
const BASE_DISP32_ONLY: u8 = 0b101;
/// With 16-bit addressing and mod 00, this ModR/M.rm value means "direct 16-bit address"
/// (SDM table 2-1).
const RM16_DISP16_ONLY: u8 = 0b110;

// Byte registers without REX (SDM Vol. 2A 2.1.5, table 2-2 "r8" column).
/// The first register number that means AH (then CH, DH, BH) when no REX prefix is present.
const FIRST_HIGH_BYTE_REGISTER: u8 = 4;

/// The processor mode of the code that made the access; it sets the default operand and
/// address sizes (SDM Vol. 1 3.6, table 3-4).
///
/// Compatibility mode uses `Protected32` or `Protected16` depending on CS.D; virtual-8086
/// mode uses `Real16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuMode {
    /// Real-address mode: 16-bit operands and addresses.
    Real16,
    /// Protected mode with a 16-bit code segment (CS.D = 0).
    Protected16,
    /// Protected mode with a 32-bit code segment (CS.D = 1).
    Protected32,
    /// 64-bit mode (IA-32e with CS.L = 1): 32-bit operands by default, 64-bit addresses, REX.
    Long64,
}

impl CpuMode {
    /// Default operand size in bytes, before prefixes.
    const fn default_operand_size(self) -> u8 {
        match self {
            CpuMode::Real16 | CpuMode::Protected16 => 2,
            CpuMode::Protected32 | CpuMode::Long64 => 4,
        }
    }

    /// Address size in bytes, after an optional 67 prefix (SDM Vol. 1 table 3-4).
    const fn address_size(self, override_prefix: bool) -> u8 {
        match (self, override_prefix) {
            (CpuMode::Real16 | CpuMode::Protected16, false) | (CpuMode::Protected32, true) => 2,
            (CpuMode::Real16 | CpuMode::Protected16, true)
            | (CpuMode::Protected32, false)
            | (CpuMode::Long64, true) => 4,
            (CpuMode::Long64, false) => 8,
        }
    }
}

/// A segment register, numbered as the `sreg` field of the SDM (Vol. 2D appendix B), which is
/// also the order of the VMCS guest-segment fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Segment {
    /// ES.
    Es = 0,
    /// CS.
    Cs = 1,
    /// SS.
    Ss = 2,
    /// DS.
    Ds = 3,
    /// FS.
    Fs = 4,
    /// GS.
    Gs = 5,
}

/// How a load widens the accessed bytes into the destination register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extend {
    /// Plain `MOV`: the destination has the access size.
    None,
    /// `MOVZX`: zero-extended to the destination size.
    Zero,
    /// `MOVSX`/`MOVSXD`: sign-extended to the destination size.
    Sign,
}

/// The register or immediate operand of a store or ALU instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operand {
    /// A general-purpose register, numbered as in the SDM (0 = RAX, 1 = RCX, 2 = RDX,
    /// 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8-15 = R8-R15). Read it with
    /// [`register_value`].
    Reg {
        /// Register number 0..=15.
        index: u8,
        /// The byte operand is bits 15:8 (AH, CH, DH, BH: `index` 0..=3); only without REX.
        high_byte: bool,
    },
    /// An immediate, already sign-extended as the instruction defines and truncated to the
    /// access size (e.g. `83 /0 ib` with `FF` and a 4-byte operand is `0xFFFF_FFFF`).
    Imm(u64),
}

/// The arithmetic or logic operation of an [`MmioOp::Alu`] instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AluOp {
    /// `ADD`.
    Add,
    /// `OR`.
    Or,
    /// `AND`.
    And,
    /// `SUB`.
    Sub,
    /// `XOR`.
    Xor,
    /// `CMP` (a `SUB` that only sets flags).
    Cmp,
    /// `TEST` (an `AND` that only sets flags).
    Test,
}

impl AluOp {
    /// The operation of row `index` of the ALU opcodes 00-3F and of group 1 (80/81/83)
    /// ModR/M.reg (SDM Vol. 2D tables ); `None` for ADC (2) and SBB (3), which
    /// are not decoded.
    const fn from_group1_index(index: u8) -> Option<AluOp> {
        match index {
            0 => Some(AluOp::Add),
            1 => Some(AluOp::Or),
            4 => Some(AluOp::And),
            5 => Some(AluOp::Sub),
            6 => Some(AluOp::Xor),
            7 => Some(AluOp::Cmp),
            _ => None,
        }
    }

    /// Whether the result is stored (false for CMP and TEST, which only set flags).
    #[must_use]
    pub const fn writes_result(self) -> bool {
        !matches!(self, AluOp::Cmp | AluOp::Test)
    }
}

/// What the instruction does with the accessed memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MmioOp {
    /// Read `size` bytes into a register: `MOV r, m`, `MOV AL/rAX, moffs`, `MOVZX`, `MOVSX`,
    /// `MOVSXD`. Apply with [`merge_register`].
    Load {
        /// Destination register number 0..=15 (see [`Operand::Reg`]).
        dest: u8,
        /// The destination is AH, CH, DH or BH (only for 1-byte `MOV` without REX).
        high_byte: bool,
        /// How the data widens to `dest_size`.
        extend: Extend,
        /// Size of the register write in bytes (1, 2, 4 or 8); equals the access size
        /// unless `extend` widens.
        dest_size: u8,
    },
    /// Write `size` bytes taken from a register (`MOV m, r`, `MOV moffs, AL/rAX`) or an
    /// immediate (`MOV m, imm`).
    Store {
        /// The data.
        src: Operand,
    },
    /// `STOS`: write `size` bytes from AL/AX/EAX/RAX to `ES:[rDI]`. The kernel updates rDI
    /// (by `size`, downwards when RFLAGS.DF = 1) and, with `rep`, rCX; both registers have
    /// [`MmioInstruction::address_size`]. A segment override never applies.
    StoreString {
        /// An F3 (or F2) prefix repeats the store rCX times.
        rep: bool,
    },
    /// An ALU operation between memory and a register or immediate; the kernel computes it
    /// with [`alu`] and updates RFLAGS with [`ALU_FLAGS_MASK`].
    Alu {
        /// The operation.
        alu: AluOp,
        /// The non-memory operand.
        src: Operand,
        /// Forms `op r, m` (02/03, 0A/0B, 22/23, 2A/2B, 32/33, 3A/3B): the register is the
        /// first operand (`reg - mem` for SUB/CMP) and receives the result; memory is only
        /// read. `false`: memory is the first operand and receives the result.
        reg_is_dest: bool,
        /// A result is stored (in memory, or in the register with `reg_is_dest`); `false`
        /// for CMP and TEST.
        writes_back: bool,
    },
}

/// A decoded instruction that accesses memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmioInstruction {
    /// Length in bytes (1..=15): the amount to add to RIP.
    pub len: u8,
    /// Number of bytes accessed: 1, 2, 4 or 8.
    pub size: u8,
    /// What to do.
    pub op: MmioOp,
    /// Segment override that applies to the memory operand; `None` means the default
    /// segment (DS, SS for rBP/rSP-based addresses, ES for `STOS`).
    pub segment: Option<Segment>,
    /// Address size in bytes (2, 4 or 8); for `STOS` the width of rDI and rCX.
    pub address_size: u8,
}

impl MmioInstruction {
    /// Whether the instruction reads the memory operand (loads and ALU operations).
    #[must_use]
    pub const fn reads_memory(&self) -> bool {
        matches!(self.op, MmioOp::Load { .. } | MmioOp::Alu { .. })
    }

    /// Whether the instruction writes the memory operand (stores, and ALU operations that
    /// store their result in memory). Compare with the exit qualification: a mismatch means
    /// the code changed since the access.
    #[must_use]
    pub const fn writes_memory(&self) -> bool {
        match self.op {
            MmioOp::Store { .. } | MmioOp::StoreString { .. } => true,
            MmioOp::Load { .. } => false,
            MmioOp::Alu { reg_is_dest, writes_back, .. } => writes_back && !reg_is_dest,
        }
    }
}

/// Why an instruction could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// The bytes end before the instruction does (and before [`MAX_INSTRUCTION_LEN`]):
    /// fetch more (e.g. across a page boundary) and retry.
    Truncated,
    /// Not one of the decoded forms. `opcode` is the opcode byte, or `0x0F00 | second
    /// byte` for the two-byte map; for groups the ModR/M.reg extension is not included.
    Unsupported {
        /// The opcode.
        opcode: u16,
    },
    /// The ModR/M byte names a register (mod = 11): the instruction does not access memory.
    NotMemoryOperand,
    /// The processor would not execute these bytes: longer than [`MAX_INSTRUCTION_LEN`], or
    /// `LOCK` on a form that does not write memory with a read-modify-write.
    Invalid,
}

/// Reads instruction bytes in order, never past the input or the 15-byte limit.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    /// The next `count` bytes. Past [`MAX_INSTRUCTION_LEN`] the instruction is `Invalid`,
    /// past the input it is `Truncated`.
    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.position.checked_add(count).ok_or(DecodeError::Invalid)?;
        if end > MAX_INSTRUCTION_LEN {
            return Err(DecodeError::Invalid);
        }
        let taken = self.bytes.get(self.position..end).ok_or(DecodeError::Truncated)?;
        self.position = end;
        Ok(taken)
    }

    fn next_byte(&mut self) -> Result<u8, DecodeError> {
        self.take(1)?.first().copied().ok_or(DecodeError::Truncated)
    }

    /// The next `count` (at most 8) bytes as a little-endian number.
    fn little_endian(&mut self, count: usize) -> Result<u64, DecodeError> {
        Ok(self.take(count)?.iter().rev().fold(0, |value, &byte| (value << 8) | u64::from(byte)))
    }
}

/// The prefixes in front of the opcode (SDM Vol. 2A 2.1.1, 2.2.1).
#[derive(Debug, Default, Clone, Copy)]
struct Prefixes {
    operand_size_override: bool,
    address_size_override: bool,
    lock: bool,
    /// F2 or F3.
    repeat: bool,
    segment: Option<Segment>,
    /// The REX byte, when it is the last prefix (64-bit mode only); a REX prefix followed
    /// by a legacy prefix is ignored (SDM Vol. 2A 2.2.1).
    rex: Option<u8>,
}

impl Prefixes {
    fn rex_bit(&self, bit: u8) -> bool {
        self.rex.is_some_and(|rex| rex & bit != 0)
    }
}

/// Reads the prefixes and returns them with the first opcode byte.
fn read_prefixes(cursor: &mut Cursor<'_>, mode: CpuMode) -> Result<(Prefixes, u8), DecodeError> {
    let mut prefixes = Prefixes::default();
    loop {
        let byte = cursor.next_byte()?;
        if mode == CpuMode::Long64 && byte & HIGH_NIBBLE_MASK == REX_HIGH_NIBBLE {
            prefixes.rex = Some(byte);
            continue;
        }
        let segment = match byte {
            PREFIX_OPERAND_SIZE => {
                prefixes.operand_size_override = true;
                None
            }
            PREFIX_ADDRESS_SIZE => {
                prefixes.address_size_override = true;
                None
            }
            PREFIX_LOCK => {
                prefixes.lock = true;
                None
            }
            PREFIX_REPNE | PREFIX_REP => {
                prefixes.repeat = true;
                None
            }
            PREFIX_ES => Some(Segment::Es),
            PREFIX_CS => Some(Segment::Cs),
            PREFIX_SS => Some(Segment::Ss),
            PREFIX_DS => Some(Segment::Ds),
            PREFIX_FS => Some(Segment::Fs),
            PREFIX_GS => Some(Segment::Gs),
            opcode => return Ok((prefixes, opcode)),
        };
        if let Some(segment) = segment {
            let null_in_64_bit_mode = mode == CpuMode::Long64 && !matches!(segment, Segment::Fs | Segment::Gs);
            if !null_in_64_bit_mode {
                prefixes.segment = Some(segment);
            }
        }
        prefixes.rex = None;
    }
}

/// The operand size in bytes of a non-byte form (SDM Vol. 1 table 3-4): REX.W selects 64
/// bits, otherwise 66 toggles the mode's default between 16 and 32 bits.
fn full_operand_size(mode: CpuMode, prefixes: &Prefixes) -> u8 {
    if mode == CpuMode::Long64 && prefixes.rex_bit(REX_W) {
        8
    } else {
        match (mode.default_operand_size(), prefixes.operand_size_override) {
            (2, false) | (4, true) => 2,
            _ => 4,
        }
    }
}

/// Reads a ModR/M byte that must name memory, skips its SIB and displacement bytes (SDM
/// tables 2-1, 2-2, 2-3), and returns ModR/M.reg (0..=7, REX.R not applied).
fn read_memory_modrm(cursor: &mut Cursor<'_>, address_size: u8) -> Result<u8, DecodeError> {
    let modrm = cursor.next_byte()?;
    let mod_field = modrm >> 6;
    let reg_field = (modrm >> 3) & 0b111;
    let rm_field = modrm & 0b111;
    if mod_field == MOD_REGISTER {
        return Err(DecodeError::NotMemoryOperand);
    }
    let displacement_len = if address_size == 2 {
        match mod_field {
            MOD_NO_DISP if rm_field == RM16_DISP16_ONLY => 2,
            MOD_NO_DISP => 0,
            MOD_DISP8 => 1,
            _ => 2,
        }
    } else {
        // SIB.base plays the role of ModR/M.rm for the displacement rule.
        let base = if rm_field == RM_SIB { cursor.next_byte()? & 0b111 } else { rm_field };
        match mod_field {
            MOD_NO_DISP if base == BASE_DISP32_ONLY => 4,
            MOD_NO_DISP => 0,
            MOD_DISP8 => 1,
            _ => 4,
        }
    };
    cursor.take(displacement_len)?;
    Ok(reg_field)
}

/// The register named by ModR/M.reg for an operand of `size` bytes, as (number, high
/// byte): REX.R adds 8, and without any REX prefix byte registers 4-7 are AH, CH, DH, BH
/// (SDM Vol. 2A 2.2.1.2).
fn reg_field_register(reg_field: u8, size: u8, prefixes: &Prefixes) -> (u8, bool) {
    if size == 1 && prefixes.rex.is_none() && reg_field >= FIRST_HIGH_BYTE_REGISTER {
        return (reg_field - FIRST_HIGH_BYTE_REGISTER, true);
    }
    let extension = if prefixes.rex_bit(REX_R) { 8 } else { 0 };
    (reg_field | extension, false)
}

/// [`reg_field_register`] as a source operand.
fn reg_operand(reg_field: u8, size: u8, prefixes: &Prefixes) -> Operand {
    let (index, high_byte) = reg_field_register(reg_field, size, prefixes);
    Operand::Reg { index, high_byte }
}

/// A load of `dest_size` bytes into the register named by ModR/M.reg.
fn load_into_reg(reg_field: u8, extend: Extend, dest_size: u8, prefixes: &Prefixes) -> MmioOp {
    let (dest, high_byte) = reg_field_register(reg_field, dest_size, prefixes);
    MmioOp::Load { dest, high_byte, extend, dest_size }
}

/// Width in bytes of the immediate of a form whose immediate follows the operand size
/// (`ib`/`iz` in the opcode tables): 1 for byte operands, 2 for 16-bit operands, and 4
/// (sign-extended) for 32- and 64-bit operands.
const fn immediate_width(size: u8) -> u8 {
    match size {
        1 => 1,
        2 => 2,
        _ => 4,
    }
}

/// Reads an immediate of `width` bytes (1, 2 or 4), sign-extends it and truncates it to
/// `size` bytes.
fn read_immediate(cursor: &mut Cursor<'_>, width: u8, size: u8) -> Result<Operand, DecodeError> {
    let raw = cursor.little_endian(usize::from(width))?;
    Ok(Operand::Imm(sign_extend(raw, width) & size_mask(size)))
}

/// Decodes one instruction from the start of `bytes` (at most [`MAX_INSTRUCTION_LEN`] are
/// looked at) as executed in `mode`.
///
/// # Errors
/// [`DecodeError::Truncated`] when `bytes` ends early, [`DecodeError::NotMemoryOperand`]
/// for register-only forms, [`DecodeError::Unsupported`] for other instructions and
/// [`DecodeError::Invalid`] for byte sequences the processor would refuse.
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<MmioInstruction, DecodeError> {
    let mut cursor = Cursor { bytes, position: 0 };
    let (prefixes, opcode) = read_prefixes(&mut cursor, mode)?;
    let address_size = mode.address_size(prefixes.address_size_override);
    let full_size = full_operand_size(mode, &prefixes);
    let unsupported = DecodeError::Unsupported { opcode: u16::from(opcode) };
    let mut segment = prefixes.segment;

    let (size, op) = match opcode {
        // The memory forms of the ALU rows ADD, OR, AND, SUB, XOR, CMP (ADC 10-13 and SBB
        // 18-1B are not decoded; 04/05, 0C/0D, ... have no ModR/M).
        0x00..=0x03 | 0x08..=0x0B | 0x20..=0x23 | 0x28..=0x2B | 0x30..=0x33 | 0x38..=0x3B => {
            let alu = AluOp::from_group1_index(opcode >> ALU_OPCODE_OPERATION_SHIFT).ok_or(unsupported)?;
            let size = if opcode & OPCODE_FULL_SIZE != 0 { full_size } else { 1 };
            let reg_field = read_memory_modrm(&mut cursor, address_size)?;
            let src = reg_operand(reg_field, size, &prefixes);
            let reg_is_dest = opcode & ALU_OPCODE_REG_IS_DEST != 0;
            (size, MmioOp::Alu { alu, src, reg_is_dest, writes_back: alu.writes_result() })
        }
        OP_TEST_RM8_R8 | OP_TEST_RM_R => {
            let size = if opcode == OP_TEST_RM_R { full_size } else { 1 };
            let reg_field = read_memory_modrm(&mut cursor, address_size)?;
            let src = reg_operand(reg_field, size, &prefixes);
            (size, MmioOp::Alu { alu: AluOp::Test, src, reg_is_dest: false, writes_back: false })
        }
        OP_GROUP1_RM8_IMM8 | OP_GROUP1_RM_IMM | OP_GROUP1_RM_IMM8 => {
            let (size, width) = match opcode {
                OP_GROUP1_RM8_IMM8 => (1, 1),
                OP_GROUP1_RM_IMM8 => (full_size, 1),
                _ => (full_size, immediate_width(full_size)),
            };
            let reg_field = read_memory_modrm(&mut cursor, address_size)?;
            let alu = AluOp::from_group1_index(reg_field).ok_or(unsupported)?;
            let src = read_immediate(&mut cursor, width, size)?;
            (size, MmioOp::Alu { alu, src, reg_is_dest: false, writes_back: alu.writes_result() })
        }
        OP_GROUP3_RM8 | OP_GROUP3_RM => {
            let size = if opcode == OP_GROUP3_RM { full_size } else { 1 };
            let reg_field = read_memory_modrm(&mut cursor, address_size)?;
            // /0 is TEST; /1 is its undocumented alias, executed identically.
            if reg_field > 1 {
                return Err(unsupported);
            }
            let src = read_immediate(&mut cursor, immediate_width(size), size)?;
            (size, MmioOp::Alu { alu: AluOp::Test, src, reg_is_dest: false, writes_back: false })
        }
        OP_MOV_RM8_R8 | OP_MOV_RM_R => {
            let size = if opcode == OP_MOV_RM_R { full_size } else { 1 };
            let reg_field = read_memory_modrm(&mut cursor, address_size)?;
            (size, MmioOp::Store { src: reg_operand(reg_field, size, &prefixes) })
        }
        OP_MOV_R8_RM8 | OP_MOV_R_RM => {
            let size = if opcode == OP_MOV_R_RM { full_size } else { 1 };
            let reg_field = read_memory_modrm(&mut cursor, address_size)?;
            (size, load_into_reg(reg_field, Extend::None, size, &prefixes))
        }
        OP_MOV_RM8_IMM8 | OP_MOV_RM_IMM => {
            let size = if opcode == OP_MOV_RM_IMM { full_size } else { 1 };
            let reg_field = read_memory_modrm(&mut cursor, address_size)?;
            if reg_field != 0 {
                return Err(unsupported);
            }
            let src = read_immediate(&mut cursor, immediate_width(size), size)?;
            (size, MmioOp::Store { src })
        }
        OP_MOVSXD if mode == CpuMode::Long64 => {
            // REX.W: 32 -> 64 bits; otherwise a plain 32- or 16-bit move.
            let size = full_size.min(4);
            let reg_field = read_memory_modrm(&mut cursor, address_size)?;
            (size, load_into_reg(reg_field, Extend::Sign, full_size, &prefixes))
        }
        OP_MOV_AL_MOFFS | OP_MOV_RAX_MOFFS | OP_MOV_MOFFS_AL | OP_MOV_MOFFS_RAX => {
            let size = if opcode & OPCODE_FULL_SIZE != 0 { full_size } else { 1 };
            // The direct address ("moffs") is as wide as the address size.
            cursor.take(usize::from(address_size))?;
            let op = if opcode <= OP_MOV_RAX_MOFFS {
                MmioOp::Load { dest: 0, high_byte: false, extend: Extend::None, dest_size: size }
            } else {
                MmioOp::Store { src: Operand::Reg { index: 0, high_byte: false } }
            };
            (size, op)
        }
        OP_STOS_BYTE | OP_STOS => {
            segment = None;
            let size = if opcode == OP_STOS { full_size } else { 1 };
            (size, MmioOp::StoreString { rep: prefixes.repeat })
        }
        TWO_BYTE_ESCAPE => {
            let second = cursor.next_byte()?;
            let (size, extend) = match second {
                OP2_MOVZX_BYTE => (1, Extend::Zero),
                OP2_MOVZX_WORD => (2, Extend::Zero),
                OP2_MOVSX_BYTE => (1, Extend::Sign),
                OP2_MOVSX_WORD => (2, Extend::Sign),
                _ => return Err(DecodeError::Unsupported { opcode: u16::from_be_bytes([TWO_BYTE_ESCAPE, second]) }),
            };
            let reg_field = read_memory_modrm(&mut cursor, address_size)?;
            (size, load_into_reg(reg_field, extend, full_size, &prefixes))
        }
        _ => return Err(unsupported),
    };

    // LOCK is only allowed on read-modify-writes of memory (SDM Vol. 2A "LOCK"): #UD otherwise.
    let lockable = matches!(op, MmioOp::Alu { reg_is_dest: false, writes_back: true, .. });
    if prefixes.lock && !lockable {
        return Err(DecodeError::Invalid);
    }
    let len = u8::try_from(cursor.position).map_err(|_| DecodeError::Invalid)?;
    Ok(MmioInstruction { len, size, op, segment, address_size })
}

/// Mask of the low `size` bytes; sizes other than 1, 2 and 4 mean 8.
#[must_use]
pub const fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// Sign bit of a `size`-byte value; sizes other than 1, 2 and 4 mean 8.
const fn sign_bit(size: u8) -> u64 {
    (size_mask(size) >> 1) + 1
}

/// Sign-extends the low `size` bytes of `value` to 64 bits.
const fn sign_extend(value: u64, size: u8) -> u64 {
    let value = value & size_mask(size);
    if value & sign_bit(size) != 0 {
        value | !size_mask(size)
    } else {
        value
    }
}

/// The value of a register operand of `size` bytes, given the full 64-bit register:
/// bits 15:8 for AH/CH/DH/BH (`high_byte`), else the low `size` bytes.
#[must_use]
pub const fn register_value(register: u64, size: u8, high_byte: bool) -> u64 {
    if high_byte {
        (register >> 8) & 0xFF
    } else {
        register & size_mask(size)
    }
}

/// The new content of a 64-bit register after a load of `size` bytes of `value`,
/// widened by `extend`, into a `dest_size`-byte destination whose old content is `old`
/// (SDM Vol. 1 3.4.1.1): a 4-byte write zero-extends to 64 bits; 1- and 2-byte writes
/// keep the other bits; a `high_byte` write replaces bits 15:8. With [`Extend::None`]
/// `dest_size` should equal `size`. For the register result of an [`MmioOp::Alu`] with
/// `reg_is_dest`, pass `Extend::None` and `dest_size == size`.
#[must_use]
pub const fn merge_register(old: u64, value: u64, size: u8, high_byte: bool, extend: Extend, dest_size: u8) -> u64 {
    let widened = match extend {
        Extend::None | Extend::Zero => value & size_mask(size),
        Extend::Sign => sign_extend(value, size),
    };
    if high_byte {
        return (old & !0xFF00) | ((widened & 0xFF) << 8);
    }
    match dest_size {
        1 | 2 => (old & !size_mask(dest_size)) | (widened & size_mask(dest_size)),
        4 => widened & size_mask(4),
        _ => widened,
    }
}

/// RFLAGS.CF, carry (bit 0).
pub const RFLAGS_CF: u64 = 1 << 0;
/// RFLAGS.PF, even parity of the low result byte (bit 2).
pub const RFLAGS_PF: u64 = 1 << 2;
/// RFLAGS.AF, carry or borrow out of bit 3 (bit 4).
pub const RFLAGS_AF: u64 = 1 << 4;
/// RFLAGS.ZF, zero result (bit 6).
pub const RFLAGS_ZF: u64 = 1 << 6;
/// RFLAGS.SF, sign of the result (bit 7).
pub const RFLAGS_SF: u64 = 1 << 7;
/// RFLAGS.OF, signed overflow (bit 11).
pub const RFLAGS_OF: u64 = 1 << 11;
/// The status flags an [`alu`] operation defines; update RFLAGS as
/// `(rflags & !ALU_FLAGS_MASK) | result.flags`.
pub const ALU_FLAGS_MASK: u64 = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF;

/// The outcome of an [`alu`] operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AluResult {
    /// The result, truncated to the operand size (computed for CMP and TEST too, where it is
    /// not stored).
    pub result: u64,
    /// The status flags, only bits of [`ALU_FLAGS_MASK`].
    pub flags: u64,
}

/// Computes `a op b` on `size`-byte operands (1, 2, 4 or 8; others mean 8; inputs are
/// truncated to `size`) and the status flags the SDM defines for it (Vol. 1 3.4.3.1 and
/// the ADD/SUB/CMP/AND/OR/XOR/TEST pages of Vol. 2): ADD, SUB and CMP set all six; AND,
/// OR, XOR and TEST clear CF and OF, set SF, ZF and PF, and leave AF undefined, which is
/// returned as 0 here.
#[must_use]
pub const fn alu(op: AluOp, size: u8, a: u64, b: u64) -> AluResult {
    let mask = size_mask(size);
    let sign = sign_bit(size);
    let (a, b) = (a & mask, b & mask);
    let (result, carry, overflow, adjust) = match op {
        AluOp::Add => {
            let result = a.wrapping_add(b) & mask;
            // Unsigned carry out of the top bit: the truncated sum is smaller than an input.
            let carry = result < a;
            let overflow = (a ^ result) & (b ^ result) & sign != 0;
            (result, carry, overflow, (a ^ b ^ result) & 0x10 != 0)
        }
        AluOp::Sub | AluOp::Cmp => {
            let result = a.wrapping_sub(b) & mask;
            let overflow = (a ^ b) & (a ^ result) & sign != 0;
            (result, a < b, overflow, (a ^ b ^ result) & 0x10 != 0)
        }
        AluOp::And | AluOp::Test => (a & b, false, false, false),
        AluOp::Or => (a | b, false, false, false),
        AluOp::Xor => (a ^ b, false, false, false),
    };
    let mut flags = 0;
    if carry {
        flags |= RFLAGS_CF;
    }
    if (result & 0xFF).count_ones() % 2 == 0 {
        flags |= RFLAGS_PF;
    }
    if adjust {
        flags |= RFLAGS_AF;
    }
    if result == 0 {
        flags |= RFLAGS_ZF;
    }
    if result & sign != 0 {
        flags |= RFLAGS_SF;
    }
    if overflow {
        flags |= RFLAGS_OF;
    }
    AluResult { result, flags }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_MODES: [CpuMode; 4] = [CpuMode::Real16, CpuMode::Protected16, CpuMode::Protected32, CpuMode::Long64];

    fn ok(bytes: &[u8], mode: CpuMode) -> MmioInstruction {
        match decode(bytes, mode) {
            Ok(instruction) => instruction,
            Err(error) => panic!("{bytes:02X?} in {mode:?}: {error:?}"),
        }
    }

    fn reg(index: u8) -> Operand {
        Operand::Reg { index, high_byte: false }
    }

    fn load(dest: u8, extend: Extend, dest_size: u8) -> MmioOp {
        MmioOp::Load { dest, high_byte: false, extend, dest_size }
    }

    fn alu_op(alu: AluOp, src: Operand, reg_is_dest: bool) -> MmioOp {
        MmioOp::Alu { alu, src, reg_is_dest, writes_back: alu.writes_result() }
    }

    /// Length, access size and operation.
    fn shape(bytes: &[u8], mode: CpuMode) -> (u8, u8, MmioOp) {
        let instruction = ok(bytes, mode);
        (instruction.len, instruction.size, instruction.op)
    }

    // ---- MOV ----

    #[test]
    fn mov_store_register_32_bit_addressing() {
        // mov [eax], ecx
        assert_eq!(shape(&[0x89, 0x08], CpuMode::Protected32), (2, 4, MmioOp::Store { src: reg(1) }));
        // mov [0xFEE000B0], ecx (mod 00, rm 101: disp32)
        assert_eq!(
            shape(&[0x89, 0x0D, 0xB0, 0x00, 0xE0, 0xFE], CpuMode::Protected32),
            (6, 4, MmioOp::Store { src: reg(1) })
        );
        // mov [eax+0x10], dx (66: 16-bit operand)
        assert_eq!(shape(&[0x66, 0x89, 0x50, 0x10], CpuMode::Protected32), (4, 2, MmioOp::Store { src: reg(2) }));
        // mov [ebx+0x300], edi (mod 10: disp32)
        assert_eq!(
            shape(&[0x89, 0xBB, 0x00, 0x03, 0x00, 0x00], CpuMode::Protected32),
            (6, 4, MmioOp::Store { src: reg(7) })
        );
    }

    #[test]
    fn mov_store_register_64_bit_forms() {
        // mov [rip+disp32], ecx
        assert_eq!(shape(&[0x89, 0x0D, 1, 2, 3, 4], CpuMode::Long64), (6, 4, MmioOp::Store { src: reg(1) }));
        // mov [0xFEE00000], rax: SIB with no base and no index, disp32
        assert_eq!(
            shape(&[0x48, 0x89, 0x04, 0x25, 0x00, 0x00, 0xE0, 0xFE], CpuMode::Long64),
            (8, 8, MmioOp::Store { src: reg(0) })
        );
        // mov [r13+0], r9d needs mod 01: 45 89 4D 00 (REX.R, REX.B)
        assert_eq!(shape(&[0x45, 0x89, 0x4D, 0x00], CpuMode::Long64), (4, 4, MmioOp::Store { src: reg(9) }));
        // REX.B does not turn mod 00 rm 101 into [r13]: still RIP-relative with disp32.
        assert_eq!(shape(&[0x41, 0x89, 0x05, 1, 2, 3, 4], CpuMode::Long64), (7, 4, MmioOp::Store { src: reg(0) }));
        // Nor SIB.base 101 with mod 00 into [r13 + ...].
        assert_eq!(
            shape(&[0x43, 0x89, 0x04, 0x2D, 1, 2, 3, 4], CpuMode::Long64),
            (8, 4, MmioOp::Store { src: reg(0) })
        );
        // SIB with base rbp and mod 01: disp8.
        assert_eq!(shape(&[0x89, 0x44, 0x25, 0x10], CpuMode::Long64), (4, 4, MmioOp::Store { src: reg(0) }));
        // SIB with mod 10: disp32.
        assert_eq!(shape(&[0x89, 0x84, 0x24, 0, 1, 0, 0], CpuMode::Long64), (7, 4, MmioOp::Store { src: reg(0) }));
    }

    #[test]
    fn byte_registers_high_byte_and_rex() {
        // mov [eax+0x10], ah: reg 4 without REX is AH.
        assert_eq!(
            shape(&[0x88, 0x60, 0x10], CpuMode::Protected32),
            (3, 1, MmioOp::Store { src: Operand::Reg { index: 0, high_byte: true } })
        );
        // With any REX prefix reg 4 is SPL.
        assert_eq!(shape(&[0x40, 0x88, 0x60, 0x10], CpuMode::Long64), (4, 1, MmioOp::Store { src: reg(4) }));
        // REX.R: R12B.
        assert_eq!(shape(&[0x44, 0x88, 0x60, 0x10], CpuMode::Long64), (4, 1, MmioOp::Store { src: reg(12) }));
        // REX.W does not widen byte forms.
        assert_eq!(shape(&[0x48, 0x88, 0x08], CpuMode::Long64), (3, 1, MmioOp::Store { src: reg(1) }));
        // mov bh, [eax]
        assert_eq!(
            shape(&[0x8A, 0x38], CpuMode::Protected32),
            (2, 1, MmioOp::Load { dest: 3, high_byte: true, extend: Extend::None, dest_size: 1 })
        );
        // mov dil, [rax]
        assert_eq!(shape(&[0x40, 0x8A, 0x38], CpuMode::Long64), (3, 1, load(7, Extend::None, 1)));
    }

    #[test]
    fn mov_load() {
        // mov eax, [eax+0x320]
        assert_eq!(
            shape(&[0x8B, 0x80, 0x20, 0x03, 0x00, 0x00], CpuMode::Protected32),
            (6, 4, load(0, Extend::None, 4))
        );
        // mov r15, [rip+disp32]
        assert_eq!(shape(&[0x4C, 0x8B, 0x3D, 1, 2, 3, 4], CpuMode::Long64), (7, 8, load(15, Extend::None, 8)));
        // mov cx, [rdi]
        assert_eq!(shape(&[0x66, 0x8B, 0x0F], CpuMode::Long64), (3, 2, load(1, Extend::None, 2)));
    }

    #[test]
    fn sixteen_bit_addressing() {
        for mode in [CpuMode::Real16, CpuMode::Protected16] {
            // mov ax, [bx]
            assert_eq!(shape(&[0x8B, 0x07], mode), (2, 2, load(0, Extend::None, 2)));
            // mov ax, [0x1234] (mod 00 rm 110: disp16)
            assert_eq!(shape(&[0x8B, 0x06, 0x34, 0x12], mode), (4, 2, load(0, Extend::None, 2)));
            // mov ax, [bx+0x10]
            assert_eq!(shape(&[0x8B, 0x47, 0x10], mode), (3, 2, load(0, Extend::None, 2)));
            // mov ax, [bx+0x1234]
            assert_eq!(shape(&[0x8B, 0x87, 0x34, 0x12], mode), (4, 2, load(0, Extend::None, 2)));
            // rm 100 is [si], not a SIB byte, in 16-bit addressing.
            assert_eq!(shape(&[0x8B, 0x04], mode), (2, 2, load(0, Extend::None, 2)));
            // 66: mov eax, [bx]
            assert_eq!(shape(&[0x66, 0x8B, 0x07], mode), (3, 4, load(0, Extend::None, 4)));
            // 67: 32-bit addressing, mov ax, [esp]
            assert_eq!(shape(&[0x67, 0x8B, 0x04, 0x24], mode), (4, 2, load(0, Extend::None, 2)));
            assert_eq!(ok(&[0x67, 0x8B, 0x04, 0x24], mode).address_size, 4);
            assert_eq!(ok(&[0x8B, 0x07], mode).address_size, 2);
        }
        // 67 in 32-bit code selects 16-bit addressing: mov eax, [0x1234]
        assert_eq!(shape(&[0x67, 0x8B, 0x06, 0x34, 0x12], CpuMode::Protected32), (5, 4, load(0, Extend::None, 4)));
        assert_eq!(ok(&[0x67, 0x8B, 0x06, 0x34, 0x12], CpuMode::Protected32).address_size, 2);
        // 67 in 64-bit code selects 32-bit addressing (still no 16-bit forms).
        assert_eq!(shape(&[0x67, 0x8B, 0x06], CpuMode::Long64), (3, 4, load(0, Extend::None, 4)));
        assert_eq!(ok(&[0x67, 0x8B, 0x06], CpuMode::Long64).address_size, 4);
    }

    #[test]
    fn mov_store_immediate() {
        // mov dword [0xFEE000B0], 0
        assert_eq!(
            shape(&[0xC7, 0x05, 0xB0, 0x00, 0xE0, 0xFE, 0, 0, 0, 0], CpuMode::Protected32),
            (10, 4, MmioOp::Store { src: Operand::Imm(0) })
        );
        // mov qword [rip+disp32], -1: imm32 sign-extended to 64 bits
        assert_eq!(
            shape(&[0x48, 0xC7, 0x05, 1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF], CpuMode::Long64),
            (11, 8, MmioOp::Store { src: Operand::Imm(u64::MAX) })
        );
        // mov qword [rax], 0x7FFFFFFF: positive immediates stay positive
        assert_eq!(
            shape(&[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0x7F], CpuMode::Long64),
            (7, 8, MmioOp::Store { src: Operand::Imm(0x7FFF_FFFF) })
        );
        // mov word [eax], 0x1234: imm16
        assert_eq!(
            shape(&[0x66, 0xC7, 0x00, 0x34, 0x12], CpuMode::Protected32),
            (5, 2, MmioOp::Store { src: Operand::Imm(0x1234) })
        );
        // mov byte [eax], 0x80
        assert_eq!(shape(&[0xC6, 0x00, 0x80], CpuMode::Protected32), (3, 1, MmioOp::Store { src: Operand::Imm(0x80) }));
        // 16-bit code: mov word [bx], 0xABCD
        assert_eq!(
            shape(&[0xC7, 0x07, 0xCD, 0xAB], CpuMode::Real16),
            (4, 2, MmioOp::Store { src: Operand::Imm(0xABCD) })
        );
        // C7 /1 does not exist.
        assert_eq!(
            decode(&[0xC7, 0x08, 0, 0, 0, 0], CpuMode::Protected32),
            Err(DecodeError::Unsupported { opcode: 0xC7 })
        );
    }

    #[test]
    fn moffs_forms_use_the_address_size() {
        // mov eax, [0xFEE00320]
        let bytes32 = [0xA1, 0x20, 0x03, 0xE0, 0xFE];
        assert_eq!(shape(&bytes32, CpuMode::Protected32), (5, 4, load(0, Extend::None, 4)));
        // 64-bit mode: 8-byte address; mov rax, [moffs64]
        let bytes64 = [0x48, 0xA1, 0x20, 0x03, 0xE0, 0xFE, 0, 0, 0, 0];
        assert_eq!(shape(&bytes64, CpuMode::Long64), (10, 8, load(0, Extend::None, 8)));
        // 67 in 64-bit mode: 4-byte address
        assert_eq!(shape(&[0x67, 0xA1, 0x20, 0x03, 0xE0, 0xFE], CpuMode::Long64), (6, 4, load(0, Extend::None, 4)));
        // 16-bit code: 2-byte address; 67 makes it 4
        assert_eq!(shape(&[0xA1, 0x20, 0x03], CpuMode::Real16), (3, 2, load(0, Extend::None, 2)));
        assert_eq!(shape(&[0x67, 0xA1, 0x20, 0x03, 0, 0], CpuMode::Real16), (6, 2, load(0, Extend::None, 2)));
        // 32-bit code with 67: 2-byte address
        assert_eq!(shape(&[0x67, 0xA2, 0x20, 0x03], CpuMode::Protected32), (4, 1, MmioOp::Store { src: reg(0) }));
        // mov al, [moffs8]: never AH
        assert_eq!(shape(&[0xA0, 1, 2, 3, 4], CpuMode::Protected32), (5, 1, load(0, Extend::None, 1)));
        // mov [moffs64], rax
        let store64 = [0x48, 0xA3, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(shape(&store64, CpuMode::Long64), (10, 8, MmioOp::Store { src: reg(0) }));
        // 8-byte address cut short
        assert_eq!(decode(&bytes64[..9], CpuMode::Long64), Err(DecodeError::Truncated));
    }

    #[test]
    fn movzx_movsx_movsxd() {
        // movzx eax, byte [eax]
        assert_eq!(shape(&[0x0F, 0xB6, 0x00], CpuMode::Protected32), (3, 1, load(0, Extend::Zero, 4)));
        // movzx rdx, word [rax]
        assert_eq!(shape(&[0x48, 0x0F, 0xB7, 0x10], CpuMode::Long64), (4, 2, load(2, Extend::Zero, 8)));
        // movsx ax, byte [eax]
        assert_eq!(shape(&[0x66, 0x0F, 0xBE, 0x00], CpuMode::Protected32), (4, 1, load(0, Extend::Sign, 2)));
        // movsx r8d, word [rax+1]
        assert_eq!(shape(&[0x44, 0x0F, 0xBF, 0x40, 0x01], CpuMode::Long64), (5, 2, load(8, Extend::Sign, 4)));
        // movzx with reg 4 is ESP/SP, never AH (the destination is not a byte register)
        assert_eq!(shape(&[0x0F, 0xB6, 0x20], CpuMode::Protected32), (3, 1, load(4, Extend::Zero, 4)));
        // movsxd rax, dword [rax]
        assert_eq!(shape(&[0x48, 0x63, 0x00], CpuMode::Long64), (3, 4, load(0, Extend::Sign, 8)));
        // movsxd without REX.W: a 32-bit move
        assert_eq!(shape(&[0x63, 0x00], CpuMode::Long64), (2, 4, load(0, Extend::Sign, 4)));
        // 63 is ARPL outside 64-bit mode
        assert_eq!(decode(&[0x63, 0x00], CpuMode::Protected32), Err(DecodeError::Unsupported { opcode: 0x63 }));
        // other two-byte opcodes
        assert_eq!(decode(&[0x0F, 0x01, 0x00], CpuMode::Long64), Err(DecodeError::Unsupported { opcode: 0x0F01 }));
    }

    #[test]
    fn stos() {
        let rep_stosd = ok(&[0xF3, 0xAB], CpuMode::Protected32);
        assert_eq!((rep_stosd.len, rep_stosd.size, rep_stosd.address_size), (2, 4, 4));
        assert_eq!(rep_stosd.op, MmioOp::StoreString { rep: true });
        assert_eq!(shape(&[0xAA], CpuMode::Long64), (1, 1, MmioOp::StoreString { rep: false }));
        assert_eq!(shape(&[0xF3, 0x48, 0xAB], CpuMode::Long64), (3, 8, MmioOp::StoreString { rep: true }));
        assert_eq!(shape(&[0x66, 0xAB], CpuMode::Long64), (2, 2, MmioOp::StoreString { rep: false }));
        assert_eq!(shape(&[0xAB], CpuMode::Real16), (1, 2, MmioOp::StoreString { rep: false }));
        // F2 repeats STOS as F3 does.
        assert_eq!(shape(&[0xF2, 0xAA], CpuMode::Long64), (2, 1, MmioOp::StoreString { rep: true }));
        // 67: ECX/EDI in 64-bit mode.
        assert_eq!(ok(&[0x67, 0xF3, 0xAB], CpuMode::Long64).address_size, 4);
        assert_eq!(ok(&[0xF3, 0xAB], CpuMode::Long64).address_size, 8);
        // Segment overrides do not apply to STOS's ES:[rDI].
        assert_eq!(ok(&[0x64, 0xAB], CpuMode::Protected32).segment, None);
        // LOCK STOS is #UD.
        assert_eq!(decode(&[0xF0, 0xAB], CpuMode::Protected32), Err(DecodeError::Invalid));
    }

    #[test]
    fn alu_with_register() {
        let m32 = CpuMode::Protected32;
        // add [eax], ecx / add ecx, [eax]
        assert_eq!(shape(&[0x01, 0x08], m32), (2, 4, alu_op(AluOp::Add, reg(1), false)));
        assert_eq!(shape(&[0x03, 0x08], m32), (2, 4, alu_op(AluOp::Add, reg(1), true)));
        // or [eax], cl / or cl, [eax]
        assert_eq!(shape(&[0x08, 0x08], m32), (2, 1, alu_op(AluOp::Or, reg(1), false)));
        assert_eq!(shape(&[0x0A, 0x08], m32), (2, 1, alu_op(AluOp::Or, reg(1), true)));
        // and [eax], esp / and ah, [eax]
        assert_eq!(shape(&[0x21, 0x20], m32), (2, 4, alu_op(AluOp::And, reg(4), false)));
        assert_eq!(
            shape(&[0x22, 0x20], m32),
            (2, 1, alu_op(AluOp::And, Operand::Reg { index: 0, high_byte: true }, true))
        );
        // sub, xor
        assert_eq!(shape(&[0x29, 0x18], m32), (2, 4, alu_op(AluOp::Sub, reg(3), false)));
        assert_eq!(shape(&[0x2B, 0x18], m32), (2, 4, alu_op(AluOp::Sub, reg(3), true)));
        assert_eq!(shape(&[0x31, 0x10], m32), (2, 4, alu_op(AluOp::Xor, reg(2), false)));
        assert_eq!(shape(&[0x33, 0x10], m32), (2, 4, alu_op(AluOp::Xor, reg(2), true)));
        // cmp [eax], ecx / cmp ecx, [eax]: flags only
        let cmp = shape(&[0x39, 0x08], m32);
        assert_eq!(cmp, (2, 4, MmioOp::Alu { alu: AluOp::Cmp, src: reg(1), reg_is_dest: false, writes_back: false }));
        let cmp_reg_first = shape(&[0x3B, 0x08], m32);
        assert_eq!(
            cmp_reg_first,
            (2, 4, MmioOp::Alu { alu: AluOp::Cmp, src: reg(1), reg_is_dest: true, writes_back: false })
        );
        // test [eax], ecx; test [rax], r9b
        assert_eq!(
            shape(&[0x85, 0x08], m32),
            (2, 4, MmioOp::Alu { alu: AluOp::Test, src: reg(1), reg_is_dest: false, writes_back: false })
        );
        assert_eq!(
            shape(&[0x44, 0x84, 0x08], CpuMode::Long64),
            (3, 1, MmioOp::Alu { alu: AluOp::Test, src: reg(9), reg_is_dest: false, writes_back: false })
        );
        // add [rax], rcx
        assert_eq!(shape(&[0x48, 0x01, 0x08], CpuMode::Long64), (3, 8, alu_op(AluOp::Add, reg(1), false)));
        // ADC and SBB are not decoded.
        assert_eq!(decode(&[0x11, 0x08], m32), Err(DecodeError::Unsupported { opcode: 0x11 }));
        assert_eq!(decode(&[0x1B, 0x08], m32), Err(DecodeError::Unsupported { opcode: 0x1B }));
        // The accumulator-immediate forms (04, 05, ...) have no memory operand.
        assert_eq!(decode(&[0x05, 1, 0, 0, 0], m32), Err(DecodeError::Unsupported { opcode: 0x05 }));
    }

    #[test]
    fn alu_with_immediate() {
        let m32 = CpuMode::Protected32;
        // or dword [eax], -1 (83: imm8 sign-extended)
        assert_eq!(shape(&[0x83, 0x08, 0xFF], m32), (3, 4, alu_op(AluOp::Or, Operand::Imm(0xFFFF_FFFF), false)));
        // and qword [rax], -16
        assert_eq!(
            shape(&[0x48, 0x83, 0x20, 0xF0], CpuMode::Long64),
            (4, 8, alu_op(AluOp::And, Operand::Imm(0xFFFF_FFFF_FFFF_FFF0), false))
        );
        // xor dword [eax], 0x12345678
        assert_eq!(
            shape(&[0x81, 0x30, 0x78, 0x56, 0x34, 0x12], m32),
            (6, 4, alu_op(AluOp::Xor, Operand::Imm(0x1234_5678), false))
        );
        // sub word [eax], 0x8000 (81 with 66: imm16)
        assert_eq!(
            shape(&[0x66, 0x81, 0x28, 0x00, 0x80], m32),
            (5, 2, alu_op(AluOp::Sub, Operand::Imm(0x8000), false))
        );
        // add qword [rax], imm32 sign-extended
        assert_eq!(
            shape(&[0x48, 0x81, 0x00, 0x00, 0x00, 0x00, 0x80], CpuMode::Long64),
            (7, 8, alu_op(AluOp::Add, Operand::Imm(0xFFFF_FFFF_8000_0000), false))
        );
        // cmp byte [eax], 5
        assert_eq!(shape(&[0x80, 0x38, 0x05], m32), (3, 1, alu_op(AluOp::Cmp, Operand::Imm(5), false)));
        // test dword [eax], 0x100; test byte [eax], 1; the /1 alias
        let test =
            |imm| MmioOp::Alu { alu: AluOp::Test, src: Operand::Imm(imm), reg_is_dest: false, writes_back: false };
        assert_eq!(shape(&[0xF7, 0x00, 0x00, 0x01, 0x00, 0x00], m32), (6, 4, test(0x100)));
        assert_eq!(shape(&[0xF6, 0x00, 0x01], m32), (3, 1, test(1)));
        assert_eq!(shape(&[0xF6, 0x08, 0x01], m32), (3, 1, test(1)));
        assert_eq!(shape(&[0x66, 0xF7, 0x00, 0x01, 0x00], m32), (5, 2, test(1)));
        assert_eq!(shape(&[0x48, 0xF7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF], CpuMode::Long64), (7, 8, test(u64::MAX)));
        // adc via group 1, NOT via group 3: not decoded
        assert_eq!(decode(&[0x83, 0x10, 0x01], m32), Err(DecodeError::Unsupported { opcode: 0x83 }));
        assert_eq!(decode(&[0xF7, 0x10], m32), Err(DecodeError::Unsupported { opcode: 0xF7 }));
        // 82 (alias of 80 outside 64-bit mode) is not decoded.
        assert_eq!(decode(&[0x82, 0x00, 0x01], m32), Err(DecodeError::Unsupported { opcode: 0x82 }));
    }

    #[test]
    fn lock_only_on_memory_read_modify_write() {
        let m32 = CpuMode::Protected32;
        assert!(decode(&[0xF0, 0x09, 0x08], m32).is_ok()); // lock or [eax], ecx
        assert!(decode(&[0xF0, 0x83, 0x00, 0x01], m32).is_ok()); // lock add dword [eax], 1
        for bytes in [
            &[0xF0, 0x39, 0x08][..],               // cmp
            &[0xF0, 0x85, 0x08],                   // test
            &[0xF0, 0x03, 0x08],                   // add ecx, [eax]
            &[0xF0, 0x89, 0x08],                   // mov
            &[0xF0, 0x8B, 0x08],                   // mov
            &[0xF0, 0xC6, 0x00, 0x01],             // mov imm
            &[0xF0, 0x0F, 0xB6, 0x00],             // movzx
            &[0xF0, 0x80, 0x38, 0x01],             // cmp imm
            &[0xF0, 0xF6, 0x00, 0x01],             // test imm
            &[0xF0, 0xA1, 0x00, 0x00, 0x00, 0x00], // mov eax, moffs
        ] {
            assert_eq!(decode(bytes, m32), Err(DecodeError::Invalid), "{bytes:02X?}");
        }
    }

    #[test]
    fn prefixes_rex_placement_and_segments() {
        let m64 = CpuMode::Long64;
        // REX followed by a legacy prefix is ignored: 16-bit.
        assert_eq!(shape(&[0x48, 0x66, 0x89, 0x08], m64), (4, 2, MmioOp::Store { src: reg(1) }));
        // REX.W wins over 66.
        assert_eq!(shape(&[0x66, 0x48, 0x89, 0x08], m64), (4, 8, MmioOp::Store { src: reg(1) }));
        // Of two REX prefixes the last counts.
        assert_eq!(shape(&[0x4C, 0x40, 0x89, 0x08], m64), (4, 4, MmioOp::Store { src: reg(1) }));
        // 40-4F are INC/DEC outside 64-bit mode.
        assert_eq!(decode(&[0x48, 0x89, 0x08], CpuMode::Protected32), Err(DecodeError::Unsupported { opcode: 0x48 }));
        // Segment overrides.
        assert_eq!(ok(&[0x64, 0x89, 0x08], m64).segment, Some(Segment::Fs));
        assert_eq!(ok(&[0x65, 0x48, 0x89, 0x08], m64).segment, Some(Segment::Gs));
        assert_eq!(ok(&[0x2E, 0x89, 0x08], CpuMode::Protected32).segment, Some(Segment::Cs));
        assert_eq!(ok(&[0x2E, 0x36, 0x89, 0x08], CpuMode::Protected32).segment, Some(Segment::Ss));
        assert_eq!(ok(&[0x89, 0x08], CpuMode::Protected32).segment, None);
        // ES/CS/SS/DS do nothing in 64-bit mode, and do not cancel FS/GS.
        assert_eq!(ok(&[0x2E, 0x89, 0x08], m64).segment, None);
        assert_eq!(ok(&[0x64, 0x26, 0x89, 0x08], m64).segment, Some(Segment::Fs));
        // F2/F3 on MOV (XACQUIRE/XRELEASE hints) are ignored.
        assert_eq!(shape(&[0xF3, 0x89, 0x08], m64), (3, 4, MmioOp::Store { src: reg(1) }));
    }

    #[test]
    fn errors() {
        for mode in ALL_MODES {
            assert_eq!(decode(&[], mode), Err(DecodeError::Truncated));
            assert_eq!(decode(&[0x89], mode), Err(DecodeError::Truncated));
            assert_eq!(decode(&[0x66], mode), Err(DecodeError::Truncated));
            assert_eq!(decode(&[0x0F], mode), Err(DecodeError::Truncated));
            assert_eq!(decode(&[0xC7, 0x00, 0x01], mode), Err(DecodeError::Truncated));
            assert_eq!(decode(&[0x89, 0xC8], mode), Err(DecodeError::NotMemoryOperand));
            assert_eq!(decode(&[0x0F, 0xB6, 0xC0], mode), Err(DecodeError::NotMemoryOperand));
            assert_eq!(decode(&[0x90], mode), Err(DecodeError::Unsupported { opcode: 0x90 }));
            assert_eq!(decode(&[0x86, 0x08], mode), Err(DecodeError::Unsupported { opcode: 0x86 }));
        }
        // 32-bit displacement cut short
        assert_eq!(decode(&[0x89, 0x05, 0, 0], CpuMode::Protected32), Err(DecodeError::Truncated));
        // SIB missing
        assert_eq!(decode(&[0x89, 0x04], CpuMode::Protected32), Err(DecodeError::Truncated));
    }

    #[test]
    fn fifteen_byte_limit() {
        // 13 prefixes + 89 08 = 15 bytes: allowed.
        let mut bytes = [0x66; 13].to_vec();
        bytes.extend([0x89, 0x08]);
        assert_eq!(shape(&bytes, CpuMode::Protected32), (15, 2, MmioOp::Store { src: reg(1) }));
        // One more prefix: 16 bytes.
        bytes.insert(0, 0x66);
        assert_eq!(decode(&bytes, CpuMode::Protected32), Err(DecodeError::Invalid));
        // The longest legal form can still be too long with prefixes:
        // 67 2E F0 65 REX.W 81 /0 SIB disp32 imm32 = 5 + 1 + 1 + 1 + 4 + 4 = 16 bytes.
        let long = [0x67, 0x2E, 0xF0, 0x65, 0x48, 0x81, 0x84, 0x24, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(decode(&long, CpuMode::Long64), Err(DecodeError::Invalid));
        assert_eq!(decode(&long[1..], CpuMode::Long64).map(|i| i.len), Ok(15));
        // Invalid even when fewer bytes were supplied than the instruction needs.
        assert_eq!(decode(&long[..12], CpuMode::Long64), Err(DecodeError::Invalid));
        // An endless run of prefixes is Invalid, never Truncated, once 15 bytes are present.
        assert_eq!(decode(&[0x66; 40], CpuMode::Long64), Err(DecodeError::Invalid));
        assert_eq!(decode(&[0x66; 14], CpuMode::Long64), Err(DecodeError::Truncated));
    }

    #[test]
    fn reads_and_writes_memory() {
        let m32 = CpuMode::Protected32;
        let check = |bytes: &[u8], reads: bool, writes: bool| {
            let instruction = ok(bytes, m32);
            assert_eq!((instruction.reads_memory(), instruction.writes_memory()), (reads, writes), "{bytes:02X?}");
        };
        check(&[0x8B, 0x08], true, false);
        check(&[0x89, 0x08], false, true);
        check(&[0xAB], false, true);
        check(&[0x01, 0x08], true, true);
        check(&[0x03, 0x08], true, false);
        check(&[0x39, 0x08], true, false);
        check(&[0xF6, 0x00, 1], true, false);
    }

    // ---- register merge and ALU helpers ----

    #[test]
    fn merge_register_semantics() {
        let old = 0x1122_3344_5566_7788;
        assert_eq!(merge_register(old, 0xAABB_CCDD, 4, false, Extend::None, 4), 0xAABB_CCDD);
        assert_eq!(merge_register(old, 0xCCDD, 2, false, Extend::None, 2), 0x1122_3344_5566_CCDD);
        assert_eq!(merge_register(old, 0xDD, 1, false, Extend::None, 1), 0x1122_3344_5566_77DD);
        assert_eq!(merge_register(old, 0xDD, 1, true, Extend::None, 1), 0x1122_3344_5566_DD88);
        assert_eq!(merge_register(old, u64::MAX, 8, false, Extend::None, 8), u64::MAX);
        // Extra bits above the access size are ignored.
        assert_eq!(merge_register(old, 0xFFFF_FF80, 1, false, Extend::Zero, 4), 0x80);
        assert_eq!(merge_register(old, 0x80, 1, false, Extend::Zero, 4), 0x80);
        assert_eq!(merge_register(old, 0x80, 1, false, Extend::Sign, 4), 0xFFFF_FF80);
        assert_eq!(merge_register(old, 0x80, 1, false, Extend::Sign, 2), 0x1122_3344_5566_FF80);
        assert_eq!(merge_register(old, 0x80, 1, false, Extend::Sign, 8), 0xFFFF_FFFF_FFFF_FF80);
        assert_eq!(merge_register(old, 0x8000, 2, false, Extend::Zero, 8), 0x8000);
        assert_eq!(merge_register(old, 0x8000_0000, 4, false, Extend::Sign, 8), 0xFFFF_FFFF_8000_0000);
        assert_eq!(merge_register(old, 0x7FFF_FFFF, 4, false, Extend::Sign, 8), 0x7FFF_FFFF);
        // MOVSXD without REX.W: a 32-bit write.
        assert_eq!(merge_register(old, 0x8000_0000, 4, false, Extend::Sign, 4), 0x8000_0000);
    }

    #[test]
    fn register_value_reads_operands() {
        let value = 0x1122_3344_5566_7788;
        assert_eq!(register_value(value, 1, false), 0x88);
        assert_eq!(register_value(value, 1, true), 0x77);
        assert_eq!(register_value(value, 2, false), 0x7788);
        assert_eq!(register_value(value, 4, false), 0x5566_7788);
        assert_eq!(register_value(value, 8, false), value);
    }

    fn flags_of(op: AluOp, size: u8, a: u64, b: u64) -> (u64, u64) {
        let out = alu(op, size, a, b);
        (out.result, out.flags)
    }

    #[test]
    fn alu_flags_known_values() {
        const CF: u64 = RFLAGS_CF;
        const PF: u64 = RFLAGS_PF;
        const AF: u64 = RFLAGS_AF;
        const ZF: u64 = RFLAGS_ZF;
        const SF: u64 = RFLAGS_SF;
        const OF: u64 = RFLAGS_OF;
        // 0x7F + 1 = 0x80: signed overflow, AF, SF; one bit set so PF clear.
        assert_eq!(flags_of(AluOp::Add, 1, 0x7F, 1), (0x80, OF | AF | SF));
        // 0xFF + 1 = 0: carry, zero, AF, even parity.
        assert_eq!(flags_of(AluOp::Add, 1, 0xFF, 1), (0, CF | ZF | AF | PF));
        // 0 - 1 = 0xFF: borrow, AF, SF, PF (eight bits set).
        assert_eq!(flags_of(AluOp::Sub, 1, 0, 1), (0xFF, CF | AF | SF | PF));
        // 0x80 - 1 = 0x7F: signed overflow, AF; seven bits set.
        assert_eq!(flags_of(AluOp::Cmp, 1, 0x80, 1), (0x7F, OF | AF));
        // 64-bit: i64::MAX + 1
        assert_eq!(flags_of(AluOp::Add, 8, i64::MAX as u64, 1), (1 << 63, OF | AF | SF | PF));
        // 64-bit: u64::MAX + u64::MAX
        assert_eq!(flags_of(AluOp::Add, 8, u64::MAX, u64::MAX), (u64::MAX - 1, CF | SF | AF));
        // 32-bit: inputs are truncated to the size.
        assert_eq!(flags_of(AluOp::Sub, 4, 0x1_0000_0005, 5), (0, ZF | PF));
        // 16-bit compare equal
        assert_eq!(flags_of(AluOp::Cmp, 2, 0x1234, 0x1234), (0, ZF | PF));
        // Logic ops clear CF and OF.
        assert_eq!(flags_of(AluOp::And, 4, 0xF0, 0x0F), (0, ZF | PF));
        assert_eq!(flags_of(AluOp::Test, 4, 0x8000_0000, 0x8000_0000), (0x8000_0000, SF | PF));
        assert_eq!(flags_of(AluOp::Or, 2, 0x8000, 0x0001), (0x8001, SF));
        assert_eq!(flags_of(AluOp::Xor, 1, 0xFF, 0xFF), (0, ZF | PF));
    }

    /// ALU flags computed independently: signed results through `i128` range checks and
    /// unsigned ones through `u128`.
    fn reference_alu(op: AluOp, size: u8, a: u64, b: u64) -> (u64, u64) {
        let bits = u32::from(size) * 8;
        let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
        let (a, b) = (a & mask, b & mask);
        let signed = |v: u64| -> i128 {
            let shift = 128 - bits;
            (i128::from(v) << shift) >> shift
        };
        let (min, max) = (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1);
        let (wide, carry, overflow) = match op {
            AluOp::Add => {
                let sum = u128::from(a) + u128::from(b);
                let signed_sum = signed(a) + signed(b);
                (sum as u64, sum > u128::from(mask), !(min..=max).contains(&signed_sum))
            }
            AluOp::Sub | AluOp::Cmp => {
                let signed_difference = signed(a) - signed(b);
                (a.wrapping_sub(b), b > a, !(min..=max).contains(&signed_difference))
            }
            AluOp::And | AluOp::Test => (a & b, false, false),
            AluOp::Or => (a | b, false, false),
            AluOp::Xor => (a ^ b, false, false),
        };
        let result = wide & mask;
        let adjust = match op {
            AluOp::Add => (a & 0xF) + (b & 0xF) > 0xF,
            AluOp::Sub | AluOp::Cmp => (a & 0xF) < (b & 0xF),
            _ => false,
        };
        let mut flags = 0;
        for (bit, set) in [
            (RFLAGS_CF, carry),
            (RFLAGS_PF, (0..8).filter(|i| result >> i & 1 == 1).count() % 2 == 0),
            (RFLAGS_AF, adjust),
            (RFLAGS_ZF, result == 0),
            (RFLAGS_SF, signed(result) < 0),
            (RFLAGS_OF, overflow),
        ] {
            if set {
                flags |= bit;
            }
        }
        (result, flags)
    }

    fn any_alu_op() -> impl Strategy<Value = AluOp> {
        prop::sample::select(vec![AluOp::Add, AluOp::Or, AluOp::And, AluOp::Sub, AluOp::Xor, AluOp::Cmp, AluOp::Test])
    }

    fn any_size() -> impl Strategy<Value = u8> {
        prop::sample::select(vec![1u8, 2, 4, 8])
    }

    /// Values near the interesting edges (0, sign boundaries, all ones) as well as random ones.
    fn edgy_value() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            prop::sample::select(vec![
                0,
                1,
                0x0F,
                0x10,
                0x7F,
                0x80,
                0xFF,
                0x7FFF,
                0x8000,
                0xFFFF,
                0x7FFF_FFFF,
                0x8000_0000,
                0xFFFF_FFFF,
                i64::MAX as u64,
                1 << 63,
                u64::MAX,
            ]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        #[test]
        fn alu_matches_reference(op in any_alu_op(), size in any_size(), a in edgy_value(), b in edgy_value()) {
            let out = alu(op, size, a, b);
            prop_assert_eq!((out.result, out.flags), reference_alu(op, size, a, b));
            prop_assert_eq!(out.flags & !ALU_FLAGS_MASK, 0);
        }

        #[test]
        fn merge_register_matches_bit_arithmetic(
            old in any::<u64>(), value in any::<u64>(), size in any_size(), high in any::<bool>(),
        ) {
            // A plain load of `size` bytes followed by reading the operand back gives the data.
            let high = high && size == 1;
            let merged = merge_register(old, value, size, high, Extend::None, size);
            prop_assert_eq!(register_value(merged, size, high), value & size_mask(size));
            // And leaves exactly the bits the SDM says alone.
            let kept = match (size, high) {
                (1, true) => !0xFF00,
                (1, false) => !0xFF,
                (2, _) => !0xFFFF,
                _ => 0,
            };
            prop_assert_eq!(merged & kept, old & kept);
        }
    }

    // ---- cross-check against iced-x86 ----
    //
    // Deliberate divergences from iced (excluded from the "iced decodes it, so must we"
    // direction): opcode 82 (alias of 80 outside 64-bit mode), ADC/SBB and every
    // instruction outside the supported list. In 64-bit mode iced reports ES/CS/SS/DS
    // prefixes that the CPU ignores; the comparison filters them out.

    use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

    fn bitness(mode: CpuMode) -> u32 {
        match mode {
            CpuMode::Real16 | CpuMode::Protected16 => 16,
            CpuMode::Protected32 => 32,
            CpuMode::Long64 => 64,
        }
    }

    fn iced_decode(bytes: &[u8], mode: CpuMode) -> Instruction {
        Decoder::new(bitness(mode), bytes, DecoderOptions::NONE).decode()
    }

    fn is_memory_kind(kind: OpKind) -> bool {
        matches!(kind, OpKind::Memory | OpKind::MemoryESDI | OpKind::MemoryESEDI | OpKind::MemoryESRDI)
    }

    fn iced_has_memory_operand(instruction: &Instruction) -> bool {
        (0..instruction.op_count()).any(|i| is_memory_kind(instruction.op_kind(i)))
    }

    fn is_stos(mnemonic: Mnemonic) -> bool {
        matches!(mnemonic, Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq)
    }

    /// iced says: a form this decoder promises to handle.
    fn iced_is_supported_form(instruction: &Instruction) -> bool {
        use Mnemonic::*;
        if instruction.is_invalid() || !iced_has_memory_operand(instruction) {
            return false;
        }
        let segment_register_operand = (0..instruction.op_count()).any(|i| {
            instruction.op_kind(i) == OpKind::Register
                && matches!(
                    instruction.op_register(i),
                    Register::ES | Register::CS | Register::SS | Register::DS | Register::FS | Register::GS
                )
        });
        let alias_82 = format!("{:?}", instruction.code()).ends_with("_82");
        let family =
            matches!(instruction.mnemonic(), Mov | Movzx | Movsx | Movsxd | Add | Or | And | Sub | Xor | Cmp | Test)
                || is_stos(instruction.mnemonic());
        family && !segment_register_operand && !alias_82
    }

    /// (register number 0..=15, high byte, size in bytes) of an iced general-purpose register.
    fn iced_register(register: Register) -> (u8, bool, u8) {
        let high = matches!(register, Register::AH | Register::CH | Register::DH | Register::BH);
        let number = u8::try_from(register.full_register().number()).unwrap();
        (number, high, u8::try_from(register.size()).unwrap())
    }

    fn iced_segment(instruction: &Instruction, mode: CpuMode) -> Option<Segment> {
        match instruction.segment_prefix() {
            Register::ES if mode != CpuMode::Long64 => Some(Segment::Es),
            Register::CS if mode != CpuMode::Long64 => Some(Segment::Cs),
            Register::SS if mode != CpuMode::Long64 => Some(Segment::Ss),
            Register::DS if mode != CpuMode::Long64 => Some(Segment::Ds),
            Register::FS => Some(Segment::Fs),
            Register::GS => Some(Segment::Gs),
            _ => None,
        }
    }

    /// Checks `operand` against iced's operand `index`.
    fn compare_operand(ours: Operand, size: u8, iced: &Instruction, index: u32) -> Result<(), String> {
        match (ours, iced.op_kind(index)) {
            (Operand::Reg { index: number, high_byte }, OpKind::Register) => {
                let (iced_number, iced_high, iced_size) = iced_register(iced.op_register(index));
                if (number, high_byte, size) != (iced_number, iced_high, iced_size) {
                    return Err(format!("register {number}/{high_byte}/{size} vs {:?}", iced.op_register(index)));
                }
            }
            (Operand::Imm(value), kind) if format!("{kind:?}").starts_with("Immediate") => {
                let iced_value = iced.immediate(index) & size_mask(size);
                if value != iced_value {
                    return Err(format!("immediate {value:#X} vs {iced_value:#X}"));
                }
            }
            (ours, kind) => return Err(format!("operand {ours:?} vs {kind:?}")),
        }
        Ok(())
    }

    /// Compares a successful decode with iced's view of the same bytes.
    fn compare_with_iced(ours: &MmioInstruction, iced: &Instruction, mode: CpuMode) -> Result<(), String> {
        use Mnemonic::*;
        if iced.is_invalid() {
            return Err("iced: invalid".into());
        }
        if usize::from(ours.len) != iced.len() {
            return Err(format!("length {} vs iced {}", ours.len, iced.len()));
        }
        if usize::from(ours.size) != iced.memory_size().size() {
            return Err(format!("size {} vs iced {:?}", ours.size, iced.memory_size()));
        }
        let mnemonic = iced.mnemonic();
        // Position of the memory operand in iced's operand list.
        let memory_index =
            (0..iced.op_count()).find(|&i| is_memory_kind(iced.op_kind(i))).ok_or("no memory operand")?;
        match ours.op {
            MmioOp::Load { dest, high_byte, extend, dest_size } => {
                let family_ok = match extend {
                    Extend::None => mnemonic == Mov,
                    Extend::Zero => mnemonic == Movzx,
                    Extend::Sign => matches!(mnemonic, Movsx | Movsxd),
                };
                if !family_ok || memory_index != 1 {
                    return Err(format!("load {extend:?} vs {mnemonic:?}"));
                }
                compare_operand(Operand::Reg { index: dest, high_byte }, dest_size, iced, 0)?;
            }
            MmioOp::Store { src } => {
                if mnemonic != Mov || memory_index != 0 {
                    return Err(format!("store vs {mnemonic:?}"));
                }
                compare_operand(src, ours.size, iced, 1)?;
            }
            MmioOp::StoreString { rep } => {
                if !is_stos(mnemonic) || rep != (iced.has_rep_prefix() || iced.has_repne_prefix()) {
                    return Err(format!("stos rep {rep} vs {mnemonic:?}"));
                }
                let iced_address_size = match iced.op_kind(memory_index) {
                    OpKind::MemoryESDI => 2,
                    OpKind::MemoryESEDI => 4,
                    _ => 8,
                };
                if ours.address_size != iced_address_size {
                    return Err(format!("stos address size {} vs {iced_address_size}", ours.address_size));
                }
            }
            MmioOp::Alu { alu, src, reg_is_dest, writes_back } => {
                let expected = match alu {
                    AluOp::Add => Add,
                    AluOp::Or => Or,
                    AluOp::And => And,
                    AluOp::Sub => Sub,
                    AluOp::Xor => Xor,
                    AluOp::Cmp => Cmp,
                    AluOp::Test => Test,
                };
                if mnemonic != expected || writes_back != alu.writes_result() {
                    return Err(format!("alu {alu:?} vs {mnemonic:?}"));
                }
                let (memory_expected, other) = if reg_is_dest { (1, 0) } else { (0, 1) };
                if memory_index != memory_expected {
                    return Err(format!("memory operand {memory_index}, reg_is_dest {reg_is_dest}"));
                }
                compare_operand(src, ours.size, iced, other)?;
            }
        }
        let iced_segment = if matches!(ours.op, MmioOp::StoreString { .. }) { None } else { iced_segment(iced, mode) };
        if ours.segment != iced_segment {
            return Err(format!("segment {:?} vs iced {:?}", ours.segment, iced.segment_prefix()));
        }
        Ok(())
    }

    /// Everything `decode` claims must agree with iced, and everything iced decodes as a
    /// supported memory form must decode.
    fn cross_check(bytes: &[u8], mode: CpuMode) -> Result<Option<MmioInstruction>, String> {
        let iced = iced_decode(bytes, mode);
        let context = |message: String| format!("{bytes:02X?} in {mode:?}: {message} (iced: {:?} {iced})", iced.code());
        match decode(bytes, mode) {
            Ok(ours) => {
                compare_with_iced(&ours, &iced, mode).map_err(context)?;
                Ok(Some(ours))
            }
            Err(error) => {
                if iced_is_supported_form(&iced) {
                    return Err(context(format!("we say {error:?}")));
                }
                match error {
                    DecodeError::Invalid if !iced.is_invalid() => Err(context("Invalid, iced decodes it".into())),
                    DecodeError::NotMemoryOperand if iced_has_memory_operand(&iced) => {
                        Err(context("NotMemoryOperand, iced has a memory operand".into()))
                    }
                    DecodeError::Truncated if bytes.len() >= MAX_INSTRUCTION_LEN => {
                        Err(context("Truncated with 15 bytes present".into()))
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    /// The opcodes of the supported forms, plus neighbours that must not decode.
    const OPCODES: &[&[u8]] = &[
        &[0x00],
        &[0x01],
        &[0x02],
        &[0x03],
        &[0x08],
        &[0x09],
        &[0x0A],
        &[0x0B],
        &[0x10],
        &[0x13],
        &[0x18],
        &[0x20],
        &[0x21],
        &[0x22],
        &[0x23],
        &[0x28],
        &[0x29],
        &[0x2A],
        &[0x2B],
        &[0x30],
        &[0x31],
        &[0x32],
        &[0x33],
        &[0x38],
        &[0x39],
        &[0x3A],
        &[0x3B],
        &[0x63],
        &[0x80],
        &[0x81],
        &[0x82],
        &[0x83],
        &[0x84],
        &[0x85],
        &[0x86],
        &[0x88],
        &[0x89],
        &[0x8A],
        &[0x8B],
        &[0x8C],
        &[0xA0],
        &[0xA1],
        &[0xA2],
        &[0xA3],
        &[0xAA],
        &[0xAB],
        &[0xAC],
        &[0xC6],
        &[0xC7],
        &[0xF6],
        &[0xF7],
        &[0x0F, 0xB6],
        &[0x0F, 0xB7],
        &[0x0F, 0xBE],
        &[0x0F, 0xBF],
        &[0x0F, 0xB8],
        &[0x0F, 0xBC],
        &[0x0F, 0xB0],
    ];

    /// Prefix bytes the generators choose from (REX bytes are INC/DEC outside 64-bit mode).
    const PREFIX_BYTES: &[u8] =
        &[0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x40, 0x41, 0x44, 0x48, 0x4C, 0x4F];

    /// Prefix combinations for the exhaustive ModR/M sweep.
    const PREFIX_SETS: &[&[u8]] = &[
        &[],
        &[0x66],
        &[0x67],
        &[0x66, 0x67],
        &[0xF0],
        &[0xF3],
        &[0xF2],
        &[0x64],
        &[0x2E],
        &[0x48],
        &[0x4D],
        &[0x40],
        &[0x66, 0x48],
        &[0x48, 0x66],
        &[0xF0, 0x66, 0x4F],
        &[0x67, 0x48],
    ];

    /// Every supported opcode with every ModR/M byte, a few SIB bytes and prefix sets, in all
    /// modes, checked against iced.
    #[test]
    fn iced_agrees_on_every_modrm() {
        let tail = [0x11, 0x92, 0x33, 0xF4, 0x55, 0x86, 0x77, 0xA8, 0x99, 0x0A, 0xBB];
        let mut decoded = 0usize;
        let mut failures = Vec::new();
        for mode in ALL_MODES {
            for prefixes in PREFIX_SETS {
                for opcode in OPCODES {
                    for modrm in 0..=255u8 {
                        for sib in [0x00u8, 0x25, 0x65, 0xE4] {
                            let mut bytes = prefixes.to_vec();
                            bytes.extend_from_slice(opcode);
                            bytes.push(modrm);
                            bytes.push(sib);
                            bytes.extend_from_slice(&tail);
                            match cross_check(&bytes, mode) {
                                Ok(Some(_)) => decoded += 1,
                                Ok(None) => {}
                                Err(message) => failures.push(message),
                            }
                        }
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} mismatches, first ones:\n{}",
            failures.len(),
            failures[..failures.len().min(20)].join("\n")
        );
        assert!(decoded > 100_000, "only {decoded} decoded");
    }

    fn any_mode() -> impl Strategy<Value = CpuMode> {
        prop::sample::select(ALL_MODES.to_vec())
    }

    fn opcode_led_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(prop::sample::select(PREFIX_BYTES.to_vec()), 0..6),
            prop::sample::select(OPCODES.to_vec()),
            prop::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(prefixes, opcode, tail)| [prefixes, opcode.to_vec(), tail].concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        #[test]
        fn iced_agrees_on_random_instructions(mode in any_mode(), bytes in opcode_led_bytes()) {
            if let Err(message) = cross_check(&bytes, mode) {
                prop_assert!(false, "{}", message);
            }
        }

        #[test]
        fn iced_agrees_on_random_bytes(mode in any_mode(), bytes in prop::collection::vec(any::<u8>(), 0..20)) {
            if let Err(message) = cross_check(&bytes, mode) {
                prop_assert!(false, "{}", message);
            }
        }

        /// A decoded instruction only depends on its own bytes: cutting the input at its
        /// length changes nothing, and cutting any earlier reports `Truncated`.
        #[test]
        fn decode_uses_exactly_len_bytes(mode in any_mode(), bytes in opcode_led_bytes()) {
            if let Ok(instruction) = decode(&bytes, mode) {
                let len = usize::from(instruction.len);
                prop_assert!(len <= MAX_INSTRUCTION_LEN && len <= bytes.len());
                prop_assert!(matches!(instruction.size, 1 | 2 | 4 | 8));
                prop_assert_eq!(decode(&bytes[..len], mode), Ok(instruction));
                for cut in 0..len {
                    prop_assert_eq!(decode(&bytes[..cut], mode), Err(DecodeError::Truncated));
                }
            }
        }
    }
}
