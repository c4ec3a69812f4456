//! Hardware-free logic of the hypervisor.
#![no_std]
