//! Range checks made before any copy, memset or pointer offset reaches the driver. Pure functions.

use crate::error::GpuError;

/// `[offset, offset + len)` must lie inside `[0, capacity)` (all in elements), without overflow.
pub fn check_range(
    op: &'static str,
    operand: &'static str,
    offset: usize,
    len: usize,
    capacity: usize,
) -> Result<(), GpuError> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(GpuError::OutOfBounds { op, operand, offset, len, capacity }),
    }
}

/// `len` elements of `elem_bytes` each, in bytes, refusing overflow.
pub fn bytes_of(op: &'static str, len: usize, elem_bytes: usize) -> Result<usize, GpuError> {
    len.checked_mul(elem_bytes).ok_or_else(|| GpuError::InvalidInput {
        op,
        reason: format!("{len} elements of {elem_bytes} bytes overflow usize"),
    })
}

/// Check a copy of `len` elements from `src[src_offset..]` (capacity `src_len`) to `dst[dst_offset..]`
/// (capacity `dst_len`), and return its size in bytes.
pub fn check_copy(
    op: &'static str,
    src_offset: usize,
    src_len: usize,
    dst_offset: usize,
    dst_len: usize,
    len: usize,
    elem_bytes: usize,
) -> Result<usize, GpuError> {
    check_range(op, "src", src_offset, len, src_len)?;
    check_range(op, "dst", dst_offset, len, dst_len)?;
    bytes_of(op, len, elem_bytes)
}

/// Byte address of element `offset` of a device allocation at `base` holding `capacity` elements of
/// `elem_bytes`; `offset == capacity` (one past the end) is allowed, as for slices.
pub fn element_address(base: u64, offset: usize, capacity: usize, elem_bytes: usize) -> Result<u64, GpuError> {
    check_range("element_address", "offset", offset, 0, capacity)?;
    let bytes = bytes_of("element_address", offset, elem_bytes)?;
    base.checked_add(bytes as u64).ok_or_else(|| GpuError::InvalidInput {
        op: "element_address",
        reason: format!("address {base:#x} + {bytes} overflows"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_inside_pass_and_outside_fail_with_the_numbers() {
        assert!(check_range("copy", "dst", 0, 10, 10).is_ok());
        assert!(check_range("copy", "dst", 10, 0, 10).is_ok());
        assert!(check_range("copy", "dst", 3, 7, 10).is_ok());
        let e = check_range("copy", "dst", 4, 7, 10).unwrap_err();
        assert_eq!(e, GpuError::OutOfBounds { op: "copy", operand: "dst", offset: 4, len: 7, capacity: 10 });
        assert!(e.to_string().contains("dst range [4, 4+7)"), "{e}");
        assert!(check_range("copy", "src", 11, 0, 10).is_err());
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(check_range("copy", "src", usize::MAX, 2, 10).is_err());
        assert!(check_range("copy", "src", 1, usize::MAX, usize::MAX).is_err());
        assert!(bytes_of("copy", usize::MAX / 2, 4).is_err());
        assert_eq!(bytes_of("copy", 5, 4).unwrap(), 20);
        assert!(element_address(u64::MAX - 4, 2, 8, 4).is_err());
    }

    #[test]
    fn copies_check_both_sides() {
        assert_eq!(check_copy("dtod", 2, 10, 0, 4, 4, 2).unwrap(), 8);
        let e = check_copy("dtod", 2, 10, 1, 4, 4, 2).unwrap_err();
        assert!(matches!(e, GpuError::OutOfBounds { operand: "dst", .. }), "{e}");
        let e = check_copy("dtod", 7, 10, 0, 4, 4, 2).unwrap_err();
        assert!(matches!(e, GpuError::OutOfBounds { operand: "src", .. }), "{e}");
    }

    #[test]
    fn element_addresses_stay_inside_or_one_past() {
        assert_eq!(element_address(0x1000, 0, 4, 4).unwrap(), 0x1000);
        assert_eq!(element_address(0x1000, 4, 4, 4).unwrap(), 0x1010);
        assert!(element_address(0x1000, 5, 4, 4).is_err());
    }
}
