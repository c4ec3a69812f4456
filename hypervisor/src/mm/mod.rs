//! Memory: physical frames, the kernel heap, the hypervisor's own page tables and
//! guarded stacks.

pub mod frames;
pub mod heap;
pub mod paging;
pub mod stacks;
