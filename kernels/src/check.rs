//! The one measure of closeness every accuracy check in the workspace uses (kernel tests, the
//! engine's golden tests, the GPU checks): the normalised L2 error.

/// ‖got − want‖₂ / ‖want‖₂, summed in f64.
///
/// Edge cases are answered so that a bad result can never pass a `<= tolerance` check by accident:
/// slices of different lengths give +∞ (something is missing), a NaN anywhere gives +∞, and when
/// `want` is all zeros the error is the absolute ‖got‖₂ (0 when both are zero).
pub fn normalised_error(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    let den: f64 = want.iter().map(|&b| f64::from(b).powi(2)).sum();
    let e = if den == 0.0 { num.sqrt() } else { (num / den).sqrt() };
    if e.is_nan() {
        f64::INFINITY
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::normalised_error;

    #[test]
    fn relative_to_the_reference_and_never_nan() {
        assert_eq!(normalised_error(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        // ‖(0, 1)‖ / ‖(3, 4)‖ = 1 / 5
        assert!((normalised_error(&[3.0, 5.0], &[3.0, 4.0]) - 0.2).abs() < 1e-12);
        assert_eq!(normalised_error(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert!((normalised_error(&[3.0, 4.0], &[0.0, 0.0]) - 5.0).abs() < 1e-12);
        assert_eq!(normalised_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(normalised_error(&[f32::NAN, 1.0], &[1.0, 1.0]), f64::INFINITY);
        assert_eq!(normalised_error(&[1.0, 1.0], &[f32::NAN, 1.0]), f64::INFINITY);
    }
}
