//! GEMM parameters: C[m×n] = A[m×k] · B[k×n].

use serde::{Deserialize, Serialize};

use super::Dtype;

/// Operand layouts: `nn` (both row-major as stored), `nt` (B transposed), `tn`, `tt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nn,
    Nt,
    Tn,
    Tt,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmParams {
    /// Rows of A and C.
    #[serde(default)]
    pub m: u64,
    /// Columns of B and C.
    #[serde(default)]
    pub n: u64,
    /// The inner dimension.
    #[serde(default)]
    pub k: u64,
    /// Shorthand for a square problem: m = n = k = size.
    #[serde(default, skip_serializing)]
    pub size: Option<u64>,
    #[serde(default = "default_dtype")]
    pub dtype: Dtype,
    #[serde(default = "default_layout")]
    pub layout: Layout,
    /// fp8 only: cuBLASLt's `CUBLASLT_MATMUL_DESC_FAST_ACCUM` (torch `_scaled_mm`'s
    /// `use_fast_accum`): partial sums kept in the tensor core's lower-precision accumulator,
    /// faster, and what published fp8 figures use. A sweep axis (`[false, true]`) measures both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_accum: Option<bool>,
}

fn default_dtype() -> Dtype {
    Dtype::Fp32
}
fn default_layout() -> Layout {
    Layout::Nn
}

impl GemmParams {
    /// Fills m, n, k from `size` and checks them.
    pub fn normalize(&mut self) -> Result<(), String> {
        if let Some(s) = self.size.take() {
            if self.m != 0 || self.n != 0 || self.k != 0 {
                return Err("give either `size` or `m`, `n`, `k`, not both".into());
            }
            (self.m, self.n, self.k) = (s, s, s);
        }
        if self.m == 0 || self.n == 0 || self.k == 0 {
            return Err("m, n and k must be positive".into());
        }
        if self.fast_accum.is_some() && self.dtype != Dtype::Fp8 {
            return Err("`fast_accum` applies to dtype fp8 only".into());
        }
        Ok(())
    }

    /// 2·m·n·k: one multiply and one add per inner-product term.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// Bytes of A, B and C as stored.
    pub fn bytes(&self) -> u64 {
        let e = self.dtype.size_bytes() as u64;
        (self.m * self.k + self.k * self.n) * e + self.m * self.n * e.max(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_of_square() {
        let mut p = GemmParams {
            m: 0,
            n: 0,
            k: 0,
            size: Some(1024),
            dtype: Dtype::Fp32,
            layout: Layout::Nn,
            fast_accum: None,
        };
        p.normalize().unwrap();
        assert_eq!((p.m, p.n, p.k), (1024, 1024, 1024));
        assert_eq!(p.flops(), 2.0 * 1024f64.powi(3));
    }

    #[test]
    fn zero_dim_rejected() {
        let mut p = GemmParams {
            m: 0,
            n: 1,
            k: 1,
            size: None,
            dtype: Dtype::Fp32,
            layout: Layout::Nn,
            fast_accum: None,
        };
        assert!(p.normalize().is_err());
        let mut p = GemmParams {
            m: 2,
            n: 1,
            k: 1,
            size: Some(4),
            dtype: Dtype::Fp32,
            layout: Layout::Nn,
            fast_accum: None,
        };
        assert!(p.normalize().unwrap_err().contains("either"));
        let mut p = GemmParams {
            m: 2,
            n: 2,
            k: 2,
            size: None,
            dtype: Dtype::Bf16,
            layout: Layout::Nn,
            fast_accum: Some(true),
        };
        assert!(p.normalize().unwrap_err().contains("fp8 only"));
        p.dtype = Dtype::Fp8;
        assert!(p.normalize().is_ok());
    }
}
