//! What two peers exchange over the authenticated bootstrap channel to connect an RC queue pair
//! and let one write into the other's region.
//!
//! Wire format, version 1, 56 bytes, little-endian:
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `FSVE` |
//! | 4 | 2 | version = 1 |
//! | 6 | 2 | flags: bit 0 = RoCE (GID-addressed), other bits zero |
//! | 8 | 4 | QP number (24 bits) |
//! | 12 | 4 | first packet sequence number (24 bits) |
//! | 16 | 2 | LID (InfiniBand; 0 on RoCE) |
//! | 18 | 1 | GID index used by the sender |
//! | 19 | 1 | active MTU code, `IBV_MTU_256` (1) ..= `IBV_MTU_4096` (5) |
//! | 20 | 4 | rkey of the region |
//! | 24 | 16 | GID (raw, network order) |
//! | 40 | 8 | region address |
//! | 48 | 8 | region length in bytes |

use super::error::VerbsError;
use super::sys;

pub const ENDPOINT_MAGIC: [u8; 4] = *b"FSVE";
pub const ENDPOINT_VERSION: u16 = 1;
pub const ENDPOINT_BYTES: usize = 56;
const FLAG_ROCE: u16 = 1;
/// QP numbers and PSNs are 24-bit quantities in the InfiniBand transport header.
pub const MAX_24_BIT: u32 = 0x00ff_ffff;

/// One side's connection data and the region it offers for RDMA writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerbsEndpoint {
    pub qpn: u32,
    pub psn: u32,
    pub lid: u16,
    pub gid: [u8; 16],
    pub gid_index: u8,
    /// `IBV_MTU_*` code.
    pub mtu: u32,
    /// Addressed by GID (RoCE) rather than LID (InfiniBand).
    pub roce: bool,
    pub rkey: u32,
    pub addr: u64,
    pub len: u64,
}

fn bad(field: &'static str, detail: String) -> VerbsError {
    VerbsError::BadEndpoint { field, detail }
}

impl VerbsEndpoint {
    /// Checks every field's range (as [`VerbsEndpoint::from_bytes`] does for received bytes).
    pub fn validate(&self) -> Result<(), VerbsError> {
        if self.qpn > MAX_24_BIT {
            return Err(bad("qpn", format!("{:#x} exceeds 24 bits", self.qpn)));
        }
        if self.psn > MAX_24_BIT {
            return Err(bad("psn", format!("{:#x} exceeds 24 bits", self.psn)));
        }
        if !(sys::IBV_MTU_256..=sys::IBV_MTU_4096).contains(&self.mtu) {
            return Err(bad("mtu", format!("code {} outside 1..=5", self.mtu)));
        }
        if self.roce && self.gid == [0; 16] {
            return Err(bad("gid", "RoCE endpoint with an all-zero GID".to_string()));
        }
        if !self.roce && self.lid == 0 {
            return Err(bad("lid", "InfiniBand endpoint with LID 0".to_string()));
        }
        if self.addr.checked_add(self.len).is_none() {
            return Err(bad("len", format!("addr {:#x} + len {} overflows", self.addr, self.len)));
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> [u8; ENDPOINT_BYTES] {
        let mut b = [0u8; ENDPOINT_BYTES];
        b[0..4].copy_from_slice(&ENDPOINT_MAGIC);
        b[4..6].copy_from_slice(&ENDPOINT_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(if self.roce { FLAG_ROCE } else { 0 }).to_le_bytes());
        b[8..12].copy_from_slice(&self.qpn.to_le_bytes());
        b[12..16].copy_from_slice(&self.psn.to_le_bytes());
        b[16..18].copy_from_slice(&self.lid.to_le_bytes());
        b[18] = self.gid_index;
        b[19] = u8::try_from(self.mtu).unwrap_or(0);
        b[20..24].copy_from_slice(&self.rkey.to_le_bytes());
        b[24..40].copy_from_slice(&self.gid);
        b[40..48].copy_from_slice(&self.addr.to_le_bytes());
        b[48..56].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses and validates bytes received from a peer.
    pub fn from_bytes(b: &[u8]) -> Result<VerbsEndpoint, VerbsError> {
        if b.len() != ENDPOINT_BYTES {
            let what = if b.len() < ENDPOINT_BYTES { "truncated" } else { "trailing bytes" };
            return Err(bad("length", format!("{what}: {} bytes, expected {ENDPOINT_BYTES}", b.len())));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        if b[0..4] != ENDPOINT_MAGIC {
            return Err(bad("magic", format!("{:02x?}, expected {:02x?}", &b[0..4], ENDPOINT_MAGIC)));
        }
        let version = u16_at(4);
        if version != ENDPOINT_VERSION {
            return Err(bad("version", format!("{version}, this build reads {ENDPOINT_VERSION}")));
        }
        let flags = u16_at(6);
        if flags & !FLAG_ROCE != 0 {
            return Err(bad("flags", format!("unknown bits {flags:#06x}")));
        }
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[24..40]);
        let e = VerbsEndpoint {
            qpn: u32_at(8),
            psn: u32_at(12),
            lid: u16_at(16),
            gid_index: b[18],
            mtu: u32::from(b[19]),
            rkey: u32_at(20),
            gid,
            roce: flags & FLAG_ROCE != 0,
            addr: u64_at(40),
            len: u64_at(48),
        };
        e.validate()?;
        Ok(e)
    }

    /// Path MTU in bytes for an `IBV_MTU_*` code (256 << (code - 1)), `None` outside 1..=5.
    pub fn mtu_bytes(code: u32) -> Option<u32> {
        (sys::IBV_MTU_256..=sys::IBV_MTU_4096).contains(&code).then(|| 256u32 << (code - 1))
    }
}
