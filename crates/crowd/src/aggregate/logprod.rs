//! A sum of logarithms without a `ln` per term (the E-step's likelihoods, the M-step's
//! log prior).

/// Accumulates a product of positive numbers as mantissa * 2^exponent (no `ln` per factor).
#[derive(Clone, Copy)]
pub(crate) struct LogProd {
    m: f64,
    e: i64,
    /// `ln` of factors too extreme for the fast path.
    slow: f64,
}

impl LogProd {
    pub(crate) fn new() -> Self {
        LogProd { m: 1.0, e: 0, slow: 0.0 }
    }
    #[inline(always)]
    pub(crate) fn mul(&mut self, z: f64) {
        if !(1e-300..=1e300).contains(&z) {
            self.slow += z.ln();
            return;
        }
        // m in [1, 2) and z in [1e-300, 1e300]: the product is a normal number.
        self.m *= z;
        let bits = self.m.to_bits();
        let ex = ((bits >> 52) & 0x7ff) as i64;
        self.e += ex - 1023;
        self.m = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1023u64 << 52));
    }
    pub(crate) fn ln(&self) -> f64 {
        self.m.ln() + self.e as f64 * std::f64::consts::LN_2 + self.slow
    }
}
